"""Zero-shot scores as leaderboard rows, on the split fit-head uses for the same pairs.

A score needs no training, but it needs a direction: the sign is chosen on the validation split
(a score that falls as the label rises is flipped), and the test split only describes it, as
for every trained head. Rows land in OUT/leaderboard.csv under features `zero-shot`, with the
board's split fingerprint, so fit-head's rows on the same pairs sit beside them and a board on
another split refuses them. A score that is undefined for a pair (site_llr of an indel) counts
as 0 there: no evidence either way.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .data import Supervised, assign_split, check_split_sizes
from .evaluation import FixedPredictions, evaluate, update_leaderboard
from cache.safe_io import write_csv, write_json

FEATURES = "zero-shot"


def zero_shot_rows(out: str | Path, ids, scores: dict[str, np.ndarray], labels, target: str,
                   seed: int = 42, threshold: float | None = None) -> pd.DataFrame:
    """Write one leaderboard row (and its test predictions) per score; returns the board."""
    ids = np.asarray(ids).astype(str)
    y = pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy(float)
    keep = np.isfinite(y)  # as fit-head keeps labelled pairs
    split = assign_split(ids[keep], ids[keep], seed, None, None)
    check_split_sizes(split, ids[keep])
    data = Supervised(ids[keep], ids[keep], y[keep], split, "regression", [target],
                      int((~keep).sum()))
    index = np.arange(keep.sum())[:, None]
    rows = []
    for name, values in scores.items():
        x = np.nan_to_num(np.asarray(values, float)[keep], nan=0.0)
        val = data.mask("val")
        r = np.corrcoef(x[val], data.y[val])[0, 1] if np.std(x[val]) > 0 else 0.0
        sign = -1.0 if r < 0 else 1.0
        head = FixedPredictions(sign * x)
        metrics = {}
        for part in ("train", "val", "test"):
            metrics[part], table = evaluate(head, index, data, part, threshold)
        directory = Path(out) / FEATURES / name
        directory.mkdir(parents=True, exist_ok=True)
        write_csv(table, directory / "test_predictions.csv")
        write_json(directory / "metrics.json", metrics)
        write_json(directory / "config.json", {
            "kind": "zero-shot", "head": name, "features": [FEATURES], "labels": [target],
            "task": "regression", "seed": seed, "chosen": {"sign": sign},
            "n": {s: int(data.mask(s).sum()) for s in ("train", "val", "test")}})
        rows.append({"features": FEATURES, "head": name, "fit_seconds": 0.0,
                     "chosen": json.dumps({"sign": sign}), "n_candidates": 2,
                     **{f"{part}_{k}": v for part in ("val", "test") for k, v in metrics[part].items()
                        if isinstance(v, (int, float))}})
    return update_leaderboard(out, rows, "regression", data.split_fingerprint())


def zero_shot_summary(table: pd.DataFrame, label: str, scores, threshold: float | None = None) -> str:
    """Each score against a label over every pair with a finite label (no training: every pair
    is held out): Spearman, Pearson, and with `threshold` AUROC of |score| vs |label| > T."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    y = pd.to_numeric(table[label], errors="coerce").to_numpy(float)
    lines = [f"zero-shot vs {label} (all {int(np.isfinite(y).sum())} pairs with a finite label):"]
    for name in scores:
        x = table[name].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or np.std(x[ok]) == 0:
            lines.append(f"  {name:<12} (not enough values)")
            continue
        text = (f"  {name:<12} spearman {spearmanr(x[ok], y[ok])[0]:+.3f}  "
                f"pearson {pearsonr(x[ok], y[ok])[0]:+.3f}")
        if threshold is not None:
            positive = np.abs(y[ok]) > threshold
            if 0 < positive.sum() < ok.sum():
                text += (f"  AUROC(|score|, |{label}|>{threshold:g}) "
                         f"{roc_auc_score(positive, np.abs(x[ok])):.3f}")
        lines.append(text)
    return "\n".join(lines)
