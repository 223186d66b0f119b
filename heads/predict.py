"""Applying a fitted head to another cache, refusing one made with another model or layer."""
from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cache.store import Cache
from .data import DataError, features
from .fit import group_mean


def predict_cache(head_dir: str, cache_path: str) -> pd.DataFrame:
    directory = Path(head_dir)
    if not (directory / "config.json").exists():
        raise DataError(f"{head_dir} has no config.json: point --head-dir at one head's folder "
                        "(OUT/<features>/<head>)")
    config = json.loads((directory / "config.json").read_text())
    cache = Cache.open(cache_path)
    cache.require_complete()
    attrs = cache.attrs
    for key in ("weights_sha256", "layer", "d_model"):
        if attrs.get(key) != config.get(key):
            raise DataError(f"{cache_path} was made with {key}={attrs.get(key)!r}, the head with "
                            f"{config.get(key)!r}: embed with the same model and layer first")
    if "kmer" not in config["features"] and attrs.get("tokenizer") != config.get("tokenizer"):
        raise DataError(f"{cache_path} used another tokenizer policy than the head's cache")
    head = joblib.load(directory / config["model_file"])
    X = features(cache, config["features"], config.get("kmer_max_k", 6))
    pred = np.asarray(head.predict(X))
    ids, groups = cache.ids.astype(str), cache.groups.astype(str)
    table = pd.DataFrame({"id": ids, "group": groups})
    if config["task"] == "regression":
        pred = pred.reshape(len(ids), -1)
        for t, name in enumerate(config["labels"]):
            table[f"pred_{name}"] = pred[:, t]
        if np.any(ids != groups):  # packs: one averaged prediction per sample
            samples, means = group_mean(groups, pred)
            table = pd.DataFrame({"id": samples, **{f"pred_{n}": means[:, t]
                                                    for t, n in enumerate(config["labels"])}})
    else:
        table[f"pred_{config['labels'][0]}"] = pred
    return table
