"""RBF support-vector regression with its kernel computed by BLAS.

libsvm computes every kernel value itself, one dot product at a time: on 5,460 k-mer columns
fitting 2,165 rows took ~23 s per candidate and scoring 17,667 rows against ~2,000 support
vectors ~160 s on 2 cores. The same numbers as one matrix product take a second or two. So an
RBF SVR is fitted here on its precomputed Gram matrix (libsvm solves the same dual problem; the
kernel is the same function of the same rows) and handed back as the ordinary `SVR(kernel="rbf")`
a direct fit gives, support vectors included, so that it saves, loads and predicts through
scikit-learn as any other; `predict` computes the kernel against the support vectors by BLAS.
Only SVR: an SVC sits inside CalibratedClassifierCV's own cross-validation and keeps libsvm's
path (and its row limit, heads.registry).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.multioutput import MultiOutputRegressor
from sklearn.svm import SVR

ROWS_PER_BLOCK = 2_048  # kernel rows computed at once when predicting: bounded memory


def is_rbf_svr(estimator) -> bool:
    """An RBF SVR, alone or one per target (MultiOutputRegressor)."""
    inner = estimator.estimator if isinstance(estimator, MultiOutputRegressor) else estimator
    return type(inner) is SVR and inner.kernel == "rbf"


def rbf_gamma(svr: SVR, X: np.ndarray) -> float:
    """The gamma scikit-learn's fit would use: 'scale' = 1 / (width x variance of X)."""
    if svr.gamma == "scale":
        variance = float(X.var())
        return 1.0 / (X.shape[1] * variance) if variance != 0 else 1.0
    if svr.gamma == "auto":
        return 1.0 / X.shape[1]
    return float(svr.gamma)


def rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma |a - b|^2) for every row pair, in float64 (as libsvm computes it)."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    distances = (A * A).sum(axis=1)[:, None] + (B * B).sum(axis=1)[None, :] - 2.0 * (A @ B.T)
    np.maximum(distances, 0.0, out=distances)  # rounding can make a self-distance -1e-13
    return np.exp(-gamma * distances, out=distances)


def fit_svr(svr: SVR, X: np.ndarray, y: np.ndarray, grams: dict | None = None) -> SVR:
    """`svr` (RBF) fitted on (X, y) from its precomputed Gram matrix, returned as an RBF SVR.
    `grams`: Gram matrices already computed for these rows (per target of one fit, per C of
    one tuning grid: the kernel does not depend on C or on the target), added to when new."""
    X = np.asarray(X, np.float64)
    gamma = rbf_gamma(svr, X)
    key = _gram_key(X, gamma)
    gram = grams.get(key) if grams is not None else None
    if gram is None:
        gram = rbf_kernel(X, X, gamma)
        np.fill_diagonal(gram, 1.0)  # a row's distance to itself is exactly zero
        if grams is not None:
            grams[key] = gram
    solved = clone(svr).set_params(kernel="precomputed").fit(gram, np.asarray(y, np.float64))
    fitted = clone(svr)
    hyperparameters = fitted.get_params()
    fitted.__dict__.update({k: v for k, v in solved.__dict__.items() if k not in hyperparameters})
    # what an RBF fit records where a precomputed one records the Gram matrix's shape
    fitted.support_vectors_ = np.ascontiguousarray(X[solved.support_])
    fitted._gamma = gamma
    fitted.shape_fit_ = X.shape
    fitted.n_features_in_ = X.shape[1]
    return fitted


def _gram_key(X: np.ndarray, gamma: float) -> tuple:
    """What tells the rows of one grid's candidates apart (their scaling): shape, gamma, sum
    and the first and last rows."""
    return (X.shape, gamma, float(X.sum()), X[0].tobytes() if len(X) else b"",
            X[-1].tobytes() if len(X) else b"")


def fit(estimator, X, y, grams: dict | None = None):
    """An RBF SVR, or a MultiOutputRegressor of them (one per target), fitted by `fit_svr`;
    one Gram matrix serves every target (and, through `grams`, every candidate of a grid)."""
    grams = {} if grams is None else grams
    if not isinstance(estimator, MultiOutputRegressor):
        return fit_svr(estimator, X, y, grams)
    y = np.asarray(y).reshape(len(y), -1)
    fitted = clone(estimator)
    fitted.estimators_ = [fit_svr(estimator.estimator, X, y[:, t], grams) for t in range(y.shape[1])]
    fitted.n_features_in_ = X.shape[1]
    return fitted


def predict(estimator, X) -> np.ndarray:
    """The fitted SVR's (or per-target SVRs') predictions, the kernel by BLAS in row blocks."""
    svrs = estimator.estimators_ if isinstance(estimator, MultiOutputRegressor) else [estimator]
    X = np.asarray(X)  # each block goes to float64 on its own: a float32 table is not doubled
    out = np.empty((len(X), len(svrs)))
    for t, svr in enumerate(svrs):
        dual, intercept = np.asarray(svr._dual_coef_, np.float64)[0], float(svr._intercept_[0])
        for start in range(0, len(X), ROWS_PER_BLOCK):
            block = X[start: start + ROWS_PER_BLOCK]
            out[start: start + len(block), t] = rbf_kernel(block, svr.support_vectors_, svr._gamma) @ dual + intercept
    return out if isinstance(estimator, MultiOutputRegressor) else out[:, 0]
