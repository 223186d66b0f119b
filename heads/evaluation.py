"""Scoring a head on the fixed split as every stage scores it (fit-head, finetune, zero-shot),
and the leaderboard they share."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cache.safe_io import DamagedFileError, read_csv, write_csv

from .data import Supervised
from .metrics import classification_metrics, regression_metrics


def group_mean(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average rows sharing a key (packs of one sample); keys in first-seen order."""
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    values = np.asarray(values, dtype=float)
    flat = values.reshape(len(values), -1)
    sums = np.zeros((len(unique), flat.shape[1]))
    np.add.at(sums, inverse.ravel(), flat)
    means = sums / np.bincount(inverse.ravel(), minlength=len(unique))[:, None]
    order = np.argsort(first, kind="stable")
    return unique[order], means[order].reshape((len(unique), *values.shape[1:]))


TRAIN_SCORED = 5_000  # the training split is scored on at most this many samples (seeded)


def scored_mask(data: Supervised, split: str, limit: int | None = None) -> np.ndarray:
    """The split's rows, or those of a seeded subset of `limit` of its samples (packs stay
    whole). Training metrics only show fit and overfitting: 5,000 samples say it as well as
    14,000, and k-NN or a kernel SVM scoring every training row cost more than their fit."""
    mask = data.mask(split)
    samples = np.unique(data.groups[mask])
    if limit is None or len(samples) <= limit:
        return mask
    chosen = np.random.default_rng(0).choice(samples, limit, replace=False)
    return mask & np.isin(data.groups, chosen)


class FixedPredictions:
    """`evaluate` takes an estimator; this one answers from predictions computed elsewhere (a
    fine-tuned model, zero-shot scores): X is a column of row indices."""

    def __init__(self, pred, proba=None, classes=None):
        self.pred, self.proba, self.classes_ = pred, proba, classes

    def predict(self, X):
        return self.pred[np.asarray(X)[:, 0]]

    def predict_proba(self, X):
        return self.proba[np.asarray(X)[:, 0]]


def score(task, y_true, pred, proba, classes, target_names, threshold=None):
    if task == "regression":
        return regression_metrics(y_true, pred, target_names, threshold)
    return classification_metrics(y_true, pred, proba, classes)


def evaluate(head, X, data: Supervised, split: str, threshold: float | None = None,
             limit: int | None = None):
    """Metrics on one split (on a seeded subset of `limit` samples when it has more: the
    metrics then say how many samples of how many), per sample when packed, and the
    prediction table."""
    mask = scored_mask(data, split, limit)
    pred = head.predict(X[mask])
    proba = head.predict_proba(X[mask]) if data.task == "classification" else None
    keys = data.groups[mask]
    table = pd.DataFrame({"id": data.ids[mask], "group": keys})
    y = data.y[mask]
    classes = getattr(head, "classes_", None)
    if np.any(keys != data.ids[mask]):  # packs: average over each sample's rows
        if data.task == "regression":
            samples, pred = group_mean(keys, np.asarray(pred).reshape(len(keys), -1))
            _, y = group_mean(keys, np.asarray(y, float).reshape(len(keys), -1))
            pred, y = pred.squeeze(1) if pred.shape[1] == 1 else pred, y.squeeze(1) if y.shape[1] == 1 else y
        else:
            samples, proba = group_mean(keys, proba)
            pred = classes[proba.argmax(axis=1)]
            y = data.y[mask][np.sort(np.unique(keys, return_index=True)[1])]  # first-seen order
        table = pd.DataFrame({"id": samples})
    metrics = score(data.task, y, pred, proba, classes, data.target_names, threshold)
    if limit is not None and mask.sum() < data.mask(split).sum():
        metrics["scored_samples"] = len(table)
        metrics["of_samples"] = len(np.unique(data.groups[data.mask(split)]))
    y2, p2 = np.asarray(y).reshape(len(table), -1), np.asarray(pred).reshape(len(table), -1)
    for t, name in enumerate(data.target_names if data.task == "regression" else data.target_names[:1]):
        table[f"true_{name}"] = y2[:, t]
        table[f"pred_{name}"] = p2[:, t]
    if proba is not None:
        for c, cls in enumerate(classes):
            table[f"proba_{cls}"] = proba[:, c]
    return metrics, table


def update_leaderboard(out: str, rows: list[dict], task: str, split_fingerprint: str) -> pd.DataFrame:
    """Merge rows into OUT/leaderboard.csv (a rerun of a (features, head) pair replaces its
    row), so fit-head and finetune results on one task sit in one table, best first. Rows on
    another split (other samples in train, validation or test) never join a board."""
    path = Path(out) / "leaderboard.csv"
    board = pd.DataFrame(rows).assign(split=split_fingerprint)
    old = check_board_split(out, split_fingerprint)
    if old is not None:
        if {"features", "head"} <= set(old.columns):
            fresh = set(zip(board["features"], board["head"]))
            old = old[[pair not in fresh for pair in zip(old["features"], old["head"])]]
            board = pd.concat([old, board], ignore_index=True)
    # ranked by validation, never by test (test scores describe the choice, they never make it)
    key = "val_pearson" if task == "regression" else "val_accuracy"
    if key in board:
        board = board.sort_values(key, ascending=False, na_position="last")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_csv(board, path)  # atomic: a cut-off write never leaves half a board
    return board


def read_board(path: str | Path) -> pd.DataFrame:
    """OUT/leaderboard.csv as this tool wrote it; DamagedFileError names a damaged one."""
    board = read_csv(path, dtype={"split": str, "features": str, "head": str})
    if board.empty or not {"features", "head"} <= set(board.columns):
        raise DamagedFileError(f"{path} is damaged (no rows, or no features/head columns); "
                               "rerun fit-head into a new --out")
    return board


def check_board_split(out: str | Path, split_fingerprint: str) -> pd.DataFrame | None:
    """OUT's board (None when it has none), refusing one that holds results on another split.
    Called before a run trains, so a refused run has written nothing."""
    path = Path(out) / "leaderboard.csv"
    if not (path.exists() or path.is_symlink()):
        return None
    old = read_board(path)
    theirs = set(old["split"].dropna()) if "split" in old else {"unrecorded"}
    if theirs != {split_fingerprint}:
        raise ValueError(
            f"{path} holds results on another split ({', '.join(sorted(theirs))}; this run: "
            f"{split_fingerprint}): other samples are in train, validation or test, so the "
            "scores are not comparable. Use another --out, or the same labels, --seed, "
            "--split-col and --test-ids")
    return old
