"""Tuning grids and the work their candidates share: successive halving, LightGBM's binned rows,
kernel SVMs (row subsets, one BLAS Gram matrix), elastic net's warm path, forests grown from
probes, k-NN from one neighbour search."""
import warnings

import numpy as np
import pytest


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
    # each cut candidate's first round was its step size's share (2 or 6 epochs), and its
    # recorded loss is the best of those epochs of the candidate trained alone
    for row in cut:
        params = {k: row[k] for k in chosen}
        assert row["stopped_after"] == {3e-3: 2, 1e-3: 6}[row["lr"]]
        alone = make(params).fit(X[:200], y[:200], X[200:250], y[200:250])
        first = [h["val_loss"] for h in alone.history_[: row["stopped_after"]]]
        assert row["round1_loss"] == pytest.approx(min(first), rel=1e-6)


def test_a_full_grid_trains_every_candidate_on_and_keeps_the_lowest_validation_loss():
    """--full-grid: no candidate is cut after the first round; each trains as it would alone,
    so the halving's survivors score exactly as in the full grid."""
    from heads.registry import make_head
    from heads.tuning import candidates, select

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    y = X[:, 0] - 0.5 * X[:, 1] + 0.1 * rng.normal(size=300)

    def make(params):
        return make_head("mlp2", "regression", epochs=30, params=params)

    grid, data = candidates("mlp2"), (X[:200], y[:200], X[200:250], y[200:250], "regression")
    head, chosen, table = select(make, grid, *data, full_grid=True)
    losses = [row["val_loss"] for row in table]
    assert len(table) == 6 and None not in losses and all(r["round1_loss"] is None for r in table)
    best = table[int(np.argmin(losses))]
    assert chosen == {k: best[k] for k in chosen}
    _, _, halved = select(make, grid, *data)
    by_params = {(r["lr"], r["weight_decay"]): r["val_loss"] for r in table}
    survivors = [r for r in halved if r["val_loss"] is not None]
    assert len(survivors) == 2
    for row in survivors:
        assert row["val_loss"] == pytest.approx(by_params[row["lr"], row["weight_decay"]], rel=1e-6)

def test_halving_continues_one_of_two_candidates_and_two_of_six():
    from heads.registry import make_head
    from heads.tuning import candidates, round_one_epochs, select, survivors

    assert [survivors(n) for n in (2, 3, 4, 6, 9)] == [1, 2, 2, 2, 3]
    def steps(name, *lrs):
        return round_one_epochs([make_head(name, "regression", params={"lr": lr}) for lr in lrs])

    assert steps("mlp3", 3e-3, 1e-3, 1e-3) == [2, 6, 6]
    assert steps("mlp2", 1e-2, 1e-4) == [2, 200]  # pinned grids too (the epoch limit caps it)
    assert steps("cnn", 3e-3, 1e-3) == [5, 5]  # the CNN's step sizes: equal epochs
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 8)).astype(np.float32)
    y = X[:, 0] + 0.1 * rng.normal(size=200)
    grid = candidates("cnn")  # the CNN's grid: two step sizes, as here for an MLP
    assert len(grid) == 2
    head, chosen, table = select(lambda p: make_head("mlp2", "regression", epochs=12, params=p),
                                 grid, X[:150], y[:150], X[150:], y[150:], "regression")
    kept = [row for row in table if row["val_loss"] is not None]
    cut = [row for row in table if row["val_loss"] is None]
    # the first round gives each step size the same lr x steps: 2 epochs at 3e-3, 6 at 1e-3
    assert len(kept) == 1 and len(cut) == 1
    assert cut[0]["stopped_after"] == {3e-3: 2, 1e-3: 6}[cut[0]["lr"]]
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
