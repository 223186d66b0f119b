"""Metrics for regression (per target and averaged) and classification."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (accuracy_score, average_precision_score, matthews_corrcoef,
                             mean_absolute_error, mean_squared_error, r2_score, roc_auc_score)


def _corr(fn, a, b) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(fn(a, b)[0])


def effect_detection(y_true, y_pred, threshold: float) -> dict:
    """How well |prediction| ranks the rows whose |truth| exceeds `threshold` (an effect worth
    calling, e.g. a splicing change): ROC-AUC and PR-AUC, as the variant-effect papers report."""
    positive = np.abs(y_true) > threshold
    if positive.all() or not positive.any():
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "n_effects": int(positive.sum())}
    score = np.abs(y_pred)
    return {"roc_auc": float(roc_auc_score(positive, score)),
            "pr_auc": float(average_precision_score(positive, score)), "n_effects": int(positive.sum())}


def regression_metrics(y_true, y_pred, target_names=None, threshold: float | None = None) -> dict:
    """MSE, RMSE, MAE, R2, Pearson, Spearman per target (averaged over several), and with a
    `threshold` ROC-AUC and PR-AUC of |prediction| against |truth| > threshold."""
    y_true = np.asarray(y_true, float).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, float).reshape(len(y_pred), -1)
    per = {}
    for t in range(y_true.shape[1]):
        a, b = y_true[:, t], y_pred[:, t]
        mse = float(mean_squared_error(a, b))
        per[target_names[t] if target_names else str(t)] = {
            "mse": mse, "rmse": mse ** 0.5, "mae": float(mean_absolute_error(a, b)),
            "r2": float(r2_score(a, b)) if len(a) > 1 else float("nan"),
            "pearson": _corr(pearsonr, a, b), "spearman": _corr(spearmanr, a, b), "n": len(a),
            **(effect_detection(a, b, threshold) if threshold is not None else {})}
    if len(per) == 1:
        return next(iter(per.values()))
    keys = ("mse", "rmse", "mae", "r2", "pearson", "spearman",
            *(("roc_auc", "pr_auc") if threshold is not None else ()))
    return {**{k: float(np.mean([m[k] for m in per.values()])) for k in keys},
            "n": len(y_true), "per_target": per}


def classification_metrics(y_true, y_pred, proba=None, classes=None) -> dict:
    out = {"accuracy": float(accuracy_score(y_true, y_pred)),
           "mcc": float(matthews_corrcoef(y_true, y_pred)), "n": len(y_true)}
    if proba is not None and classes is not None and len(np.unique(y_true)) > 1:
        if len(classes) == 2:
            positive = np.asarray(y_true) == classes[1]
            out["roc_auc"] = float(roc_auc_score(positive, proba[:, 1]))
            out["pr_auc"] = float(average_precision_score(positive, proba[:, 1]))
        else:
            onehot = (np.asarray(y_true)[:, None] == np.asarray(classes)[None]).astype(int)
            present = onehot.sum(axis=0) > 0
            out["roc_auc"] = float(roc_auc_score(onehot[:, present], proba[:, present],
                                                 average="macro"))
            out["pr_auc"] = float(average_precision_score(onehot[:, present], proba[:, present],
                                                          average="macro"))
    return out
