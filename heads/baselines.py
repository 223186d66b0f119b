"""The k-mer baseline's variant, chosen on validation like any hyperparameter.

A baseline is only as honest as its tuning. On variant pairs the k-mer counts can describe the
change alone (`kmer-delta`: alt - ref) or the change and the reference (`kmer`: [alt - ref,
ref]); the reference block can let a model learn the exon rather than the variant. And
standardising sparse frequencies inflates the rarest k-mers. So each variant (block x scale)
is scored by ridge's validation loss over its whole alpha path (heads.tuning.RidgePath),
and the best one is what every head fits as the baseline. The table of scores goes into each
baseline head's config.json and the report.
"""
from __future__ import annotations

import numpy as np

from cache.store import Cache
from .data import Supervised, features
from .registry import SCALES
from .tuning import RidgePath

SCALE_FREE = ("rf", "lightgbm")  # trees: a split does not see the inputs' scale


def choose_kmer_variant(cache: Cache, keep: np.ndarray, data: Supervised,
                        kmer_max_k: int) -> tuple[str, str, list[dict], np.ndarray, np.ndarray]:
    """(feature name, scale, [{features, scale, val_loss}], its features for the kept rows,
    its ridge validation losses per (alpha in RIDGE_ALPHAS, target)) of the best k-mer variant
    on the validation split; test rows take no part. The losses are what the ridge head's
    tuning would compute again on the same rows (heads.fit hands them on: on 5,460 columns a
    tridiagonalisation costs ~9 s on 2 cores)."""
    full = features(cache, ["kmer"], kmer_max_k)[keep]
    blocks = {"kmer": full}
    if cache.has_pairs:
        blocks = {"kmer-delta": full[:, : full.shape[1] // 2], "kmer": full}
    train, val = data.mask("train"), data.mask("val")
    y = _targets(data)
    scale_y = y[train].var(axis=0) + 1e-12
    table, paths = [], []
    for name, X in blocks.items():
        path = RidgePath(X[train], y[train], X[val], y[val])  # both scales share its Gram matrix
        for scale in SCALES:
            losses = path.losses(scale=scale)
            # each target at its best alpha, in units of its training variance (as fit-head scores)
            table.append({"features": name, "scale": scale,
                          "val_loss": float((losses.min(axis=0) / scale_y).mean())})
            paths.append(losses)
    best = min(range(len(table)), key=lambda i: table[i]["val_loss"])
    row = table[best]
    return row["features"], row["scale"], table, blocks[row["features"]], paths[best]


def _targets(data: Supervised) -> np.ndarray:
    """Regression targets as columns; classes as one-hot columns (a linear probe's targets)."""
    if data.task == "regression":
        return np.asarray(data.y, float).reshape(len(data.y), -1)
    classes, codes = np.unique(np.asarray(data.y).astype(str), return_inverse=True)
    return np.eye(len(classes))[codes]


def pinned_scale(head_params: dict, heads, scale: str) -> dict:
    """--head-param's pins with the chosen scale added for every head it matters to."""
    pins = {h: dict(v) for h, v in (head_params or {}).items()}
    for head in heads:
        if head not in SCALE_FREE:
            pins.setdefault(head, {})["scale"] = [scale]
    return pins
