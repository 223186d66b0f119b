"""Every head by name, each an estimator with fit(X, y, X_val, y_val) / predict."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputRegressor
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from . import kernels
from .cores import lightgbm_threads
from .torch_mlp import ARCHS, TorchMLPHead

TASKS = ("regression", "classification")
SCALES = ("standard", "raw")  # how a head sees its inputs: standardised, or centred only
SVM_MAX_ROWS = 5_000  # kernel SVMs train on at most this many rows (a seeded subset) ...
SVM_WORK = SVM_MAX_ROWS ** 2 * 1_024  # ... and SVCs on fewer when wide: rows^2 x width within this
FOREST_PROBE_TREES = 25  # forests are compared on this many trees; the chosen one grows on
WIDE = 1_024  # inputs wider than this (k-mer counts) get cheaper settings where it matters
GRAM_MAX_FEATURES = 8_192  # elastic net on a Gram matrix up to this width (512 MiB)
RF_FEATURES = 0.33  # regression forests: a third of the features per split (as R's randomForest)


class SklearnHead(BaseEstimator):
    """A scikit-learn model behind feature standardisation; the validation set is not used."""

    def __init__(self, estimator=None, scale="standard"):
        self.estimator = estimator
        self.scale = scale

    def fit(self, X, y, X_val=None, y_val=None):
        # scale "raw": centred only (k-mer frequencies as they are; standardising inflates rare ones)
        scaler = StandardScaler(with_std=self.scale == "standard")
        X, y = self._rows_for(X, y)
        estimator = clone(self.estimator)
        if isinstance(estimator, RandomForestRegressor) and X.shape[1] > WIDE \
                and estimator.max_features == RF_FEATURES:
            # a third of 5,460 k-mer columns per split is ~25x the work of sqrt(d) for little
            # gain: wide inputs get sqrt(d), as classification forests always do
            estimator.set_params(max_features="sqrt")
        start = self.__dict__.pop("warm_start_", None)  # set by warm_from (elastic net); never saved
        shared = self.__dict__.pop("shared_", None)  # set by heads.tuning (shares_work); never saved
        if start is not None:
            # coordinate descent from the previous alpha's solution: along a decreasing path
            # it converges in a fraction of the sweeps a cold start needs (same optimum)
            estimator.set_params(warm_start=True)
            estimator.coef_ = start.copy()
        if kernels.is_rbf_svr(estimator):  # its kernel by BLAS, not libsvm's dot products
            X = scaler.fit_transform(X)
            self.pipeline_ = make_pipeline(scaler, estimator)
            self.pipeline_.steps[-1] = (self.pipeline_.steps[-1][0],
                                        kernels.fit(estimator, X, y, shared))
        elif isinstance(estimator, ElasticNet) and X.shape[1] < min(len(X), GRAM_MAX_FEATURES):
            self._fit_on_gram(scaler, estimator, X, y, shared)
        else:
            self.pipeline_ = make_pipeline(scaler, estimator).fit(X, y)
        if start is not None:
            estimator.set_params(warm_start=False)  # saved as an ordinary fitted model
        if hasattr(self.pipeline_, "classes_"):
            self.classes_ = self.pipeline_.classes_
        return self

    def _fit_on_gram(self, scaler, estimator, X, y, shared: dict | None):
        """Elastic net by coordinate descent on X'X (rows > columns): each sweep costs
        columns^2, not rows x columns, and one Gram matrix (per scale, in `shared`) serves a
        whole alpha path. On 14,339 x 5,460 k-mer rows the path took 57 s on the rows, 17 s
        with a Gram per alpha. Centred in float64, as scikit-learn requires of a Gram it is
        given (float32 centring leaves column means of ~1e-6, and it would compute its own).
        The head never keeps the matrix."""
        Xs = scaler.fit_transform(np.asarray(X, np.float64))
        key = ("elastic net Gram", self.scale, Xs.shape)
        gram = (shared or {}).get(key)
        if gram is None:
            gram = Xs.T @ Xs
            if shared is not None:
                shared[key] = gram
        estimator.set_params(precompute=gram)
        estimator.fit(Xs, y)
        estimator.set_params(precompute=False)  # saved without the matrix
        self.pipeline_ = make_pipeline(scaler, estimator)

    def predict(self, X):
        if kernels.is_rbf_svr(self.pipeline_[-1]):
            return kernels.predict(self.pipeline_[-1], self.pipeline_[0].transform(np.asarray(X)))
        return self.pipeline_.predict(X)

    def predict_proba(self, X):
        return self.pipeline_.predict_proba(X)

    # candidates of one grid share work through one dict that heads.tuning hands each as
    # `shared_`: an RBF SVR's Gram matrix (it does not depend on C), elastic net's X'X (it does
    # not depend on alpha)
    shares_work = True

    # warm starts along a regularisation path (heads.tuning.select): the grid is walked from
    # the strongest penalty down, each candidate starting from the previous one's coefficients
    @property
    def on_path(self) -> bool:
        return isinstance(self.estimator, ElasticNet)

    def warm_order(self, grid: list[dict]) -> list[dict]:
        return sorted(grid, key=lambda p: (p.get("l1_ratio", 0.5), -p.get("alpha", 1.0)))

    def warm_from(self, previous: "SklearnHead"):
        self.warm_start_ = np.array(previous.pipeline_[-1].coef_, dtype=float)
        return self

    def _rows_for(self, X, y):
        """Kernel SVMs cost rows squared (the solver, the Gram matrix's memory), so they train
        on a seeded random subset of at most SVM_MAX_ROWS rows; an SVC, whose kernel libsvm
        computes itself one dot product at a time (5,000 rows of 5,460 k-mer columns: 53 s per
        candidate on 2 cores), on fewer for inputs wider than 1,024 (rows^2 x width <=
        SVM_WORK: 2,165 rows at 5,460); an RBF SVR's kernel is one BLAS product
        (heads.kernels). `n_fit_rows_` records the rows used."""
        X, y = np.asarray(X), np.asarray(y)
        inner = getattr(self.estimator, "estimator", self.estimator)
        self.n_fit_rows_ = len(X)
        limit = SVM_MAX_ROWS
        if X.ndim == 2 and not kernels.is_rbf_svr(self.estimator):
            limit = min(SVM_MAX_ROWS, int((SVM_WORK / max(1, X.shape[1])) ** 0.5))
        if isinstance(inner, (SVR, SVC)) and len(X) > limit:
            rows = np.sort(np.random.default_rng(0).choice(len(X), limit, replace=False))
            X, y, self.n_fit_rows_ = X[rows], y[rows], limit
        return X, y

    # k-NN: a candidate's cost is its neighbour search, the same for every k; heads.tuning
    # searches the validation rows once for the largest k and each candidate reads its first k
    @property
    def searches(self) -> bool:
        return isinstance(self.estimator, (KNeighborsRegressor, KNeighborsClassifier))

    def neighbours(self, X, k: int):
        """(distances, indices) of the k nearest training rows of each row of X."""
        return self.pipeline_[-1].kneighbors(self.pipeline_[0].transform(np.asarray(X)), n_neighbors=k)

    @contextmanager
    def reading(self, found):
        """Within: predictions for the rows `found` was searched for read its first k
        neighbours instead of searching again (scikit-learn's own weighting then applies)."""
        model = self.pipeline_[-1]
        search = model.kneighbors
        k = model.n_neighbors

        def kneighbors(X=None, n_neighbors=None, return_distance=True):
            if X is None or len(X) != len(found[0]) or n_neighbors not in (None, k):
                return search(X, n_neighbors, return_distance)
            return (found[0][:, :k], found[1][:, :k]) if return_distance else found[1][:, :k]

        model.kneighbors = kneighbors
        try:
            yield self
        finally:
            del model.kneighbors

    # forests: candidates compared on FOREST_PROBE_TREES trees, the chosen one grown to its
    # full size (heads.tuning.select); scikit-learn seeds the added trees as if all had been
    # grown at once, so the grown forest is the one a direct fit would give
    @property
    def grows(self) -> bool:
        return isinstance(self.estimator, (RandomForestRegressor, RandomForestClassifier))

    def probe(self):
        self.estimator = clone(self.estimator).set_params(
            n_estimators=min(FOREST_PROBE_TREES, self.estimator.n_estimators))
        return self

    def grow(self, X, y, n_estimators: int):
        forest = self.pipeline_[-1]
        forest.set_params(warm_start=True, n_estimators=n_estimators)
        forest.fit(self.pipeline_[0].transform(np.asarray(X)), np.asarray(y))
        forest.set_params(warm_start=False)  # saved as an ordinary fitted forest
        self.estimator = clone(self.estimator).set_params(n_estimators=n_estimators)
        return self


class LightGBMHead(BaseEstimator):
    """LightGBM with early stopping on the validation set; one booster per regression target."""

    def __init__(self, task="regression", n_estimators=2000, learning_rate=0.05, num_leaves=31,
                 early_stopping_rounds=50, seed=0):
        self.task = task
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed

    # candidates of one grid (num_leaves) share the binned training and validation Datasets
    # (heads.tuning hands them one dict): binning 14,339 x 5,460 k-mer rows took ~2 s a candidate
    shares_work = True

    def _params(self, n_classes: int) -> dict:
        """LightGBM's own parameters, as its scikit-learn wrapper sets them (the rest are
        defaults in both)."""
        objective = "regression" if self.task == "regression" else \
            "binary" if n_classes == 2 else "multiclass"
        return {"objective": objective, **({"num_class": n_classes} if objective == "multiclass" else {}),
                "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "seed": self.seed, "verbose": -1, "num_threads": self.threads_}

    def fit(self, X, y, X_val=None, y_val=None):
        import lightgbm as lgb

        shared = self.__dict__.pop("shared_", None)  # set by heads.tuning; never saved
        y = np.asarray(y)
        self.threads_ = lightgbm_threads()
        if self.task == "classification":
            self.classes_ = np.unique(y)
            if y_val is not None and not np.isin(np.asarray(y_val), self.classes_).all():
                raise ValueError("the validation labels hold a class the training labels lack")
            targets = [np.searchsorted(self.classes_, y)]  # labels as class indices
            val_targets = [None if y_val is None else np.searchsorted(self.classes_, np.asarray(y_val))]
        else:
            targets = [y] if y.ndim == 1 else list(y.T)
            val_targets = [None] * len(targets) if y_val is None else \
                [np.asarray(y_val)] if np.asarray(y_val).ndim == 1 else list(np.asarray(y_val).T)
        params = self._params(len(self.classes_) if self.task == "classification" else 1)
        self.boosters_ = []
        for t, (target, val_target) in enumerate(zip(targets, val_targets)):
            key = ("lightgbm datasets", t, np.shape(X))
            sets = (shared or {}).get(key)
            if sets is None:
                train_set = lgb.Dataset(X, label=target, params=params, free_raw_data=False)
                valid_set = None if val_target is None else \
                    lgb.Dataset(X_val, label=val_target, reference=train_set, free_raw_data=False)
                sets = (train_set, valid_set)
                if shared is not None:
                    shared[key] = sets
            train_set, valid_set = sets
            kwargs = {} if valid_set is None else {
                "valid_sets": [valid_set],
                "callbacks": [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]}
            booster = lgb.train(params, train_set, num_boost_round=self.n_estimators, **kwargs)
            booster.free_dataset()  # the head keeps the trees, not the binned rows
            self.boosters_.append(booster)
        self.multi_output_ = len(targets) > 1
        return self

    # Predictions go through the Booster, fitted or loaded from its text model (heads.saving),
    # so a saved head predicts exactly as it did when fitted.
    def predict(self, X):
        if self.task == "classification":
            return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]
        preds = [_booster(b).predict(X) for b in self.boosters_]
        return np.stack(preds, axis=1) if self.multi_output_ else preds[0]

    def predict_proba(self, X):
        p = _booster(self.boosters_[0]).predict(X)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p


def _booster(model):
    """The lightgbm.Booster of a fitted LGBM estimator, or the Booster itself."""
    return getattr(model, "booster_", model)


def _multi(estimator, multi_output: bool):
    return MultiOutputRegressor(estimator) if multi_output else estimator


def make_head(name: str, task: str, multi_output: bool = False, seed: int = 0,
              device: str = "auto", epochs: int = 100, loss: str = "smoothl1",
              params: dict | None = None):
    """A fresh head by name for a task, with `params` (its tuned hyperparameters, see
    heads.tuning) set; ValueError lists the names when it is unknown."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}")
    params = dict(params or {})
    scale = params.pop("scale", "standard")  # trees ignore it: splits do not see a scale
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}")
    if name in ARCHS:
        return TorchMLPHead(arch=name, task=task, seed=seed, device=device, epochs=epochs,
                            loss=loss, scale=scale, **params)
    if name == "lightgbm":
        return LightGBMHead(task=task, seed=seed, **params)
    if name == "cnn":
        from .cnn import CNNHead

        return CNNHead(task=task, seed=seed, device=device, epochs=min(epochs, 40), loss=loss,
                       **params)
    regression = {
        "ridge": lambda: Ridge(alpha=1.0),
        "elasticnet": lambda: ElasticNet(alpha=0.01, l1_ratio=0.5, max_iter=5000),
        "svr": lambda: _multi(SVR(C=1.0), multi_output),
        # a third of the features per split (as R's randomForest does for regression): as good
        # as all of them on wide inputs, and several times faster
        "rf": lambda: RandomForestRegressor(n_estimators=100, max_features=RF_FEATURES, n_jobs=-1,
                                            random_state=seed),
        "knn": lambda: KNeighborsRegressor(n_neighbors=10, weights="distance"),
    }
    classification = {
        "logistic": lambda: LogisticRegression(max_iter=2000, C=1.0),
        "svc": lambda: CalibratedClassifierCV(SVC(C=1.0, random_state=seed), ensemble=False),
        "rf": lambda: RandomForestClassifier(n_estimators=100, max_features="sqrt", n_jobs=-1,
                                             random_state=seed),
        "knn": lambda: KNeighborsClassifier(n_neighbors=10, weights="distance"),
    }
    table = regression if task == "regression" else classification
    known = {*ARCHS, "lightgbm", "cnn", *regression, *classification}
    if name not in known:
        raise ValueError(f"unknown head {name!r}; choose from {', '.join(sorted(known))}")
    if name not in table:
        raise ValueError(f"head {name!r} does not do {task}; choose from "
                         f"{', '.join(head_names(task))}")
    estimator = table[name]()
    # wrapped estimators (MultiOutputRegressor(SVR), CalibratedClassifierCV(SVC)) take their
    # inner model's parameters with the 'estimator__' prefix
    inner = "estimator__" if isinstance(estimator, (MultiOutputRegressor, CalibratedClassifierCV)) else ""
    estimator.set_params(**{inner + k: _plain(v) for k, v in params.items()})
    return SklearnHead(estimator, scale=scale)


def _plain(value):
    return np.asarray(value) if isinstance(value, list) else value


def head_names(task: str) -> list[str]:
    sk = ["ridge", "elasticnet", "svr", "rf", "knn"] if task == "regression" else ["logistic", "svc", "rf", "knn"]
    return [*ARCHS, *sk, "lightgbm"]
