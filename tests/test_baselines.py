"""Issue 22: the k-mer baseline's variant (change alone or with the reference; standardised
or raw) is chosen on validation like any hyperparameter, recorded, and reproduced by predict."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import Ridge

from cli import main
from heads.tuning import ridge_path_losses

from test_finetune_pairs import PAIR_ARGS, motif_pairs, pair_table


@pytest.mark.parametrize("scale", ["standard", "raw"])
def test_ridge_path_matches_ridge_on_standardised_or_centred_inputs(scale):
    rng = np.random.default_rng(0)
    X = rng.exponential(size=(120, 30)) * (rng.random(30) < 0.3)  # sparse-ish counts
    y = X[:, :3] @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=120) * 0.1
    Xv, yv = X[:40], y[:40]
    X, y = X[40:], y[40:]
    losses = ridge_path_losses(X, y, Xv, yv, alphas=[0.1, 10.0], scale=scale)
    std = X.std(axis=0) + 1e-12 if scale == "standard" else np.ones(X.shape[1])
    for i, alpha in enumerate([0.1, 10.0]):
        model = Ridge(alpha=alpha).fit(X / std, y)
        mse = float(((model.predict(Xv / std) - yv) ** 2).mean())
        assert losses[i, 0] == pytest.approx(mse, rel=1e-6)


def test_pair_kmer_baseline_variant_is_chosen_on_validation_recorded_and_reproduced(tmp_path):
    table = pair_table(motif_pairs(200, seed=3), tmp_path / "pairs.csv")
    runner = CliRunner()
    result = runner.invoke(main, ["embed", "--model", "tiny-1k", "--random-init", "--input",
                                  str(table), *PAIR_ARGS, "--label", "y", "--quiet",
                                  "--out", str(tmp_path / "p.zarr")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["fit-head", "--cache", str(tmp_path / "p.zarr"), "--label", "y",
                                  "--task", "regression", "--head", "ridge", "--head", "mlp2", "--epochs", "5",
                                  "--baseline", "kmer", "--kmer-max-k", "3", "--no-plots",
                                  "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "k-mer baseline:" in result.output
    board = pd.read_csv(tmp_path / "runs" / "leaderboard.csv")
    name = next(f for f in board["features"] if f.startswith("kmer"))
    for head in ("ridge", "mlp2"):
        config = json.loads((tmp_path / "runs" / name / head / "config.json").read_text())
        variants = config["kmer_variants"]
        assert {(v["features"], v["scale"]) for v in variants} == {
            ("kmer", "standard"), ("kmer", "raw"), ("kmer-delta", "standard"), ("kmer-delta", "raw")}
        best = min(variants, key=lambda v: v["val_loss"])
        assert config["features"] == [best["features"]] and config["chosen"]["scale"] == best["scale"]
    # predict rebuilds the chosen features and scale: the stored test predictions come back
    run = tmp_path / "runs" / name / "ridge"
    result = runner.invoke(main, ["predict", "--head-dir", str(run), "--cache", str(tmp_path / "p.zarr"),
                                  "--out", str(tmp_path / "pred.csv")])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(tmp_path / "pred.csv").set_index("id")["pred_y"]
    test = pd.read_csv(run / "test_predictions.csv").set_index("id")["pred_y"]
    np.testing.assert_allclose(pred.loc[test.index], test, rtol=1e-5, atol=1e-6)
    # ridge's alpha path is not computed twice: the variant choice's losses are the ones a
    # fresh computation on the chosen features' training and validation rows gives
    from cache.store import Cache
    from heads.baselines import choose_kmer_variant
    from heads.data import load_supervised

    cache = Cache.open(str(tmp_path / "p.zarr"))
    data, keep = load_supervised(cache, ["y"], "regression")
    chosen, scale, _, X, path = choose_kmer_variant(cache, keep, data, 3)
    train, val = data.mask("train"), data.mask("val")
    fresh = ridge_path_losses(X[train], data.y[train], X[val], data.y[val], scale=scale)
    np.testing.assert_allclose(path, fresh, rtol=1e-12)
    ridge = json.loads((tmp_path / "runs" / chosen / "ridge" / "config.json").read_text())
    np.testing.assert_allclose([row["val_mse"][0] for row in ridge["validation_losses"]], fresh[:, 0],
                               rtol=1e-12)


def test_regularised_solves_along_the_path_equal_direct_solves():
    from heads.tuning import _regularised_solves

    rng = np.random.default_rng(4)
    alphas = np.array([1e-3, 1.0, 1e3])
    for m, rank in ((1, 1), (2, 1), (40, 40), (40, 12)):  # rank-deficient like collinear k-mers
        F = rng.normal(size=(m, rank))
        S, c, L = F @ F.T, rng.normal(size=(m, 2)), rng.normal(size=(5, m))
        got = _regularised_solves(S, c, L, alphas)
        for i, alpha in enumerate(alphas):
            want = L @ np.linalg.solve(S + alpha * np.eye(m), c)
            np.testing.assert_allclose(got[:, i], want, rtol=1e-8, atol=1e-10)
    # numerically indefinite (an eigenvalue below -alpha): the eigendecomposition, negative
    # eigenvalues clipped to zero as ridge on a PSD matrix would see them
    S = np.diag([4.0, 1.0, -2.0])
    got = _regularised_solves(S, np.ones((3, 1)), np.eye(3), np.array([1.0]))
    np.testing.assert_allclose(got[:, 0, 0], [1 / 5, 1 / 2, 1.0])
