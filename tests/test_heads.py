"""Heads on planted signals, splits, pack averaging, joins, the k-mer baseline, predict, CLI."""
import json
import warnings
import pickle

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from cache.store import Cache, RowMeta
from heads.data import DataError, assign_split, kmer_features, load_supervised
from heads.fit import FitOptions, fit_heads
from heads.metrics import classification_metrics, regression_metrics
from heads.predict import predict_cache
from heads.registry import head_names, make_head
from heads.saving import load_head, save_head


def planted(n=400, d=16, targets=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(d, targets))
    y = X @ W + 0.05 * rng.normal(size=(n, targets))
    return X, (y[:, 0] if targets == 1 else y)


@pytest.mark.parametrize("name", head_names("regression"))
def test_each_regression_head_recovers_a_planted_signal(name, tmp_path):
    X, y = planted()
    head = make_head(name, "regression", epochs=60).fit(X[:300], y[:300], X[300:350], y[300:350])
    r = regression_metrics(y[350:], head.predict(X[350:]))["pearson"]
    assert r > 0.8, (name, r)
    clone = pickle.loads(pickle.dumps(head))  # estimator-shaped: picklable, same predictions
    np.testing.assert_allclose(clone.predict(X[350:]), head.predict(X[350:]))
    assert_saved_head_predicts_the_same(head, X[350:], tmp_path)


def assert_saved_head_predicts_the_same(head, X, directory):
    """Saved without pickle (heads.saving), loaded back: the same predictions, no pickle file."""
    name = save_head(head, directory)
    assert not list(directory.glob("*.joblib")) and not list(directory.glob("*.pkl"))
    back = load_head(directory, name)
    if hasattr(head, "classes_"):
        assert list(back.predict(X)) == list(head.predict(X))
        assert list(back.classes_) == list(head.classes_)
        np.testing.assert_allclose(back.predict_proba(X), head.predict_proba(X), rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(back.predict(X), head.predict(X), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", head_names("classification"))
def test_each_classification_head_separates_classes(name, tmp_path):
    X, score = planted(d=6, seed=1)
    y = np.where(score > 0, "yes", "no")
    head = make_head(name, "classification", epochs=60).fit(X[:300], y[:300], X[300:350], y[300:350])
    m = classification_metrics(y[350:], head.predict(X[350:]), head.predict_proba(X[350:]), head.classes_)
    assert m["accuracy"] > 0.8 and m["roc_auc"] > 0.85, (name, m)
    assert_saved_head_predicts_the_same(head, X[350:], tmp_path)


@pytest.mark.parametrize("name", ["mlp3", "ridge", "svr", "lightgbm", "rf"])
def test_three_output_regression(name, tmp_path):
    X, Y = planted(d=16, targets=3, seed=2)
    head = make_head(name, "regression", multi_output=True, epochs=60)
    head.fit(X[:300], Y[:300], X[300:350], Y[300:350])
    pred = head.predict(X[350:])
    assert pred.shape == (50, 3)
    m = regression_metrics(Y[350:], pred, ["donor", "acceptor", "neither"])
    assert set(m["per_target"]) == {"donor", "acceptor", "neither"}
    # forests approximate a linear map coarsely from 300 rows; the rest should fit it well
    assert min(t["pearson"] for t in m["per_target"].values()) > (0.5 if name == "rf" else 0.8)
    assert_saved_head_predicts_the_same(head, X[350:], tmp_path)


def test_multiclass_metrics_and_task_errors():
    X, score = planted(seed=3)
    y = np.digitize(score, [-1, 1]).astype(str)
    head = make_head("logistic", "classification").fit(X[:300], y[:300])
    m = classification_metrics(y[300:], head.predict(X[300:]), head.predict_proba(X[300:]), head.classes_)
    assert m["accuracy"] > 0.7 and 0 <= m["pr_auc"] <= 1
    with pytest.raises(ValueError, match="does not do classification"):
        make_head("ridge", "classification")


def test_random_split_keeps_groups_together_and_is_seeded():
    groups = np.repeat([f"s{i}" for i in range(50)], 3)
    ids = np.array([f"{g}/pack{k}" for g, k in zip(groups, [0, 1, 2] * 50)])
    split = assign_split(groups, ids, seed=42, test_ids=None, split_values=None)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    assert (split == "test").sum() == 15 and (split == "val").sum() == 15
    assert list(split) == list(assign_split(groups, ids, 42, None, None))
    assert list(split) != list(assign_split(groups, ids, 7, None, None))


def test_kmer_features_by_hand():
    f = kmer_features(["AACG|TN"], max_k=2)
    mono = f[0, :4]  # A C G T over the valid bases A A C G T
    np.testing.assert_allclose(mono, [2 / 5, 1 / 5, 1 / 5, 1 / 5])
    di = f[0, 4:20]  # AA, AC, CG only: '|' and N break the rest
    expected = np.zeros(16)
    expected[[0 * 4 + 0, 0 * 4 + 1, 1 * 4 + 2]] = 1 / 3
    np.testing.assert_allclose(di, expected)


def test_kmer_features_of_many_rows_count_each_row_alone(monkeypatch):
    """All rows are counted in one array: no k-mer may span two rows, and blocks of rows
    (KMER_BLOCK_CHARS) must not change a count."""
    import heads.data

    rows = ["ACG", "", "TTTT", "GA", "acgtN", "C"]
    f = kmer_features(rows, max_k=3)
    assert f[1].sum() == 0  # an empty row has no k-mers
    np.testing.assert_allclose(f[3, 4:20][[2 * 4 + 0]], 1.0)  # GA: its only 2-mer
    assert f[3, 20:].sum() == 0  # GA + the next row's first base would be a 3-mer: none
    np.testing.assert_allclose(f[2, 4 + 15], 1.0)  # TTTT: TT three times, nothing else
    np.testing.assert_allclose(f[4, :4], 0.25)  # lowercase counts, N does not
    assert f[5, 4:].sum() == 0 and f[5, 1] == 1.0
    for chars in (1, 5, 9):
        monkeypatch.setattr(heads.data, "KMER_BLOCK_CHARS", chars)
        np.testing.assert_array_equal(kmer_features(rows, max_k=3), f)


def synthetic_cache(path, n_samples=60, packs=1, seed=0, d=8, model_sha="sha-A", label=True):
    """A cache whose 'mean' carries the label linearly; packs share a sample's label."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n_samples)
    ids, groups, pk, labels, rows = [], [], [], [], []
    W = rng.normal(size=d)
    for s in range(n_samples):
        for k in range(packs):
            ids.append(f"s{s}/pack{k}" if packs > 1 else f"s{s}")
            groups.append(f"s{s}")
            pk.append(k)
            labels.append(y[s])
            rows.append(W * y[s] + 0.1 * rng.normal(size=d))
    seqs = ["".join(rng.choice(list("ACGT"), size=30)) for _ in ids]
    meta = RowMeta(ids, groups, pk, [31] * len(ids), [0] * len(ids),
                   {"y": labels} if label else {})
    cache = Cache.create(path, meta, {"x": 1}, {"model": "m", "weights_sha256": model_sha,
                                                 "layer": 3, "tokenizer": {"special_tokens": "sep"}},
                         d, 16, "float32", ["mean"], False, True)
    for c in range(-(-len(ids) // 16)):
        block = slice(c * 16, (c + 1) * 16)
        cache.write_chunk(c, {"mean": np.array(rows[block], np.float32)}, None, seqs[block])
        cache.mark_done(c)
    cache.mark_complete()
    return y


def test_pack_averaging_scores_per_sample(tmp_path):
    y = synthetic_cache(tmp_path / "p.zarr", n_samples=60, packs=3)
    board = fit_heads(str(tmp_path / "p.zarr"), str(tmp_path / "out"),
                      FitOptions(heads=["ridge"], feature_sets=[["mean"]], labels=["y"], plots=False),
                      say=lambda m: None)
    preds = pd.read_csv(tmp_path / "out" / "mean" / "ridge" / "test_predictions.csv")
    assert len(preds) == 6 and preds.id.str.startswith("s").all() and "/" not in "".join(preds.id)
    truth = {f"s{i}": v for i, v in enumerate(y)}
    np.testing.assert_allclose(preds.true_y, [truth[i] for i in preds.id])
    assert board.test_pearson.iloc[0] > 0.9


def test_metrics_json_recomputed_from_predictions(tmp_path):
    synthetic_cache(tmp_path / "c.zarr", n_samples=80)
    fit_heads(str(tmp_path / "c.zarr"), str(tmp_path / "out"),
              FitOptions(heads=["mlp2"], feature_sets=[["mean"]], labels=["y"], epochs=30),
              say=lambda m: None)
    run = tmp_path / "out" / "mean" / "mlp2"
    preds = pd.read_csv(run / "test_predictions.csv")
    stored = json.loads((run / "metrics.json").read_text())["test"]
    again = regression_metrics(preds.true_y, preds.pred_y)
    for key in ("mse", "mae", "r2", "pearson", "spearman"):
        assert stored[key] == pytest.approx(again[key], rel=1e-9, abs=1e-12), key
    log = pd.read_csv(run / "training_log.csv")
    assert {"epoch", "train_loss", "val_loss", "lr"} <= set(log.columns)
    assert (run / "learning_curves.png").exists() and (run / "pred_vs_true_y.png").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["weights_sha256"] == "sha-A" and config["layer"] == 3


def test_label_join_and_test_ids(tmp_path):
    y = synthetic_cache(tmp_path / "j.zarr", n_samples=60, packs=2, label=False)
    pd.DataFrame({"sample": [f"s{i}" for i in range(60)], "pH": y}).to_csv(tmp_path / "lab.csv", index=False)
    (tmp_path / "test.txt").write_text("s1\ns5\ns9\ns12\ns20\nnot-there\n")
    cache = Cache.open(tmp_path / "j.zarr")
    data, keep = load_supervised(cache, ["pH"], labels_file=str(tmp_path / "lab.csv"), id_col="sample",
                                 test_ids=str(tmp_path / "test.txt"))
    assert sorted(set(data.groups[data.mask("test")])) == ["s1", "s12", "s20", "s5", "s9"]
    np.testing.assert_allclose(data.y[data.ids == "s5/pack1"], y[5])
    with pytest.raises(DataError, match="column.*nope"):
        load_supervised(cache, ["nope"], labels_file=str(tmp_path / "lab.csv"), id_col="sample")
    with pytest.raises(DataError, match="carries no label"):
        load_supervised(cache, ["pH"])


def test_kmer_baseline_rows_in_leaderboard(tmp_path):
    synthetic_cache(tmp_path / "k.zarr", n_samples=50)
    board = fit_heads(str(tmp_path / "k.zarr"), str(tmp_path / "out"),
                      FitOptions(heads=["ridge"], feature_sets=[["mean"]], labels=["y"],
                                 baseline=["kmer"], kmer_max_k=2, plots=False), say=lambda m: None)
    assert sorted(board.features) == ["kmer", "mean"]
    # the label lives in the embeddings, not in random sequence content
    assert board.set_index("features").test_r2["mean"] > board.set_index("features").test_r2["kmer"]


def test_predict_refuses_mismatched_cache(tmp_path):
    synthetic_cache(tmp_path / "a.zarr", n_samples=60)
    synthetic_cache(tmp_path / "b.zarr", n_samples=10, seed=1, model_sha="sha-B")
    synthetic_cache(tmp_path / "c.zarr", n_samples=10, seed=2)
    fit_heads(str(tmp_path / "a.zarr"), str(tmp_path / "out"),
              FitOptions(heads=["ridge"], feature_sets=[["mean"]], labels=["y"], plots=False),
              say=lambda m: None)
    head_dir = str(tmp_path / "out" / "mean" / "ridge")
    with pytest.raises(DataError, match="weights_sha256"):
        predict_cache(head_dir, str(tmp_path / "b.zarr"))
    table = predict_cache(head_dir, str(tmp_path / "c.zarr"))
    assert len(table) == 10 and "pred_y" in table


def test_fit_head_cli_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), size=80, p=[p, 0.5 - p, 0.25, 0.25]))
            for p in rng.uniform(0.05, 0.45, 120)]
    pd.DataFrame({"id": [f"r{i}" for i in range(120)], "seq": seqs,
                  "gc": [(s.count("G") + s.count("C")) / 80 for s in seqs]}).to_csv(tmp_path / "t.csv", index=False)
    runner = CliRunner()
    r = runner.invoke(cli.main, ["embed", "--model", "tiny-1k", "--random-init", "--input",
                                 str(tmp_path / "t.csv"), "--seq-col", "seq", "--id-col", "id",
                                 "--label", "gc", "--out", str(tmp_path / "t.zarr"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["fit-head", "--cache", str(tmp_path / "t.zarr"), "--label", "gc",
                                 "--head", "ridge", "--head", "mlp2", "--baseline", "kmer",
                                 "--kmer-max-k", "2", "--epochs", "20", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    # a run you can watch: which head of how many, elapsed time, and the split of each score
    assert "head 1/4: mean / ridge" in r.output and "head 4/4: kmer / mlp2" in r.output
    assert "elapsed]" in r.output and "val mae=" in r.output and "| test mae=" in r.output
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert len(board) == 4
    # the k-mer baseline sees base composition directly: it must nail a GC target
    assert board.set_index(["features", "head"]).test_r2[("kmer", "ridge")] > 0.95
    r = runner.invoke(cli.main, ["fit-head", "--cache", str(tmp_path / "t.zarr"), "--label", "nope",
                                 "--out", str(tmp_path / "run2")])
    assert r.exit_code == 1 and "carries no label 'nope'" in r.output


def test_k_fold_cross_validation_over_samples(tmp_path):
    synthetic_cache(tmp_path / "cv.zarr", n_samples=60, packs=2)
    said = []
    board = fit_heads(str(tmp_path / "cv.zarr"), str(tmp_path / "out"),
                      FitOptions(heads=["ridge"], feature_sets=[["mean"]], labels=["y"], cv=4,
                                 plots=False), say=said.append)
    row = board.iloc[0]
    assert row.cv_pearson_mean > 0.9 and row.cv_pearson_std >= 0
    folds = [m for m in said if "cv fold" in m]  # each fold says how it went (issue 22)
    assert [m.split("cv fold ")[1][:3] for m in folds] == ["1/4", "2/4", "3/4", "4/4"]
    scores = [float(m.rsplit(" ", 1)[1]) for m in folds]
    assert np.mean(scores) == pytest.approx(row.cv_pearson_mean, abs=1e-4)
    stored = json.loads((tmp_path / "out" / "mean" / "ridge" / "cv_metrics.json").read_text())
    assert stored["cv_mae_mean"] == pytest.approx(row.cv_mae_mean)


def test_time_budget_skips_the_heads_not_yet_started_and_says_which(tmp_path, monkeypatch):
    import heads.fit as fit_module

    synthetic_cache(tmp_path / "b.zarr", n_samples=60)
    clock = {"now": 0.0}
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: clock["now"])

    def say(message):
        said.append(message)
        if message.startswith("head 1/"):
            clock["now"] += 1000.0  # the first head takes "1000 s"

    said = []
    board = fit_heads(str(tmp_path / "b.zarr"), str(tmp_path / "out"),
                      FitOptions(heads=["ridge", "linear", "mlp2"], feature_sets=[["mean"]],
                                 labels=["y"], plots=False, time_budget=60), say=say)
    assert list(board["head"]) == ["ridge"]
    assert any("skipped 2 head(s): mean/linear, mean/mlp2" in m for m in said), said
    assert not (tmp_path / "out" / "mean" / "linear").exists()


def test_successive_halving_continues_the_best_third_exactly_as_one_fit():
    from heads.registry import make_head
    from heads.tuning import candidates, select

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    y = X[:, 0] - 0.5 * X[:, 1] + 0.1 * rng.normal(size=300)

    def make(params):
        return make_head("mlp2", "regression", epochs=30, params=params)

    grid = candidates("mlp2")
    head, chosen, table = select(make, grid, X[:200], y[:200], X[200:250], y[200:250], "regression")
    survivors = [row for row in table if row["val_loss"] is not None]
    assert len(table) == len(grid) == 6 and len(survivors) == 2
    cut = [row for row in table if row["val_loss"] is None]
    assert min(r["round1_loss"] for r in cut) >= 0  # cut after round one, losses recorded
    best = min(survivors, key=lambda r: r["val_loss"])
    assert chosen == {k: best[k] for k in chosen}
    # a candidate trained in two rounds is the same network as one trained in one go
    again = make(chosen).fit(X[:200], y[:200], X[200:250], y[200:250])
    np.testing.assert_array_equal(head.predict(X[250:]), again.predict(X[250:]))


def test_halving_continues_one_of_two_candidates_and_two_of_six():
    from heads.registry import make_head
    from heads.tuning import candidates, select, survivors

    assert [survivors(n) for n in (2, 3, 4, 6, 9)] == [1, 2, 2, 2, 3]
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 8)).astype(np.float32)
    y = X[:, 0] + 0.1 * rng.normal(size=200)
    grid = candidates("cnn")  # the CNN's grid: two step sizes, as here for an MLP
    assert len(grid) == 2
    head, chosen, table = select(lambda p: make_head("mlp2", "regression", epochs=12, params=p),
                                 grid, X[:150], y[:150], X[150:], y[150:], "regression")
    kept = [row for row in table if row["val_loss"] is not None]
    cut = [row for row in table if row["val_loss"] is None]
    assert len(kept) == 1 and len(cut) == 1 and cut[0]["stopped_after"] == 5
    assert kept[0]["round1_loss"] is None and chosen == {"lr": kept[0]["lr"]}
    assert len(head.history_) > 5  # the survivor trained on past the first round


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_lightgbm_grid_bins_the_rows_once_and_fits_what_its_sklearn_wrapper_fits(task, monkeypatch):
    """The num_leaves candidates share one binned training and validation Dataset, and each
    booster is the one LightGBM's scikit-learn estimator fits with the same settings."""
    import lightgbm as lgb

    from heads.registry import make_head
    from heads.tuning import candidates, select

    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 6))
    signal = X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=400)
    y = signal if task == "regression" else \
        np.where(signal > 0, "up", "down") if task == "binary" else np.digitize(signal, [-0.7, 0.7])
    kind = "regression" if task == "regression" else "classification"
    made = []
    original = lgb.Dataset.__init__
    monkeypatch.setattr(lgb.Dataset, "__init__", lambda self, *a, **k: (made.append(1), original(self, *a, **k))[1])
    grid = candidates("lightgbm")
    head, chosen, _ = select(lambda p: make_head("lightgbm", kind, params=p),
                             grid, X[:300], y[:300], X[300:350], y[300:350], kind)
    assert len(grid) == 4 and len(made) == 2  # one training and one validation Dataset
    monkeypatch.setattr(lgb.Dataset, "__init__", original)
    wrapper = (lgb.LGBMRegressor if kind == "regression" else lgb.LGBMClassifier)(
        n_estimators=head.n_estimators, learning_rate=head.learning_rate, random_state=head.seed,
        verbose=-1, n_jobs=head.threads_, **chosen)
    with warnings.catch_warnings():  # eval_set: renamed in newer LightGBM, both work
        warnings.simplefilter("ignore")
        wrapper.fit(X[:300], y[:300], eval_set=[(X[300:350], y[300:350])],
                    callbacks=[lgb.early_stopping(head.early_stopping_rounds, verbose=False)])
    if kind == "regression":
        np.testing.assert_array_equal(head.predict(X[350:]), wrapper.predict(X[350:]))
    else:
        np.testing.assert_array_equal(head.classes_, wrapper.classes_)
        np.testing.assert_array_equal(head.predict(X[350:]), wrapper.predict(X[350:]))
        np.testing.assert_allclose(head.predict_proba(X[350:]), wrapper.predict_proba(X[350:]), rtol=1e-12)
        with pytest.raises(ValueError, match="class the training labels lack"):
            make_head("lightgbm", kind).fit(X[:300], y[:300], X[300:302], np.array(["other", y[0]]))


def test_kernel_svms_train_on_a_seeded_subset_of_large_tables():
    from heads.registry import SVM_MAX_ROWS, make_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(SVM_MAX_ROWS + 700, 4))
    y = X[:, 0] + 0.1 * rng.normal(size=len(X))
    head = make_head("svr", "regression").fit(X, y)
    assert head.n_fit_rows_ == SVM_MAX_ROWS
    assert len(head.pipeline_[-1].support_) <= SVM_MAX_ROWS
    again = make_head("svr", "regression").fit(X, y)  # the same subset: the same model
    np.testing.assert_array_equal(head.predict(X[:50]), again.predict(X[:50]))
    small = make_head("ridge", "regression").fit(X, y)
    assert small.n_fit_rows_ == len(X)


def test_elastic_net_walks_its_alphas_warm_started_to_the_cold_optimum():
    from heads.registry import make_head
    from heads.tuning import candidates, select

    rng = np.random.default_rng(0)
    X = rng.poisson(0.3, (3000, 400)).astype(float)
    y = X @ (rng.normal(size=400) * (rng.random(400) < 0.05)) + rng.normal(size=3000)
    X_train, y_train, X_val, y_val = X[:2500], y[:2500], X[2500:], y[2500:]

    def make(params):
        return make_head("elasticnet", "regression", params=params)

    cold = {p["alpha"]: make(p).fit(X_train, y_train) for p in candidates("elasticnet")}
    best, params, table = select(make, candidates("elasticnet"), X_train, y_train, X_val, y_val,
                                 "regression")
    assert [row["alpha"] for row in table] == sorted(cold, reverse=True)  # strongest penalty first
    np.testing.assert_allclose(best.pipeline_[-1].coef_, cold[params["alpha"]].pipeline_[-1].coef_,
                               atol=1e-3)
    # a warm start from the next alpha up needs fewer sweeps than a cold one
    warm = make({"alpha": 1e-3, "l1_ratio": 0.5}).warm_from(cold[1e-2]).fit(X_train, y_train)
    assert warm.pipeline_[-1].n_iter_ < cold[1e-3].pipeline_[-1].n_iter_
    assert not warm.pipeline_[-1].warm_start and not hasattr(warm, "warm_start_")  # saved plain
    # rows > columns: coordinate descent ran on one Gram matrix for the whole path; the optimum
    # is scikit-learn's own on the rows, and no head keeps the matrix
    from sklearn.linear_model import ElasticNet
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = make_pipeline(StandardScaler(), ElasticNet(max_iter=5000, **params)).fit(X_train, y_train)
    np.testing.assert_allclose(best.pipeline_[-1].coef_, rows[-1].coef_, atol=1e-3)
    np.testing.assert_allclose(best.predict(X_val), rows.predict(X_val), atol=1e-2)
    assert best.pipeline_[-1].precompute is False and not hasattr(best, "gram_")


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_forest_chosen_on_small_forests_then_grown_is_the_forest_a_direct_fit_gives(task):
    from heads.registry import FOREST_PROBE_TREES, make_head
    from heads.tuning import candidates, select

    rng = np.random.default_rng(1)
    X = rng.normal(size=(900, 12))
    y = X[:, 0] * 2 + np.sin(X[:, 1] * 3) + rng.normal(0, 0.3, 900)
    if task == "classification":
        y = np.where(y > 0, "high", "low")

    def make(params):
        return make_head("rf", task, params=params)

    head, params, table = select(make, candidates("rf"), X[:700], y[:700], X[700:800], y[700:800], task)
    assert [row["probe_trees"] for row in table] == [FOREST_PROBE_TREES] * len(table)
    assert sum(row["val_loss"] is not None for row in table) == 1  # the chosen one, grown
    direct = make(params).fit(X[:700], y[:700])
    assert len(head.pipeline_[-1].estimators_) == len(direct.pipeline_[-1].estimators_) == 100
    if task == "regression":  # the same trees; their mean summed in another order by the threads
        np.testing.assert_allclose(head.predict(X[800:]), direct.predict(X[800:]), rtol=1e-12)
    else:
        np.testing.assert_array_equal(head.predict_proba(X[800:]), direct.predict_proba(X[800:]))
    assert not head.pipeline_[-1].warm_start


def test_an_svc_trains_on_fewer_rows_when_wide_and_an_svr_does_not():
    from heads.registry import SVM_MAX_ROWS, SVM_WORK, make_head

    rng = np.random.default_rng(0)
    y = rng.random(3000)
    svc = make_head("svc", "classification", params={"C": 1.0})
    X, _ = svc._rows_for(np.zeros((3000, 4096), np.float32), y)
    assert svc.n_fit_rows_ == len(X) == int((SVM_WORK / 4096) ** 0.5) == 2500
    X, _ = svc._rows_for(np.zeros((3000, 1024), np.float32), y)  # narrow: all 3,000 (<= 5,000)
    assert svc.n_fit_rows_ == len(X) == 3000
    svr = make_head("svr", "regression", params={"C": 1.0})  # its kernel by BLAS: width is cheap
    X, _ = svr._rows_for(np.zeros((SVM_MAX_ROWS + 1, 4096), np.float32), np.zeros(SVM_MAX_ROWS + 1))
    assert svr.n_fit_rows_ == len(X) == SVM_MAX_ROWS
    X, _ = make_head("ridge", "regression")._rows_for(np.zeros((3000, 4096)), y)  # not an SVM
    assert len(X) == 3000


@pytest.mark.parametrize("targets", [1, 2])
def test_an_svr_fitted_on_its_blas_kernel_is_the_svr_libsvm_fits(targets, tmp_path):
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR
    from heads.registry import make_head
    from heads.saving import load_head, save_head

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 20)) * rng.uniform(0.1, 5, 20)
    y = np.stack([np.sin(X[:, 0]) + 0.1 * rng.normal(size=400), X[:, 1] * X[:, 2]], axis=1)[:, :targets]
    y = y[:, 0] if targets == 1 else y
    for C in (0.1, 10.0):
        head = make_head("svr", "regression", multi_output=targets > 1, params={"C": C}).fit(X[:300], y[:300])
        svr = SVR(C=C) if targets == 1 else MultiOutputRegressor(SVR(C=C))
        direct = make_pipeline(StandardScaler(), svr).fit(X[:300], y[:300])
        ours = head.pipeline_[-1].estimators_ if targets > 1 else [head.pipeline_[-1]]
        theirs = direct[-1].estimators_ if targets > 1 else [direct[-1]]
        for a, b in zip(ours, theirs):
            assert a.kernel == "rbf" and a._gamma == b._gamma
            np.testing.assert_array_equal(a.support_, b.support_)
            np.testing.assert_allclose(a.dual_coef_, b.dual_coef_, atol=1e-9)
            np.testing.assert_array_equal(a.support_vectors_, b.support_vectors_)
        expected = direct.predict(X[300:])
        np.testing.assert_allclose(head.predict(X[300:]), expected, atol=1e-9)  # BLAS kernel
        np.testing.assert_allclose(head.pipeline_.predict(X[300:]), expected, atol=1e-9)  # libsvm's
    folder = tmp_path / "svr"
    folder.mkdir()
    loaded = load_head(folder, save_head(head, folder))
    np.testing.assert_allclose(loaded.predict(X[300:]), head.predict(X[300:]), atol=1e-12)


def test_an_svr_grid_computes_its_gram_matrix_once_and_fits_as_each_candidate_alone(monkeypatch):
    import heads.kernels
    from heads.registry import make_head
    from heads.tuning import candidates, select

    rng = np.random.default_rng(5)
    X = rng.normal(size=(260, 8))
    y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1) + 0.05 * rng.normal(size=(260, 2))
    grams = []
    kernel = heads.kernels.rbf_kernel
    monkeypatch.setattr(heads.kernels, "rbf_kernel",
                        lambda A, B, gamma: (grams.append(A is B), kernel(A, B, gamma))[1])

    def make(params):
        return make_head("svr", "regression", multi_output=True, params=params)

    grid = candidates("svr", {"svr": {"scale": ["standard", "raw"], "C": [0.1, 1.0, 10.0]}})
    head, chosen, table = select(make, grid, X[:200], y[:200], X[200:], y[200:], "regression")
    assert grams.count(True) == 2  # one Gram per scale: not per C, not per target
    alone = make(chosen).fit(X[:200], y[:200])
    np.testing.assert_array_equal(head.predict(X[200:]), alone.predict(X[200:]))
    losses = [row["val_loss"] for row in table]
    assert len(set(losses)) == len(grid)  # six different models
    assert "shared_" not in vars(head)


def test_a_torch_head_on_raw_inputs_keeps_their_relative_sizes_and_still_learns_small_ones():
    """scale 'raw': centred, then one common divisor (not each column's): rare features stay
    small relative to common ones, yet frequencies of ~0.01 are no harder to fit than unit ones."""
    from heads.registry import make_head

    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (1500, 40)) * np.linspace(0.002, 0.02, 40)  # k-mer-frequency-like sizes
    y = X @ rng.normal(size=40) * 50 + rng.normal(0, 0.05, 1500)
    head = make_head("linear", "regression", params={"scale": "raw", "lr": 3e-3, "weight_decay": 1e-4},
                     epochs=60).fit(X[:1200], y[:1200], X[1200:1350], y[1200:1350])
    assert np.unique(head.x_std_).size == 1  # one divisor for every column
    assert head.x_std_[0] == pytest.approx(np.sqrt((X[:1200].std(axis=0) ** 2).mean()), rel=1e-3)
    pred = head.predict(X[1350:])
    assert np.corrcoef(pred, y[1350:])[0, 1] > 0.95


def test_packs_are_averaged_per_sample_and_a_large_training_split_is_scored_on_whole_samples():
    from heads.evaluation import FixedPredictions, evaluate, group_mean
    from heads.data import Supervised

    keys = np.array(["b", "a", "b", "c", "a", "b"], dtype=object)
    values = np.arange(12, dtype=float).reshape(6, 2)
    samples, means = group_mean(keys, values)
    assert list(samples) == ["b", "a", "c"]  # first-seen order
    np.testing.assert_allclose(means, [values[[0, 2, 5]].mean(0), values[[1, 4]].mean(0), values[3]])

    # 40 samples of 3 packs each in train, 5 in test; predictions = truth + the row's pack number
    groups = np.repeat([f"s{i}" for i in range(45)], 3).astype(object)
    y = np.repeat(np.arange(45, dtype=float), 3)
    split = np.where(np.arange(135) < 120, "train", "test").astype(object)
    data = Supervised(ids=np.array([f"r{i}" for i in range(135)], dtype=object), groups=groups, y=y,
                      split=split, task="regression", target_names=["y"])
    head = FixedPredictions(y + np.tile([0.0, 1.0, 2.0], 45))
    X = np.arange(135)[:, None]
    whole, table = evaluate(head, X, data, "train")
    assert len(table) == 40 and "scored_samples" not in whole
    np.testing.assert_allclose(table["pred_y"] - table["true_y"], 1.0)  # a pack mean is +1
    part, table = evaluate(head, X, data, "train", limit=25)
    assert (part["scored_samples"], part["of_samples"]) == (25, 40) and len(table) == 25
    np.testing.assert_allclose(table["pred_y"] - table["true_y"], 1.0)  # whole samples, not rows
    again, _ = evaluate(head, X, data, "train", limit=25)
    assert again == part  # the same seeded subset
    assert "scored_samples" not in evaluate(head, X, data, "test", limit=25)[0]


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_knn_candidates_scored_from_one_search_score_as_each_searching_alone(task):
    from heads.registry import make_head
    from heads.tuning import candidates, select, validation_loss

    rng = np.random.default_rng(2)
    X = rng.normal(size=(700, 8))
    y = X[:, 0] + np.sin(2 * X[:, 1]) + rng.normal(0, 0.3, 700)
    if task == "classification":
        y = np.where(y > 0.5, "high", np.where(y < -0.5, "low", "mid"))

    def make(params):
        return make_head("knn", task, params=params)

    head, params, table = select(make, candidates("knn"), X[:500], y[:500], X[500:600], y[500:600], task)
    for row in table:  # the loss each candidate gets when it searches for itself
        alone = make({k: v for k, v in row.items() if k != "val_loss"}).fit(X[:500], y[:500])
        assert row["val_loss"] == pytest.approx(
            validation_loss(alone, X[500:600], y[500:600], task, y[:500]), rel=1e-12)
    best = min(table, key=lambda r: r["val_loss"])
    assert params == {k: v for k, v in best.items() if k != "val_loss"}
    # the chosen head searches for itself afterwards, as it would loaded from disk
    assert "kneighbors" not in vars(head.pipeline_[-1])
    direct = make(params).fit(X[:500], y[:500])
    np.testing.assert_array_equal(head.predict(X[600:]), direct.predict(X[600:]))


def test_halving_candidates_share_one_encoding_per_scale(monkeypatch):
    from heads.registry import make_head
    from heads.torch_mlp import TorchMLPHead
    from heads.tuning import candidates, halving

    rng = np.random.default_rng(2)
    X = (rng.random((240, 12)) * np.repeat([1, 10, 100], 4)).astype(np.float32)
    y = X[:, 0] + 0.01 * X[:, 2]
    prepared = []
    original = TorchMLPHead._prepare
    monkeypatch.setattr(TorchMLPHead, "_prepare",
                        lambda self, X: (prepared.append(self.scale), original(self, X))[1])
    heads = []

    def make(params):
        heads.append(make_head("mlp2", "regression", epochs=3, params=params))
        return heads[-1]

    grid = candidates("mlp2", {"mlp2": {"scale": ["standard", "raw"], "lr": [1e-3, 3e-3]}})
    halving(make, grid, X[:160], y[:160], X[160:200], y[160:200], "regression")
    assert sorted(prepared) == ["raw", "standard"]  # once per scale, not once per candidate
    for head in heads:  # each candidate holds its own scale's encoding
        own = make_head("mlp2", "regression", params={"scale": head.scale})
        own._prepare(X[:160])
        np.testing.assert_array_equal(head.x_std_, own.x_std_)
    assert len({tuple(h.x_std_) for h in heads}) == 2


def test_layer_norm_head_trains_on_rows_normalised_once_with_the_same_function_and_gradients():
    import torch

    from heads.torch_mlp import _trained_form, build_mlp

    torch.manual_seed(0)
    model = build_mlp("mlp2_ln", 40, 2).eval()  # eval: dropout off, both forms comparable
    with torch.no_grad():  # a trained norm: weight and bias away from 1 and 0
        model[0].weight.uniform_(0.5, 2.0)
        model[0].bias.normal_()
    x, xv = torch.randn(64, 40) * 3 + 1, torch.randn(10, 40)
    shared = {}
    trained, xn, xvn = _trained_form(model, x, xv, shared)
    assert {id(p) for p in trained.parameters()} == {id(p) for p in model.parameters()}
    assert _trained_form(model, x, xv, shared)[1] is xn  # normalised once per shared encoding
    torch.testing.assert_close(trained(xvn), model(xv), rtol=1e-5, atol=1e-5)
    target = torch.randn(64, 2)
    grads = []
    for net, rows in ((model, x), (trained, xn)):
        net.zero_grad()
        torch.nn.functional.mse_loss(net(rows), target).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    plain = build_mlp("mlp2", 40, 2)
    assert _trained_form(plain, x, xv, shared)[0] is plain  # nothing to take out


def _sparse_counts(rng, n, d=300):
    """Count-like rows, ~8% non-zero, with a few always-present columns (as k-mer tables)."""
    X = (rng.random((n, d)) < 0.06) * rng.integers(1, 4, (n, d))
    X[:, :6] = rng.integers(20, 40, (n, 6))
    return X.astype(np.float32)


@pytest.mark.parametrize("arch,scale", [("mlp2", "raw"), ("mlp3", "standard"), ("mlp2_ln", "raw"),
                                        ("mlp2_ln", "standard"), ("linear", "raw")])
def test_sparse_rows_give_the_dense_networks_outputs_and_gradients(arch, scale):
    """A first layer on SparseRows (x / std minus mean / std, with mlp2_ln's per-row norm) is
    the dense network on (x - mean) / std: same outputs and parameter gradients, same
    parameters, and the model keeps working on dense rows afterwards."""
    import torch

    from heads.sparse_rows import SparseRows
    from heads.torch_mlp import TorchMLPHead, _trained_form, build_mlp

    rng = np.random.default_rng(0)
    X, Xv = _sparse_counts(rng, 96), _sparse_counts(rng, 20)
    head = TorchMLPHead(arch=arch, scale=scale)
    head._prepare(X)
    dense, dense_val = head._encode(X), head._encode(Xv)
    rows, rows_val = (SparseRows.encode(A, head.x_mean_, head.x_std_) for A in (X, Xv))
    torch.manual_seed(0)
    model = build_mlp(arch, X.shape[1], 2).eval()  # eval: dropout off
    if arch == "mlp2_ln":
        with torch.no_grad():
            model[0].weight.uniform_(0.5, 2.0)
            model[0].bias.normal_()
    reference = build_mlp(arch, X.shape[1], 2).eval()
    reference.load_state_dict(model.state_dict())
    trained, xs, xvs = _trained_form(model, rows, rows_val, {})
    assert {id(p) for p in trained.parameters()} == {id(p) for p in model.parameters()}
    torch.testing.assert_close(trained(xvs[0:20]), reference(dense_val), rtol=1e-5, atol=1e-5)
    order = torch.as_tensor(rng.permutation(96)[:40])
    target = torch.randn(40, 2)
    torch.nn.functional.mse_loss(trained(xs.take(order)), target).backward()
    torch.nn.functional.mse_loss(reference(dense[order]), target).backward()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(model(dense_val), reference(dense_val), rtol=1e-5, atol=1e-5)


def test_sparse_training_is_chosen_for_sparse_inputs_and_fits_as_the_dense_path(monkeypatch):
    """mlp2 on count rows trains on SparseRows (CPU), the same run as the dense path to float
    rounding; dense features, the linear head and the CNN keep dense rows; the fitted
    network's weights are contiguous again (as saved)."""
    import torch

    from heads.cnn import CNNHead
    from heads.sparse_rows import SparseRows
    from heads.torch_mlp import TorchMLPHead

    rng = np.random.default_rng(1)
    X = _sparse_counts(rng, 400)
    y = X[:, 6:30].sum(axis=1) + rng.normal(size=400)
    cpu = torch.device("cpu")
    assert TorchMLPHead(arch="mlp2")._trains_sparse(X, cpu) == torch.backends.mkl.is_available()
    assert not TorchMLPHead(arch="mlp2")._trains_sparse(rng.normal(size=(50, 30)), cpu)
    assert not TorchMLPHead(arch="linear")._trains_sparse(X, cpu)
    assert not TorchMLPHead(arch="mlp2")._trains_sparse(X, torch.device("meta"))
    assert not CNNHead()._trains_sparse(X, cpu)

    def fit(sparse):
        head = TorchMLPHead(arch="mlp2", epochs=6, patience=100, device="cpu")
        # pinned: without MKL (ARM builds) the sparse path is off by default, but it works
        monkeypatch.setattr(head, "_trains_sparse", lambda X, device: sparse)
        head.begin(X[:320], y[:320], X[320:], y[320:])
        assert isinstance(head._run["x"], SparseRows) == sparse
        head.advance(6)
        return head.end()

    sparse, dense = fit(True), fit(False)
    assert all(p.is_contiguous() for p in sparse.model_.parameters())
    np.testing.assert_allclose([h["val_loss"] for h in sparse.history_],
                               [h["val_loss"] for h in dense.history_], rtol=1e-4)
    np.testing.assert_allclose(sparse.predict(X[320:]), dense.predict(X[320:]), rtol=1e-3, atol=1e-3)


def test_early_stopping_patience_needs_a_real_gain_but_keeps_the_best_weights(monkeypatch):
    """A validation loss that creeps down by less than MIN_IMPROVEMENT (relative) each epoch
    does not reset the patience; the weights kept are still the lowest loss's."""
    import heads.torch_mlp
    from heads.torch_mlp import TorchMLPHead

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = X[:, 0] + 0.1 * rng.normal(size=200)

    def fit(min_improvement):
        monkeypatch.setattr(heads.torch_mlp, "MIN_IMPROVEMENT", min_improvement)
        # a step size so small that every epoch lowers the loss by ~0.03%
        return TorchMLPHead(arch="linear", lr=3e-5, epochs=30, patience=4).fit(
            X[:150], y[:150], X[150:], y[150:])

    creeping = fit(0.0)  # every gain counts: all 30 epochs run
    assert len(creeping.history_) == 30
    losses = np.array([h["val_loss"] for h in creeping.history_])
    gains = -np.diff(losses) / losses[:-1]
    assert (gains > 1e-4).all() and (gains < 1e-3).all()
    stopped = fit(1e-3)  # patience 4 after the first epoch, best weights the last epoch's
    assert len(stopped.history_) == 5 and stopped.best_epoch_ == 5
