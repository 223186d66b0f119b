"""Heads on planted signals, splits, pack averaging, joins, the k-mer baseline, predict, CLI."""
import json
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
    r = runner.invoke(cli.main, ["fit-head", "--cache", str(tmp_path / "t.zarr"), "--label", "gc",
                                 "--head", "linear", "--full-grid", "--epochs", "8", "--no-plots",
                                 "--out", str(tmp_path / "full")])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "full" / "mean" / "linear" / "config.json").read_text())
    assert config["full_grid"] is True
    assert len(config["validation_losses"]) == 6
    assert all(row["val_loss"] is not None for row in config["validation_losses"])
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
