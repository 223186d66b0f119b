"""finetune on variant pairs: one backbone over both alleles, pair features, the same loop."""
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli import main
from heads.finetune import FinetuneError, FinetuneOptions, finetune
from heads.finetune_options import parse_pair_features
from heads.pairdata import PairBatchMaker, load_pairs
from heads.seqmodel import FINETUNE_POOLINGS, PairPredictor
from hyena_embed.loading import random_model
from hyena_embed.pooling import pool
from hyena_embed.tokenizer import Tokenizer, pad_batch
from hyena_embed.variants import VariantPair
from tests.test_finetune import killed_and_straight_runs, quiet


def motif_pairs(n, length=50, seed=0):
    """SNVs at the centre; the label is the change in the count of GATC, so it depends on the
    context (GA_C around the site in half the pairs) and on both alleles: neither the alleles
    alone nor a frozen random backbone's pooled difference carries it fully."""
    rng = np.random.default_rng(seed)
    pairs, site = [], length // 2
    for i in range(n):
        seq = list(rng.choice(list("ACGT"), length))
        if rng.random() < 0.5:
            seq[site - 2: site], seq[site + 1] = ["G", "A"], "C"
        ref = str(rng.choice(list("ACGT")))
        alt = str(rng.choice([b for b in "ACGT" if b != ref]))
        seq[site] = ref
        r = "".join(seq)
        seq[site] = alt
        a = "".join(seq)
        gain = a.count("GATC") - r.count("GATC")
        labels = {"y": float(gain), "donor": float(gain > 0), "acceptor": float(gain < 0),
                  "neither": float(gain == 0) + rng.normal(0, 0.05), "gene": f"g{i % 40}"}
        pairs.append(VariantPair(f"p{i}", r, a, site, site, ref, alt, labels))
    return pairs


def pair_table(pairs, path):
    pd.DataFrame([{"ID": p.id, "REF_SEQ": p.ref_seq, "ALT_SEQ": p.alt_seq, **p.labels}
                  for p in pairs]).to_csv(path, index=False)
    return path


PAIR_ARGS = ["--ref-col", "REF_SEQ", "--alt-col", "ALT_SEQ", "--id-col", "ID"]


def test_unfreezing_learns_an_allele_dependent_motif_better_than_a_frozen_backbone(tmp_path):
    pairs = motif_pairs(700)
    loaded = random_model("tiny-1k", seed=0)
    rows = {}
    for unfreeze, mult in (("0", 0.1), ("2", 1.0)):
        options = FinetuneOptions(labels=["y"], task="regression", head="mlp2", unfreeze=unfreeze,
                                  epochs=8, encoder_lr_mult=mult, patience=8, plots=False)
        rows[unfreeze] = finetune(loaded, None, str(tmp_path), options, pairs=pairs, **quiet())
    assert rows["2"]["test_r2"] > 0.85, rows
    assert rows["2"]["test_mae"] < 0.5 * rows["0"]["test_mae"], rows
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["features"]) == {"finetune-delta-mean-u0", "finetune-delta-mean-u2"}


def test_pair_features_equal_a_hand_computation_on_both_halves():
    """One forward over [refs; alts]: delta, concat, site and variant parts as fit-head's."""
    loaded = random_model("tiny-1k", seed=2)
    model = PairPredictor(loaded.model, "linear", 1, ["delta-mean", "concat-site", "variant"], 3).eval()
    tok = Tokenizer(loaded.config.l_max)
    rows = load_pairs(motif_pairs(60, seed=2), tok, ["y"], task="regression")
    batch = np.arange(6)
    inputs = PairBatchMaker(rows, tok, 6).inputs(batch)
    with torch.no_grad():
        ours = model.raw_features(**inputs).numpy()
        d = loaded.config.d_model
        for k, i in enumerate(batch):
            h = {}
            for which, tokens, site in (("ref", rows.ref_tokens[i], rows.sites[i, 0]),
                                        ("alt", rows.alt_tokens[i], rows.sites[i, 1])):
                ids, lengths = pad_batch([tokens])
                hidden = model.hidden(ids)  # each window alone, unpadded
                h[which] = (pool(hidden, lengths, "mean")[0].numpy(), hidden[0, site].numpy())
            np.testing.assert_allclose(ours[k, :d], h["alt"][0] - h["ref"][0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ours[k, d: 2 * d], h["ref"][1], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ours[k, 2 * d: 3 * d], h["alt"][1], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(ours[k, 3 * d:], rows.variant[i])
    assert ours.shape == (6, 3 * d + 9)


@pytest.mark.parametrize("unfreeze", ["0", "1"])
def test_exactly_the_intended_parameters_change_on_pairs(tmp_path, unfreeze):
    # concat, not only delta: a difference cancels the final norm's bias, whose gradient is
    # then zero, so that bias would (rightly) never move
    loaded = random_model("tiny-1k", seed=1)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    snapshots = {}
    options = FinetuneOptions(labels=["y"], task="regression", head="mlp2", unfreeze=unfreeze,
                              epochs=2, plots=False, features=["delta-mean", "concat-sitewin"],
                              variant_embedding=True)
    finetune(loaded, None, str(tmp_path), options, pairs=motif_pairs(60),
             on_epoch_end=lambda e, m: snapshots.update({e: {k: v.clone() for k, v in m.state_dict().items()}}),
             **quiet())
    final, n_layer = snapshots[2], loaded.config.n_layer
    for name, old in before.items():
        if name == "lm_head.weight":
            continue
        is_buffer = not old.is_floating_point() or name.endswith((".z", ".t", ".deltas"))
        trainable = unfreeze == "1" and not is_buffer and (
            name.startswith(f"backbone.layers.{n_layer - 1}.") or name.startswith("backbone.ln_f."))
        assert torch.equal(final[f"encoder.{name}"], old) != trainable, name
    head = [k for k in final if k.startswith("head.")]
    assert any(k.startswith("head.categories.") for k in head)  # the variant embedding trains
    assert all(not torch.equal(final[k], snapshots[1][k]) for k in head)


def test_three_outputs_predict_reproduces_the_test_predictions_and_the_board_is_shared(tmp_path):
    """fit-head on a pair cache and finetune on the same pairs land on one leaderboard (one
    split); predict on the pairs gives every output and reproduces test_predictions.csv."""
    table = pair_table(motif_pairs(120, seed=5), tmp_path / "pairs.csv")
    labels = ["--label", "donor", "--label", "acceptor", "--label", "neither"]
    model = ["--model", "tiny-1k", "--random-init"]
    runner = CliRunner()
    out = tmp_path / "runs"
    result = runner.invoke(main, ["embed", *model, "--input", str(table), *PAIR_ARGS, *labels,
                                  "--quiet", "--out", str(tmp_path / "p.zarr")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["fit-head", "--cache", str(tmp_path / "p.zarr"), *labels,
                                  "--head", "ridge", "--no-plots", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["finetune", *model, "--input", str(table), *PAIR_ARGS, *labels,
                                  "--task", "regression", "--features", "delta-mean+variant",
                                  "--unfreeze", "1", "--epochs", "2", "--quiet", "--no-plots",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"delta-mean", "finetune-delta-mean+variant-u1"} <= set(board["features"])
    run = out / "finetune-delta-mean+variant-u1" / "mlp3"
    test = pd.read_csv(run / "test_predictions.csv")
    assert len(test) == 12 and test["id"].str.startswith("p").all()
    result = runner.invoke(main, ["predict", "--head-dir", str(run), "--input", str(table),
                                  *PAIR_ARGS, "--out", str(tmp_path / "pred.csv")])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(tmp_path / "pred.csv").set_index("id")
    assert len(pred) == 120
    for name in ("donor", "acceptor", "neither"):
        np.testing.assert_allclose(pred.loc[test["id"], f"pred_{name}"], test[f"pred_{name}"],
                                   rtol=1e-4, atol=1e-6)
    result = runner.invoke(main, ["predict", "--head-dir", str(run), "--input", str(table),
                                  "--seq-col", "REF_SEQ"])
    assert result.exit_code == 1 and "fine-tuned on variant pairs" in result.output


def test_init_head_from_a_fit_head_probe_on_pair_features(tmp_path):
    table = pair_table(motif_pairs(80, seed=6), tmp_path / "pairs.csv")
    model = ["--model", "tiny-1k", "--random-init", "--init-seed", "3"]
    runner = CliRunner()
    assert runner.invoke(main, ["embed", *model, "--input", str(table), *PAIR_ARGS, "--label", "y",
                                "--dtype", "float32", "--quiet", "--out", str(tmp_path / "p.zarr")]).exit_code == 0
    result = runner.invoke(main, ["fit-head", "--cache", str(tmp_path / "p.zarr"), "--label", "y",
                                  "--task", "regression", "--features", "site-delta+variant",
                                  "--head", "linear", "--epochs", "3", "--no-plots",
                                  "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    head_dir = tmp_path / "runs" / "site-delta+variant" / "linear"
    fit_val = pd.read_csv(tmp_path / "runs" / "leaderboard.csv").set_index("features")
    base = [*model, "--input", str(table), *PAIR_ARGS, "--label", "y", "--task", "regression",
            "--head", "linear", "--unfreeze", "0", "--epochs", "1", "--lr", "1e-9", "--quiet",
            "--no-plots", "--init-head", str(head_dir), "--out", str(tmp_path / "runs")]
    result = runner.invoke(main, ["finetune", *base, "--features", "delta-site+variant"])
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "runs" / "leaderboard.csv").set_index("features")
    # a learning rate of 1e-9 leaves the probe as it was: the same validation score
    assert board.loc["finetune-delta-site+variant-u0", "val_mae"] == pytest.approx(
        fit_val.loc["site-delta+variant", "val_mae"], rel=1e-3)
    result = runner.invoke(main, ["finetune", *base, "--features", "delta-mean", "--overwrite"])
    assert result.exit_code == 1 and "fitted on features site-delta+variant" in result.output


def test_pair_resume_after_kill_ends_with_the_same_model(tmp_path):
    table = pair_table(motif_pairs(240, seed=7), tmp_path / "pairs.csv")
    common = ["--model", "tiny-1k", "--random-init", "--input", str(table), *PAIR_ARGS,
              "--label", "y", "--task", "regression", "--features", "delta-mean+delta-site",
              "--variant-embedding", "--unfreeze", "1", "--epochs", "4", "--batch-size", "8",
              "--grad-accum", "2", "--quiet", "--no-plots"]
    killed_and_straight_runs(tmp_path, common, "finetune-delta-mean+delta-site-u1")


def test_group_col_keeps_a_gene_on_one_side():
    pairs = motif_pairs(200)
    rows = load_pairs(pairs, Tokenizer(1026), ["y"], task="regression", group_col="gene")
    for gene in np.unique(rows.data.groups):
        assert len(set(rows.data.split[rows.data.groups == gene])) == 1


@pytest.mark.parametrize("options, pairs, message", [
    (dict(rc_augment=True), True, "--rc-augment cannot be used with variant pairs"),
    (dict(features=["delta-mean"]), False, "--features take variant pairs"),
    (dict(features=["delta-median"]), True, "pair feature 'delta-median'"),
    (dict(features=["variant"]), True, "at least one embedding part"),
])
def test_contradictory_pair_options_fail_at_once(options, pairs, message):
    with pytest.raises((FinetuneError, ValueError), match=message):
        FinetuneOptions(labels=["y"], **options).validate(2, torch.device("cpu"), pairs=pairs)


def test_pair_feature_names_are_fit_heads():
    assert parse_pair_features("site-delta+concat-mean+variant", FINETUNE_POOLINGS) == \
        ["delta-site", "concat-mean", "variant"]


def test_a_window_longer_than_the_context_is_refused(tmp_path):
    long = "A" * 1100
    pairs = [VariantPair(f"p{i}", long, long[:500] + "C" + long[501:], 500, 500, "A", "C",
                         {"y": float(i)}) for i in range(30)]
    with pytest.raises(ValueError, match="does not fit the model's context"):
        load_pairs(pairs, Tokenizer(1026), ["y"])
