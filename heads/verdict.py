"""Intervals and the plain-words verdict: does the language model beat the baseline?

Every interval is a paired bootstrap over test samples: the same resampled samples score the
model and the baseline, so their difference carries the pairing (both see the same hard and
easy samples). The model and the baseline are each the best of their kind *on validation*;
test scores only ever describe them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cache.safe_io import inside, read_csv, write_csv

N_BOOT = 2000
BASELINE_FEATURES = ("kmer", "kmer-delta")  # feature sets that are baselines, not language-model embeddings
BASELINE_HEADS = ("cnn",)


def is_baseline(features: str, head: str) -> bool:
    return features in BASELINE_FEATURES or head in BASELINE_HEADS


def main_metric(task: str) -> tuple[str, str]:
    """(metric key in the leaderboard, words) that ranks rows: higher is better for both."""
    return ("pearson", "Pearson r") if task == "regression" else ("accuracy", "accuracy")


def _pearson_rows(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson r of each row of (B, n) arrays."""
    t = true - true.mean(axis=1, keepdims=True)
    p = pred - pred.mean(axis=1, keepdims=True)
    denom = np.sqrt((t * t).sum(axis=1) * (p * p).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (t * p).sum(axis=1) / denom, np.nan)


def metric_on(table: pd.DataFrame, task: str, index: np.ndarray | None = None) -> np.ndarray:
    """The main metric of a prediction table (columns true_<t>, pred_<t>), on resampled row
    indices `index` (B, n) or once on all rows. Several targets: the mean over targets."""
    targets = [c[5:] for c in table.columns if c.startswith("true_")]
    if index is None:
        index = np.arange(len(table))[None]
    scores = []
    for t in targets[: 1 if task == "classification" else None]:
        true, pred = table[f"true_{t}"].to_numpy(), table[f"pred_{t}"].to_numpy()
        if task == "regression":
            scores.append(_pearson_rows(true.astype(float)[index], pred.astype(float)[index]))
        else:
            scores.append((true.astype(str)[index] == pred.astype(str)[index]).mean(axis=1))
    return np.mean(scores, axis=0)


@dataclass
class Interval:
    estimate: float
    low: float
    high: float

    def __str__(self):
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame | None, task: str, n_boot: int = N_BOOT,
                     seed: int = 0) -> tuple[Interval, Interval | None]:
    """95% percentile intervals of a's main metric and of (a - b), on the test samples both
    tables share (joined on id)."""
    if b is not None:
        a, b = (t.set_index("id") for t in (a, b))
        shared = a.index.intersection(b.index)
        a, b = a.loc[shared].reset_index(), b.loc[shared].reset_index()
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(a), size=(n_boot, len(a)))
    boot_a = metric_on(a, task, index)
    point_a = float(metric_on(a, task)[0])
    own = Interval(point_a, *np.nanpercentile(boot_a, [2.5, 97.5]))
    if b is None:
        return own, None
    diff = boot_a - metric_on(b, task, index)
    point = point_a - float(metric_on(b, task)[0])
    return own, Interval(point, *np.nanpercentile(diff, [2.5, 97.5]))


def verdict_sentence(model: str, baseline: str, diff: Interval, words: str) -> str:
    """'best embedding head (mean/mlp3) vs best baseline (kmer/ridge): +0.04 difference in
    Pearson r (a difference, not a correlation), 95% CI
    [-0.01, 0.09]: not a clear win' (both chosen on validation)."""
    if diff.low > 0:
        call = "the embeddings win"
    elif diff.high < 0:
        call = "the baseline wins"
    else:
        call = "not a clear win either way"
    return (f"best embedding head ({model}) vs best baseline ({baseline}), both chosen on "
            f"validation: {diff.estimate:+.3f} difference in {words} on test, 95% CI [{diff.low:+.3f}, "
            f"{diff.high:+.3f}]: {call}")


def run_verdict(out: str | Path, board: pd.DataFrame, task: str) -> dict:
    """Intervals for every leaderboard row and the verdict, from the stored test predictions."""
    out = Path(out)
    key, words = main_metric(task)
    tables = {}
    for row in board.itertuples():
        path = inside(out, f"{row.features}/{row.head}/test_predictions.csv")
        if path.exists():
            tables[(row.features, row.head)] = read_csv(path)
    val_key = f"val_{key}"
    ranked = board.sort_values(val_key, ascending=False) if val_key in board else board
    model = next(((r.features, r.head) for r in ranked.itertuples()
                  if not is_baseline(r.features, r.head) and (r.features, r.head) in tables), None)
    base = next(((r.features, r.head) for r in ranked.itertuples()
                 if is_baseline(r.features, r.head) and (r.features, r.head) in tables), None)
    intervals, diffs = {}, {}
    for name, table in tables.items():
        other = tables.get(base) if base and name != base else None
        intervals[name], diffs[name] = paired_bootstrap(table, other, task)
    sentence = None
    if model and base:
        sentence = verdict_sentence("/".join(model), "/".join(base), diffs[model], words)
    return {"metric": words, "intervals": intervals, "vs_baseline": diffs, "model": model,
            "baseline": base, "sentence": sentence}


def annotate_board(out: str | Path, board: pd.DataFrame, task: str) -> dict:
    """Add each row's 95% interval of its test metric and of its difference to the best
    baseline to OUT/leaderboard.csv; returns the verdict."""
    key, _ = main_metric(task)
    columns = {f"test_{key}_low": [], f"test_{key}_high": [], "vs_baseline": [],
               "vs_baseline_low": [], "vs_baseline_high": []}
    board = board.drop(columns=[c for c in columns if c in board])  # stale: the rows changed
    verdict = run_verdict(out, board, task)
    for row in board.itertuples():
        own = verdict["intervals"].get((row.features, row.head))
        diff = verdict["vs_baseline"].get((row.features, row.head))
        columns[f"test_{key}_low"].append(own.low if own else np.nan)
        columns[f"test_{key}_high"].append(own.high if own else np.nan)
        for name, attr in (("vs_baseline", "estimate"), ("vs_baseline_low", "low"),
                           ("vs_baseline_high", "high")):
            columns[name].append(getattr(diff, attr) if diff else np.nan)
    write_csv(board.assign(**columns), Path(out) / "leaderboard.csv")
    return verdict
