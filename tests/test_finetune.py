"""finetune: freezing, learning what a frozen backbone cannot, resume after a kill, divergence."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli import main
from heads.finetune import FinetuneError, FinetuneOptions, finetune
from heads.trainer import WarmupSchedule
from heads.freezing import apply_unfreeze_, parameter_groups
from heads.seqmodel import SequencePredictor
from hyena_embed.inputs import Record
from hyena_embed.loading import random_model
from hyena_embed.tokenizer import pad_batch
from tests.conftest import REPO
from tests.helpers import random_dna


def motif_records(n, length=50, motif="GATC", decoy="GACT", seed=0):
    """Label 1: the motif planted once; label 0: a decoy with the same bases in another order.

    Base composition is the same in both classes, so mean-pooled features of a frozen random
    backbone carry little of the label, while a trained short convolution can find it.
    """
    rng = np.random.default_rng(seed)
    records = []
    while len(records) < n:
        seq = random_dna(rng, length)
        label = int(rng.integers(2))
        planted = motif if label else decoy
        at = int(rng.integers(0, length - len(planted)))
        seq = seq[:at] + planted + seq[at + len(planted):]
        if seq.count(motif) == label:  # exactly one motif in positives, none in negatives
            records.append(Record(f"r{len(records)}", [seq], {"y": str(label)}))
    return records


def gc_records(n, seed=0, lo=30, hi=80):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seq = random_dna(rng, int(rng.integers(lo, hi)))
        out.append(Record(f"s{i}", [seq], {"y": seq.count("G") / len(seq) + rng.normal(0, 0.01)}))
    return out


def quiet(**kw):
    return dict(progress=False, say=lambda m: None, **kw)


def test_unfreezing_learns_a_motif_a_frozen_random_backbone_cannot_expose(tmp_path):
    records = motif_records(1000)
    loaded = random_model("tiny-1k", seed=0)
    scores = {}
    for unfreeze, mult in (("0", 0.1), ("2", 1.0)):
        options = FinetuneOptions(labels=["y"], head="mlp2", unfreeze=unfreeze, epochs=8,
                                  encoder_lr_mult=mult, patience=8, plots=False)
        row = finetune(loaded, lambda: iter(records), str(tmp_path), options, **quiet())
        scores[unfreeze] = row["test_roc_auc"]
    assert scores["2"] > 0.85, scores
    assert scores["2"] > scores["0"] + 0.15, scores
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["features"]) == {"finetune-mean-u0", "finetune-mean-u2"}


@pytest.mark.parametrize("unfreeze", ["0", "1", "all"])
def test_exactly_the_intended_parameters_change(tmp_path, unfreeze):
    loaded = random_model("tiny-1k", seed=1)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    snapshots = {}
    options = FinetuneOptions(labels=["y"], head="mlp2", unfreeze=unfreeze, epochs=2, plots=False)
    records = gc_records(60)
    finetune(loaded, lambda: iter(records), str(tmp_path), options,
             on_epoch_end=lambda e, m: snapshots.update({e: {k: v.clone() for k, v in m.state_dict().items()}}),
             **quiet())
    final = snapshots[2]
    for name, value in loaded.model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[name])
    n_layer = loaded.config.n_layer
    for name, old in before.items():
        if name == "lm_head.weight":
            continue
        new = final[f"encoder.{name}"]
        is_buffer = not old.is_floating_point() or name.endswith((".z", ".t", ".deltas"))
        if unfreeze == "all":
            trainable = not is_buffer
        elif unfreeze == "1":
            trainable = not is_buffer and (name.startswith(f"backbone.layers.{n_layer - 1}.")
                                           or name.startswith("backbone.ln_f."))
        else:
            trainable = False
        if trainable:
            assert not torch.equal(new, old), f"{name} should have been trained"
        else:
            assert torch.equal(new, old), f"{name} changed but is frozen"
    head = [k for k in final if k.startswith("head.")]
    assert head and all(not torch.equal(final[k], snapshots[1][k]) for k in head)


def test_parameter_groups_use_discriminative_learning_rates():
    model = SequencePredictor(random_model("tiny-1k").model, "mlp2", 1)
    apply_unfreeze_(model.encoder, 1)
    groups = parameter_groups(model.head, model.encoder.backbone, 1e-3, 0.1, 0.01)
    lrs = {g.name: (g.lr, g.weight_decay) for g in groups}
    assert lrs["head"] == (1e-3, 0.01) and lrs["head (no decay)"] == (1e-3, 0.0)
    assert lrs["encoder"] == (pytest.approx(1e-4), 0.01)
    encoder_params = sum(g.n_params for g in groups if g.name.startswith("encoder"))
    block = model.encoder.backbone.layers[-1]
    expected = sum(p.numel() for p in block.parameters()) + \
        sum(p.numel() for p in model.encoder.backbone.ln_f.parameters())
    assert encoder_params == expected


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = SequencePredictor(random_model("tiny-1k").model, "mlp2", 1)
    apply_unfreeze_(model.encoder, "all")
    model.eval()
    ids, lengths = pad_batch([np.array([7, 8, 9, 10] * 8 + [1]), np.array([9, 9, 7, 1])])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model(ids, lengths).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_attention_pooling_starts_as_the_mean_and_ignores_padding():
    model = SequencePredictor(random_model("tiny-1k").model, "linear", 1, pooling="attention").eval()
    short, long = np.array([7, 8, 9, 1]), np.array([10, 9, 8, 7, 7, 7, 1])
    with torch.no_grad():
        ids, lengths = pad_batch([short, long])
        hidden = model.hidden(ids)
        pooled = model.pooled(hidden, lengths)
        alone = model.pooled(model.hidden(torch.as_tensor(short)[None]), torch.tensor([4]))
    torch.testing.assert_close(pooled[0], hidden[0, :4].mean(0))
    torch.testing.assert_close(pooled[0], alone[0], rtol=1e-5, atol=1e-5)


def test_warmup_then_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [param], "lr": 1.0, "base_lr": 1.0}])
    schedule = WarmupSchedule(opt, total_steps=100, warmup_steps=10, kind="cosine")
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        schedule.step()
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    plateau = WarmupSchedule(opt, 100, 0, "plateau", plateau_patience=2)
    for loss in (1.0, 0.9, 0.95, 0.95):
        plateau.end_epoch(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    loaded = random_model("tiny-1k", seed=2)
    records = gc_records(60)

    def poison(epoch, model):  # what a blown-up update leaves behind
        if epoch == 1:
            with torch.no_grad():
                model.head.mlp[0].weight.fill_(float("nan"))

    options = FinetuneOptions(labels=["y"], head="mlp2", unfreeze="1", epochs=3, plots=False)
    with pytest.raises(FinetuneError, match=r"nan at epoch 2.*last good checkpoint \(epoch 1\)"):
        finetune(loaded, lambda: iter(records), str(tmp_path), options, on_epoch_end=poison, **quiet())
    run = tmp_path / "finetune-mean-u1" / "mlp2"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    best = torch.load(run / "best_model.pt", weights_only=True)
    assert torch.isfinite(best["state_dict"]["head.mlp.0.weight"]).all()


def test_a_real_blow_up_is_caught_by_the_cli(tmp_path):
    table = tmp_path / "reg.csv"
    pd.DataFrame([{"id": r.id, "seq": r.parts[0], "y": r.labels["y"]} for r in gc_records(60)]).to_csv(table, index=False)
    result = CliRunner().invoke(main, ["finetune", "--model", "tiny-1k", "--random-init",
                                       "--input", str(table), "--seq-col", "seq", "--id-col", "id",
                                       "--label", "y", "--unfreeze", "1", "--epochs", "2",
                                       "--lr", "1e30", "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "diverged" in result.output and "lower --lr" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--unfreeze", "0", "--grad-checkpoint"], "--unfreeze 0 has none"),
    (["--unfreeze", "7"], "this model has 2 blocks"),
    (["--unfreeze", "some"], "0..2 or all"),
    (["--unfreeze", "0", "--encoder-lr-mult", "0.5"], "no effect"),
    (["--pool", "attention", "--init-head", "."], "attention pooling has none"),
    (["--precision", "float16", "--device", "cpu"], "needs CUDA"),
])
def test_contradictory_options_fail_at_once(tmp_path, args, message):
    result = CliRunner().invoke(main, ["finetune", "--model", "tiny-1k", "--random-init", "--input",
                                       str(tmp_path / "never_read.csv"), "--seq-col", "seq",
                                       "--label", "y", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output


def _cli_run(args, env=None):
    return subprocess.Popen([sys.executable, "cli.py", "finetune", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def killed_and_straight_runs(tmp_path, common, run):
    """The same finetune command run straight, and run, SIGKILLed after its first checkpoint and
    run again: asserts the resumed run ends with the straight run's model. Returns (straight
    run folder, killed run folder, epoch at the kill, the resuming run's stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = _cli_run([*common, "--out", str(tmp_path / "straight")], env)
    killed_out = tmp_path / "killed"
    checkpoint = killed_out / run / "mlp3" / "checkpoint.pt"
    victim = _cli_run([*common, "--out", str(killed_out)], env)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert epoch < int(common[common.index("--epochs") + 1]), "the run finished before it could be killed"
    resumed = _cli_run([*common, "--out", str(killed_out)], env)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming {killed_out}" in err and f"after epoch {epoch}" in err
    assert straight.wait(timeout=300) == 0
    a = torch.load(tmp_path / "straight" / run / "mlp3" / "best_model.pt", weights_only=True)
    b = torch.load(checkpoint.parent / "best_model.pt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    return tmp_path / "straight" / run / "mlp3", checkpoint.parent, epoch, err


def test_resume_after_kill_ends_with_the_same_model(tmp_path):
    table = tmp_path / "reg.csv"
    pd.DataFrame([{"id": r.id, "seq": r.parts[0], "y": r.labels["y"]}
                  for r in gc_records(200, lo=40, hi=60)]).to_csv(table, index=False)
    common = ["--model", "tiny-1k", "--random-init", "--input", str(table), "--seq-col", "seq",
              "--id-col", "id", "--label", "y", "--unfreeze", "1", "--epochs", "4",
              "--batch-size", "8", "--quiet", "--no-plots", "--rc-augment"]
    straight, killed, _, _ = killed_and_straight_runs(tmp_path, common, "finetune-mean-u1")
    log_a = pd.read_csv(straight / "training_log.csv")
    log_b = pd.read_csv(killed / "training_log.csv")
    np.testing.assert_array_equal(log_a["val_loss"], log_b["val_loss"])
    again = _cli_run([*common, "--out", str(tmp_path / "killed")], {**os.environ, "OMP_NUM_THREADS": "1"})
    assert "already finished" in again.communicate(timeout=120)[1]


def test_packs_are_averaged_and_predict_reads_raw_sequences(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(40):
        gc = rng.uniform(0.2, 0.8)
        reads = ["".join(rng.choice(list("ACGT"), 300, p=[(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]))
                 for _ in range(6)]
        rows.append({"sample": f"m{i}", "reads": reads, "gc": gc})
    data = tmp_path / "samples.parquet"
    pd.DataFrame(rows).to_parquet(data)
    out = tmp_path / "runs"
    base = ["--model", "tiny-1k", "--random-init", "--input", str(data), "--seq-col", "reads",
            "--id-col", "sample"]
    result = CliRunner().invoke(main, ["finetune", *base, "--label", "gc", "--packs", "2",
                                       "--unfreeze", "1", "--epochs", "2", "--shuffle-reads",
                                       "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = out / "finetune-mean-u1" / "mlp3"
    test = pd.read_csv(run / "test_predictions.csv")
    assert len(test) == 4 and test["id"].str.startswith("m").all()  # one row per sample
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "finetune" and config["n"]["test"] == 8  # 4 samples x 2 packs
    result = CliRunner().invoke(main, ["predict", "--head-dir", str(run), "--input", str(data),
                                       "--seq-col", "reads", "--id-col", "sample",
                                       "--out", str(tmp_path / "pred.csv")])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(tmp_path / "pred.csv").set_index("id")
    assert len(pred) == 40
    np.testing.assert_allclose(pred.loc[test["id"], "pred_gc"], test["pred_gc"], rtol=1e-5)
    result = CliRunner().invoke(main, ["predict", "--head-dir", str(run), "--cache", str(tmp_path)])
    assert result.exit_code == 1 and "give --input" in result.output


def test_init_head_starts_from_the_fitted_probe(tmp_path):
    """A head fitted by fit-head on the cache, moved into the model, predicts what it did."""
    from heads.finetune_init import init_from_head
    from hyena_embed.tokenizer import Tokenizer
    from heads.saving import load_head

    records = gc_records(80, seed=4)
    table = tmp_path / "reg.csv"
    pd.DataFrame([{"id": r.id, "seq": r.parts[0], "y": r.labels["y"]} for r in records]).to_csv(table, index=False)
    runner = CliRunner()
    base = ["--model", "tiny-1k", "--random-init", "--init-seed", "5"]
    assert runner.invoke(main, ["embed", *base, "--input", str(table), "--seq-col", "seq",
                                "--id-col", "id", "--label", "y", "--dtype", "float32",
                                "--quiet", "--out", str(tmp_path / "c.zarr")]).exit_code == 0
    assert runner.invoke(main, ["fit-head", "--cache", str(tmp_path / "c.zarr"), "--label", "y",
                                "--head", "mlp2", "--epochs", "5", "--no-plots",
                                "--out", str(tmp_path / "runs")]).exit_code == 0
    head_dir = tmp_path / "runs" / "mean" / "mlp2"
    loaded = random_model("tiny-1k", seed=5)
    model = SequencePredictor(loaded.model, "mlp2", 1).eval()
    options = FinetuneOptions(labels=["y"], head="mlp2", unfreeze="0", init_head=str(head_dir))
    init_from_head(model, str(head_dir), loaded, options, Tokenizer(loaded.config.l_max))
    tok = Tokenizer(loaded.config.l_max)
    ids, lengths = pad_batch([tok(r.parts[0]) for r in records[:10]])
    with torch.no_grad():
        ours = model.to_values(model(ids, lengths))[:, 0].numpy()
    from cache.store import Cache
    theirs = load_head(head_dir, "head.json").predict(Cache.open(tmp_path / "c.zarr").pooled("mean")[:10])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    result = runner.invoke(main, ["finetune", *base, "--input", str(table), "--seq-col", "seq",
                                  "--id-col", "id", "--label", "y", "--head", "mlp3",
                                  "--init-head", str(head_dir), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 1 and "it is a mlp2 head and --head is mlp3" in result.output
