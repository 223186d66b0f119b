"""Checks on a scikit-learn head loaded from a skops file, before it predicts anything.

skops refuses code, but it restores arrays as written, and some compiled predictors trust
their arrays as indices: a tree whose child index points past its node array, or a feature
index past the input's width, reads out of bounds (a segfault, or silently wrong numbers);
libsvm trusts its support-vector counts. So the pipeline must be exactly what fit-head builds
(a StandardScaler, then one of the registry's estimators), every tree a tree, every index in
range, and a k-NN search index is rebuilt from the training points rather than trusted.
"""
from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputRegressor
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from cache.errors import UserError

ESTIMATORS = (Ridge, ElasticNet, LogisticRegression, SVR, MultiOutputRegressor,
              CalibratedClassifierCV, RandomForestRegressor, RandomForestClassifier,
              KNeighborsRegressor, KNeighborsClassifier)
SVM_KERNELS = ("rbf", "linear", "poly", "sigmoid")


class CraftedHeadError(UserError, ValueError):
    """A head file whose contents are not what fit-head writes."""


def check_pipeline(pipeline, where: str):
    """Refuse anything but StandardScaler -> a registry estimator with consistent arrays."""
    def fail(why):
        raise CraftedHeadError(f"{where}: {why}; it is not a head fit-head wrote (damaged or "
                               "crafted): refusing it. Fit the head again")

    if type(pipeline) is not Pipeline or len(pipeline.steps) != 2:
        fail(f"holds a {type(pipeline).__name__}, not a two-step pipeline")
    scaler, estimator = (step for _, step in pipeline.steps)
    if type(scaler) is not StandardScaler or type(estimator) not in ESTIMATORS:
        fail(f"holds {type(scaler).__name__} -> {type(estimator).__name__}")
    width = _int(getattr(scaler, "n_features_in_", None))
    if width is None or width < 1:
        fail("its scaler was never fitted")
    for name in ("mean_", "scale_", "var_"):
        value = getattr(scaler, name, None)
        if value is not None and np.shape(value) != (width,):
            fail(f"its scaler's {name} does not have {width} values")
    try:
        _check_estimator(estimator, width)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        fail(str(exc))


def _int(value):
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def _check_estimator(est, width: int):
    if _int(getattr(est, "n_features_in_", None)) != width:
        raise ValueError(f"{type(est).__name__} was not fitted on the scaler's {width} features")
    if isinstance(est, MultiOutputRegressor):
        for inner in _list(est, "estimators_"):
            _check_estimator(inner, width)
    elif isinstance(est, CalibratedClassifierCV):
        for calibrated in _list(est, "calibrated_classifiers_"):
            _check_estimator(calibrated.estimator, width)
    elif isinstance(est, (RandomForestRegressor, RandomForestClassifier)):
        for tree in _list(est, "estimators_"):
            if _int(getattr(tree, "n_features_in_", None)) != width:
                raise ValueError("a tree was fitted on another number of features")
            check_tree(tree.tree_, width, _int(getattr(est, "n_outputs_", None)))
    elif isinstance(est, (KNeighborsRegressor, KNeighborsClassifier)):
        _rebuild_neighbour_index(est, width)
    elif isinstance(est, (SVR, SVC)):
        _check_svm(est, width)
    elif not hasattr(est, "coef_"):
        raise ValueError(f"its {type(est).__name__} was never fitted")


def _list(est, name):
    value = getattr(est, name, None)
    if not isinstance(value, list) or not value:
        raise ValueError(f"its {type(est).__name__} has no fitted {name}")
    return value


def check_tree(tree, width: int, n_outputs: int | None):
    """A decision tree's node arrays: children after their parent (so every walk ends) and
    inside the node array, each node reached once, split features inside the input."""
    from sklearn.tree._tree import Tree

    if type(tree) is not Tree:
        raise ValueError("a tree is not a scikit-learn Tree")
    state = tree.__getstate__()
    nodes, values, count = state["nodes"], state["values"], int(state["node_count"])
    if len(nodes) != count or values.shape[0] != count or count < 1:
        raise ValueError("a tree's arrays disagree on its node count")
    if n_outputs is not None and values.shape[1] != n_outputs:
        raise ValueError("a tree has another number of outputs than its forest")
    left, right = nodes["left_child"].astype(np.int64), nodes["right_child"].astype(np.int64)
    feature, index = nodes["feature"].astype(np.int64), np.arange(count)
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        raise ValueError("a tree node has one child")
    inner = ~leaf
    if np.any((left[inner] <= index[inner]) | (right[inner] <= index[inner])
              | (left[inner] >= count) | (right[inner] >= count)):
        raise ValueError("a tree's child index points outside it or back up the tree")
    if np.any((feature[inner] < 0) | (feature[inner] >= width)):
        raise ValueError(f"a tree splits on a feature outside the input's {width}")
    children = np.concatenate([left[inner], right[inner]])
    if len(np.unique(children)) != len(children) or len(children) != count - 1:
        raise ValueError("a tree's nodes are not each reached exactly once")


def _rebuild_neighbour_index(est, width: int):
    """The KD/ball tree's index arrays are trusted by its query code: rebuild it from the
    training points (the same points give the same index) instead of reading it."""
    points = np.asarray(getattr(est, "_fit_X", None))
    targets = np.asarray(getattr(est, "_y", None))
    if points.ndim != 2 or points.shape[1] != width or points.dtype.kind != "f" or not len(points):
        raise ValueError("its neighbour search holds no training points of the right width")
    if len(targets) != len(points):
        raise ValueError("its neighbour targets do not match its training points")
    if est._fit_method in ("kd_tree", "ball_tree"):
        from sklearn.neighbors import BallTree, KDTree

        index = KDTree if est._fit_method == "kd_tree" else BallTree
        if est.effective_metric_ != "euclidean":
            raise ValueError("its neighbour search uses a metric fit-head never sets")
        est._tree = index(points, leaf_size=int(est.leaf_size), metric="euclidean")
    elif est._fit_method == "brute":
        est._tree = None
    else:
        raise ValueError(f"unknown neighbour search {est._fit_method!r}")


def _check_svm(est, width: int):
    """libsvm indexes its support vectors by the stored counts: they must add up."""
    vectors = np.asarray(est.support_vectors_)
    n_support, dual = np.asarray(est._n_support), np.asarray(est._dual_coef_)
    if est.kernel not in SVM_KERNELS:
        raise ValueError(f"its SVM kernel {est.kernel!r} is not one fit-head uses")
    if vectors.ndim != 2 or vectors.shape[1] != width or tuple(est.shape_fit_)[1:] != (width,):
        raise ValueError("its support vectors are not of the input's width")
    n_sv = vectors.shape[0]
    if isinstance(est, SVC):
        n_classes = len(est.classes_)
        pairs = n_classes * (n_classes - 1) // 2
        if len(n_support) != n_classes or n_support.sum() != n_sv or np.any(n_support < 0) \
                or dual.shape != (n_classes - 1, n_sv) or np.shape(est._intercept_) != (pairs,) \
                or len(est._probA) not in (0, pairs) or len(est._probB) not in (0, pairs):
            raise ValueError("its SVM's support-vector counts and coefficients disagree")
    elif len(n_support) != 2 or np.any(n_support < 0) or np.any(n_support > n_sv) \
            or dual.shape != (1, n_sv) or np.shape(est._intercept_) != (1,):
        raise ValueError("its SVM's support-vector counts and coefficients disagree")
    if len(est.support_) != n_sv:
        raise ValueError("its SVM's support indices disagree with its vectors")
    # SVR predictions are computed from these directly (heads.kernels): numbers, all of them
    intercept = np.asarray(est._intercept_)
    if not all(np.issubdtype(a.dtype, np.number) and np.isfinite(a).all()
               for a in (vectors, dual, intercept)):
        raise ValueError("its SVM's vectors or coefficients are not finite numbers")
    gamma = getattr(est, "_gamma", None)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)) \
            or not np.isfinite(gamma) or gamma < 0:
        raise ValueError("its SVM's gamma is not a finite non-negative number")
