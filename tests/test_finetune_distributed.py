"""finetune under torchrun: 2 CPU processes on gloo train the model a single process trains."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from tests.test_finetune import gc_records
from tests.test_finetune_pairs import PAIR_ARGS, motif_pairs, pair_table


def _finetune(args, nproc=None, timeout=300):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}"] if nproc else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "cli.py", "finetune", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_every_process_naming(text):
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _same_model(a_dir, b_dir):
    a = torch.load(a_dir / "best_model.pt", weights_only=True)
    b = torch.load(b_dir / "best_model.pt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    for name, value in a["state_dict"].items():
        # float tolerance on the tensor's scale: sums run in another order on two ranks, and
        # Adam turns a rounding difference in a near-zero gradient into a small step
        scale = value.abs().max().item() if value.numel() else 0.0
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0,
                                   atol=2e-3 * scale + 1e-6, msg=name)
    return a


@pytest.mark.parametrize("kind", ["sequences", "pairs"])
def test_two_ranks_train_what_one_process_trains(tmp_path, kind):
    if kind == "sequences":
        table = tmp_path / "reg.csv"
        pd.DataFrame([{"id": r.id, "seq": r.parts[0], "y": r.labels["y"]}
                      for r in gc_records(90, lo=40, hi=60)]).to_csv(table, index=False)
        data = ["--input", str(table), "--seq-col", "seq", "--id-col", "id", "--label", "y",
                "--rc-augment"]  # augmentation drawn once, the same on every rank
        run = "finetune-mean-u1"
    else:
        table = pair_table(motif_pairs(90, seed=3), tmp_path / "pairs.csv")
        data = ["--input", str(table), *PAIR_ARGS, "--label", "y", "--task", "regression",
                "--features", "delta-mean+concat-site", "--variant-embedding"]
        run = "finetune-delta-mean+concat-site-u1"
    # 7 rows a batch: the ranks get 4 and 3, and an epoch's last batch is smaller still
    common = ["--model", "tiny-1k", "--random-init", *data, "--unfreeze", "1", "--epochs", "2",
              "--batch-size", "7", "--grad-accum", "2", "--dropout", "0", "--quiet", "--no-plots"]
    _finetune([*common, "--out", str(tmp_path / "one")])
    two = _finetune([*common, "--out", str(tmp_path / "two")], nproc=2)
    assert two.stdout.count("test: ") == 1  # rank 0 alone reports
    assert two.stderr.count("RANDOM weights") == 1
    a = _same_model(tmp_path / "one" / run / "mlp3", tmp_path / "two" / run / "mlp3")
    log_one = pd.read_csv(tmp_path / "one" / run / "mlp3" / "training_log.csv")
    log_two = pd.read_csv(tmp_path / "two" / run / "mlp3" / "training_log.csv")
    np.testing.assert_allclose(log_two["train_loss"], log_one["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(log_two["val_loss"], log_one["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(log_two["lr_head"], log_one["lr_head"])  # one schedule
    # the trained model differs from its start: the comparison is not between two untouched nets
    assert a["epoch"] >= 1
    again = _finetune([*common, "--out", str(tmp_path / "two")], nproc=2)
    assert "already finished" in again.stderr
    if kind == "sequences":  # killed under torchrun (every process), resumed under torchrun
        killed = tmp_path / "killed"
        checkpoint = killed / run / "mlp3" / "checkpoint.pt"
        victim = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
             "cli.py", "finetune", *common, "--epochs", "2", "--out", str(killed)], cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not checkpoint.exists() and time.time() < deadline and victim.poll() is None:
            time.sleep(0.02)
        _kill_every_process_naming(str(killed))  # the launcher and both workers
        victim.wait()
        assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
        resumed = _finetune([*common, "--out", str(killed)], nproc=2)
        assert "after epoch 1" in resumed.stderr, resumed.stderr
        _same_model(tmp_path / "one" / run / "mlp3", checkpoint.parent)


@pytest.mark.parametrize("world", [2, 3])
def test_shares_of_a_batch_average_to_the_whole_batch_gradient(world):
    """The arithmetic DDP relies on, in one process: each rank's share of the loss,
    backpropagated and averaged over ranks, gives the single-process gradient (pairs and
    several outputs, so the 2n-row pair tensors and the per-output mean are covered)."""
    from heads.trainer import Trainer
    from heads.pairdata import PairBatchMaker, load_pairs
    from heads.seqmodel import PairPredictor
    from hyena_embed.distributed import Distributed
    from hyena_embed.loading import random_model
    from hyena_embed.tokenizer import Tokenizer
    from heads.finetune import FinetuneOptions

    loaded = random_model("tiny-1k", seed=4)
    tok = Tokenizer(loaded.config.l_max)
    rows = load_pairs(motif_pairs(60, seed=4), tok, ["donor", "neither"], task="regression")
    model = PairPredictor(loaded.model, "mlp2", 2, ["delta-mean", "concat-site"], 2, True, 0.0)
    batches = PairBatchMaker(rows, tok, 5, variant_embedding=True)
    batch = np.arange(5)
    inputs = batches.inputs(batch)

    def gradient(rank, n):
        dist = Distributed.__new__(Distributed)
        dist.world, dist.rank, dist.local_rank, dist.active = n, rank, 0, False
        trainer = Trainer(model, rows, batches, FinetuneOptions(labels=["donor", "neither"]),
                          torch.device("cpu"), None, None, dist)
        model.zero_grad()
        trainer.share_of_loss(batch, inputs)[0].backward()
        return [p.grad.clone() for p in model.head.parameters()]

    whole = gradient(0, 1)
    shares = [gradient(rank, world) for rank in range(world)]
    for k, g in enumerate(whole):
        averaged = sum(s[k] for s in shares) / world
        torch.testing.assert_close(averaged, g, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in whole)
