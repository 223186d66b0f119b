"""Honest verdicts (issue 11): heads tuned on validation, carved validation splits, boards that
never mix splits, a CNN baseline that learns, capped MLP widths, effect-detection metrics."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import average_precision_score, roc_auc_score

from cache.store import Cache
from heads.data import DataError, carve_validation, load_supervised
from heads.fit import FitOptions, fit_heads, fit_tuned
from heads.metrics import regression_metrics
from heads.registry import make_head
from heads.torch_mlp import build_mlp
from heads.tuning import RIDGE_ALPHAS, parse_head_params

from test_heads import synthetic_cache


def test_tuned_ridge_picks_a_strong_alpha_and_beats_alpha_one():
    """Few rows, many weak features: the best alpha is far above 1."""
    rng = np.random.default_rng(0)
    n, d = 400, 400  # near n = d, an almost unregularised fit interpolates the noise
    X = rng.normal(size=(n + 2000, d))
    y = X @ rng.normal(scale=0.05, size=d) + rng.normal(scale=1.0, size=n + 2000)  # alpha* ~ 400
    tr, va, te = slice(0, 300), slice(300, 400), slice(400, None)
    head, chosen, tried = fit_tuned("ridge", X[tr], y[tr], X[va], y[va], "regression",
                                    FitOptions(heads=["ridge"], feature_sets=[], labels=["y"]))
    fixed = make_head("ridge", "regression", params={"alpha": 1.0}).fit(X[tr], y[tr])
    r2 = {name: regression_metrics(y[te], h.predict(X[te]))["r2"]
          for name, h in (("tuned", head), ("alpha=1", fixed))}
    assert r2["tuned"] > r2["alpha=1"] + 0.3, r2
    # the alpha that is best on (plenty of) test data, over the same grid
    def test_mse(alpha):
        model = make_head("ridge", "regression", params={"alpha": alpha}).fit(X[tr], y[tr])
        return np.mean((model.predict(X[te]) - y[te]) ** 2)

    oracle = min(RIDGE_ALPHAS, key=test_mse)
    assert oracle > 100 and abs(np.log10(chosen["alpha"]) - np.log10(oracle)) <= 1.0, (chosen, oracle)
    assert len(tried) == len(RIDGE_ALPHAS)


def test_the_ridge_path_equals_refitting_each_alpha():
    from heads.tuning import ridge_path_losses

    rng = np.random.default_rng(1)
    for n, d in ((60, 20), (30, 80)):  # both branches: X'X and XX'
        X, Xv = rng.normal(size=(n, d)), rng.normal(size=(25, d))
        y, yv = rng.normal(size=(n, 2)), rng.normal(size=(25, 2))
        alphas = (0.1, 10.0, 1000.0)
        losses = ridge_path_losses(X, y, Xv, yv, alphas)
        mean, std = X.mean(0), X.std(0) + 1e-12
        for i, a in enumerate(alphas):
            pred = Ridge(alpha=a).fit((X - mean) / std, y).predict((Xv - mean) / std)
            np.testing.assert_allclose(losses[i], ((pred - yv) ** 2).mean(0), rtol=1e-6)


def test_every_head_records_its_grid_and_choice(tmp_path):
    synthetic_cache(tmp_path / "c.zarr", n_samples=80)
    options = FitOptions(heads=["ridge", "knn", "mlp2"], feature_sets=[["mean"]], labels=["y"],
                         epochs=10, plots=False, head_params=parse_head_params(["knn.n_neighbors=7"]))
    board = fit_heads(str(tmp_path / "c.zarr"), str(tmp_path / "out"), options, say=lambda m: None)
    knn = json.loads((tmp_path / "out" / "mean" / "knn" / "config.json").read_text())
    assert knn["chosen"] == {"n_neighbors": 7} and knn["grid"] == [{"n_neighbors": 7}]
    mlp = json.loads((tmp_path / "out" / "mean" / "mlp2" / "config.json").read_text())
    assert len(mlp["grid"]) == 6 and mlp["chosen"] in mlp["grid"]
    assert len(mlp["validation_losses"]) == 6
    assert set(board["head"]) == {"ridge", "knn", "mlp2"} and board["chosen"].notna().all()
    with pytest.raises(ValueError, match="not a tuned parameter"):
        parse_head_params(["ridge.gamma=3"])


def test_carved_validation_is_group_aware_and_seeded():
    groups = np.repeat([f"g{i}" for i in range(100)], 3)  # 3 packs per sample
    split = np.where(np.isin(groups, [f"g{i}" for i in range(80)]), "train", "test").astype(object)
    a, b, c = (carve_validation(split, groups, seed) for seed in (1, 1, 2))
    assert list(a) == list(b) and list(a) != list(c)
    val_groups = set(groups[a == "val"])
    assert len(val_groups) == 8 and not val_groups & set(groups[a == "train"])
    assert all((a[groups == g] == "val").all() for g in val_groups)
    assert (a[split == "test"] == "test").all()


def test_a_train_test_split_column_gets_validation_and_tiny_splits_are_refused(tmp_path):
    synthetic_cache(tmp_path / "c.zarr", n_samples=60)
    cache = Cache.open(tmp_path / "c.zarr")
    ids = [str(i) for i in cache.ids]
    labels = pd.DataFrame({"id": ids, "y": cache.label("y"),
                           "fold": ["test" if i % 5 == 0 else "train" for i in range(60)]})
    labels.to_csv(tmp_path / "l.csv", index=False)
    data, _ = load_supervised(cache, ["y"], labels_file=str(tmp_path / "l.csv"), split_col="fold")
    assert data.carved_val and data.mask("val").sum() == 5 and data.mask("test").sum() == 12
    labels.assign(fold=["test" if i < 3 else "train" for i in range(60)]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="too small to score: train 51, val 6, test 3"):
        load_supervised(cache, ["y"], labels_file=str(tmp_path / "t.csv"), split_col="fold")


def test_a_board_refuses_rows_from_another_split(tmp_path):
    synthetic_cache(tmp_path / "c.zarr", n_samples=80)
    opts = dict(heads=["ridge"], feature_sets=[["mean"]], labels=["y"], plots=False)
    board = fit_heads(str(tmp_path / "c.zarr"), str(tmp_path / "out"), FitOptions(**opts, seed=1),
                      say=lambda m: None)
    assert board["split"].nunique() == 1
    with pytest.raises(ValueError, match="another split"):
        fit_heads(str(tmp_path / "c.zarr"), str(tmp_path / "out"), FitOptions(**opts, seed=2),
                  say=lambda m: None)
    # the same split is welcome: a new head joins the board
    board = fit_heads(str(tmp_path / "c.zarr"), str(tmp_path / "out"),
                      FitOptions(**{**opts, "heads": ["knn"]}, seed=1), say=lambda m: None)
    assert set(board["head"]) == {"ridge", "knn"}


def test_cnn_baseline_learns_a_planted_motif():
    rng = np.random.default_rng(3)
    seqs, y = [], []
    for _ in range(1000):
        s = list(rng.choice(list("ACGT"), size=100))
        for _ in range(int(rng.integers(0, 4))):
            p = int(rng.integers(0, 94))
            s[p: p + 6] = list("TATAAT")
        s = "".join(s)
        seqs.append(s)
        y.append(s.count("TATAAT") + rng.normal(0, 0.3))
    X, y = np.array(seqs, dtype=object)[:, None], np.array(y)
    head = make_head("cnn", "regression").fit(X[:800], y[:800], X[800:900], y[800:900])
    r = regression_metrics(y[900:], head.predict(X[900:]))["pearson"]
    assert r > 0.8, r  # chance is 0; k-mer-free, it has to find the motif itself


def test_mlp_widths_are_capped():
    wide = build_mlp("mlp3", 5460, 1)
    assert sum(p.numel() for p in wide.parameters()) < 3_000_000  # uncapped: ~45 M
    narrow = build_mlp("mlp3", 256, 1)
    assert [m.out_features for m in narrow if hasattr(m, "out_features")] == [256, 128, 1]


def test_effect_detection_metrics_by_hand():
    rng = np.random.default_rng(4)
    truth, pred = rng.normal(size=200), rng.normal(size=200)
    m = regression_metrics(truth, pred, threshold=1.0)
    positive = np.abs(truth) > 1.0
    assert m["roc_auc"] == pytest.approx(roc_auc_score(positive, np.abs(pred)))
    assert m["pr_auc"] == pytest.approx(average_precision_score(positive, np.abs(pred)))
    assert m["n_effects"] == positive.sum()
