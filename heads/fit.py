"""fit-head: every requested head on one fixed split, per feature set, into one leaderboard.

Each run writes into OUT/<features>/<head>/: the fitted model, config.json (enough to
reproduce and to refuse a mismatched cache later), metrics.json, test_predictions.csv (per
sample when rows are packs), training_log.csv for torch heads, and PNG plots.
OUT/leaderboard.csv holds one row per (features, head).
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cache.store import Cache
from .data import Supervised, features, load_supervised
from .baselines import choose_kmer_variant, pinned_scale
from .evaluation import TRAIN_SCORED, check_board_split, evaluate, update_leaderboard
from .registry import head_names, make_head
from .runs import finish_run, one_writer
from .verdict import BASELINE_FEATURES
from .saving import save_head
from .tuning import GRID_KEYS, RIDGE_ALPHAS, candidates, elasticnet_alpha_max, ridge_path_losses, select
from .torch_mlp import TorchMLPHead
from cache.safe_io import write_csv, write_json


@dataclass
class FitOptions:
    heads: list[str]
    feature_sets: list[list[str]]  # each a list of pooled methods (or 'kmer') to concatenate
    labels: list[str]
    task: str | None = None
    labels_file: str | None = None
    id_col: str = "id"
    test_ids: str | None = None
    split_col: str | None = None
    seed: int = 42
    baseline: list[str] = field(default_factory=list)  # kmer: heads on k-mer counts; cnn: one-hot CNN
    kmer_max_k: int = 6
    epochs: int = 100
    loss: str = "smoothl1"
    device: str = "auto"
    plots: bool = True
    cv: int | None = None  # k-fold cross-validation over samples, beside the fixed split
    head_params: dict = field(default_factory=dict)  # pinned grids, heads.tuning.parse_head_params
    threshold: float | None = None  # regression: also ROC/PR-AUC of |pred| vs |truth| > T
    time_budget: float | None = None  # seconds for the whole run; later heads are skipped
    full_grid: bool = False  # torch grids searched whole instead of by successive halving


# the cache settings that change embedding values: predict refuses a cache that differs in any
VALUE_SETTINGS = ("model", "weights_sha256", "modulation_shift", "layer", "tokenizer", "precision",
                  "dtype", "rc", "packs", "window", "center_window", "site_window")


def _cache_identity(cache: Cache) -> dict:
    a = cache.attrs
    settings = a.get("settings", {})
    return {"cache": str(cache.path), "model": a.get("model"), "weights_sha256": a.get("weights_sha256"),
            "layer": a.get("layer"), "d_model": a.get("d_model"), "random_init": a.get("random_init"),
            "tokenizer": a.get("tokenizer"),
            "cache_settings": {k: settings.get(k) for k in VALUE_SETTINGS if k in settings}}


def check_classes(data: Supervised) -> str:
    """Class counts per split; a class the training split never shows is an error (no head
    can predict it, and its metrics would be meaningless)."""
    classes = np.unique(data.y.astype(str))
    counts = {s: {c: int((data.y[data.mask(s)].astype(str) == c).sum()) for c in classes}
              for s in ("train", "val", "test")}
    unseen = [c for c in classes if counts["train"][c] == 0]
    if unseen:
        where = {c: [s for s in ("val", "test") if counts[s][c]] for c in unseen}
        raise ValueError("class(es) missing from the training split: " + "; ".join(
            f"'{c}' only in {'/'.join(w)}" for c, w in where.items())
            + ". Merge rare classes, drop those rows, or choose a split (--seed, --split-col) "
            "that puts some in train")
    return ", ".join(f"{c}: {counts['train'][c]}/{counts['val'][c]}/{counts['test'][c]}" for c in classes)


def fit_tuned(head_name, X, y, X_val, y_val, task: str, options: FitOptions,
              ridge_path: np.ndarray | None = None):
    """The head with its hyperparameters chosen on (X_val, y_val): (head, chosen, tried).
    `ridge_path`: ridge's validation losses per (RIDGE_ALPHAS, target) on exactly these rows,
    when already computed (the k-mer variant choice), for ridge at the default alphas."""
    def make(params):
        return make_head(head_name, task, multi_output=np.ndim(y) > 1, seed=options.seed,
                         device=options.device, epochs=options.epochs, loss=options.loss,
                         params=params)

    grid = candidates(head_name, options.head_params)
    if head_name == "elasticnet" and "alpha" not in options.head_params.get("elasticnet", {}):
        # the grid's alphas are fractions of this table's alpha_max (tuning.GRIDS), one
        # alpha_max per (scale, l1_ratio): each is a pass over the whole table
        maxima = {key: elasticnet_alpha_max(X, y, *key)
                  for key in {(g.get("scale") or "standard", g["l1_ratio"]) for g in grid}}
        grid = [{**g, "alpha": g["alpha"] * maxima[g.get("scale") or "standard", g["l1_ratio"]]}
                for g in grid]
    if head_name == "ridge" and len(grid) > 1:
        # the whole alpha path from one tridiagonalisation (RidgePath); alpha chosen per target
        alphas, scale = [g["alpha"] for g in grid], grid[0].get("scale")
        if ridge_path is not None and alphas == list(RIDGE_ALPHAS):
            losses = ridge_path
        else:
            losses = ridge_path_losses(X, y, X_val, y_val, alphas, scale=scale or "standard")
        best = [alphas[i] for i in losses.argmin(axis=0)]
        chosen = {"alpha": best[0] if len(best) == 1 else best, **({"scale": scale} if scale else {})}
        tried = [{"alpha": a, "val_mse": [float(v) for v in row]} for a, row in zip(alphas, losses)]
        return make(chosen).fit(X, y, X_val, y_val), chosen, tried
    return select(make, grid, X, y, X_val, y_val, task, full_grid=options.full_grid)


def fit_one(head_name, X, data: Supervised, options: FitOptions, directory: Path,
            feature_set: list[str], identity: dict, say=print,
            ridge_path: np.ndarray | None = None) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    train, val = data.mask("train"), data.mask("val")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # summarised in one line, not a flood
        warnings.simplefilter("always")
        head, chosen, tried = fit_tuned(head_name, X[train], data.y[train], X[val], data.y[val],
                                        data.task, options, ridge_path)
    seconds = time.perf_counter() - start
    warned = warning_summary(caught)
    metrics = {}
    for split in ("train", "val", "test"):
        metrics[split], table = evaluate(head, X, data, split, options.threshold,
                                         TRAIN_SCORED if split == "train" else None)
    write_csv(table, directory / "test_predictions.csv")
    metrics["fit_seconds"] = seconds
    write_json(directory / "metrics.json", metrics)
    if isinstance(head, TorchMLPHead):
        write_csv(pd.DataFrame(head.history_), directory / "training_log.csv")
    model_file = save_head(head, directory)  # no pickle: see heads.saving
    config = {"head": head_name, "params": {k: str(v) for k, v in head.get_params().items()},
              "features": feature_set, "labels": data.target_names, "task": data.task,
              "seed": options.seed, "labels_file": options.labels_file, "id_col": options.id_col,
              "test_ids": options.test_ids, "split_col": options.split_col,
              "kmer_max_k": options.kmer_max_k, "model_file": model_file,
              "full_grid": options.full_grid,
              "chosen": chosen, "grid": [{k: v for k, v in row.items() if k in GRID_KEYS}
                                         for row in tried],
              "validation_losses": tried,
              "n": {s: int(data.mask(s).sum()) for s in ("train", "val", "test")},
              "warnings": warned, "n_fit_rows": getattr(head, "n_fit_rows_", None), **identity}
    write_json(directory / "config.json", config, default=str)
    if options.plots:
        from .plots import plot_run

        plot_run(directory, data.task, data.target_names, getattr(head, "history_", None),
                 run=f"{'+'.join(feature_set)} / {head_name}", metrics=metrics["test"],
                 best_epoch=getattr(head, "best_epoch_", None))
    if getattr(head, "n_fit_rows_", None) not in (None, int(train.sum())):
        say(f"  note: {head_name} trained on a seeded subset of {head.n_fit_rows_:,} of "
            f"{int(train.sum()):,} training rows (kernel SVMs cost rows squared)")
    if warned:
        say(f"  note: the fits of {'+'.join(feature_set)} / {head_name} warned: {warned} "
            "(config.json keeps it)")
    return {"features": "+".join(feature_set), "head": head_name, "fit_seconds": round(seconds, 3),
            "chosen": json.dumps(chosen), "n_candidates": len(tried),
            **{f"{split}_{k}": v for split in ("val", "test") for k, v in metrics[split].items()
               if isinstance(v, (int, float))}}


def cross_validate(head_name, X, data: Supervised, options: FitOptions, say=print) -> dict:
    """k folds over samples (packs stay together); each fold's training groups lend 10% to
    validation for early stopping. Returns mean and std of each test metric over folds."""
    from sklearn.model_selection import GroupKFold

    per_fold = []
    for fold, (fit_rows, test_rows) in enumerate(GroupKFold(n_splits=options.cv).split(X, groups=data.groups)):
        rng = np.random.default_rng(options.seed + fold)
        fit_groups = np.unique(data.groups[fit_rows])
        val_groups = set(rng.choice(fit_groups, size=max(1, len(fit_groups) // 10), replace=False))
        split = np.full(len(X), "unused", dtype=object)
        split[fit_rows] = ["val" if g in val_groups else "train" for g in data.groups[fit_rows]]
        split[test_rows] = "test"
        fold_data = replace(data, split=split)
        train, val = fold_data.mask("train"), fold_data.mask("val")
        head, _, _ = fit_tuned(head_name, X[train], data.y[train], X[val], data.y[val], data.task,
                               options)  # tuned inside the fold's training groups
        metrics, _ = evaluate(head, X, fold_data, "test")
        per_fold.append({k: v for k, v in metrics.items() if isinstance(v, float)})
        key = "pearson" if data.task == "regression" else "accuracy"
        say(f"    cv fold {fold + 1}/{options.cv}: test {key} {metrics.get(key, float('nan')):.4f}")
    keys = per_fold[0].keys()
    return {**{f"cv_{k}_mean": float(np.mean([f[k] for f in per_fold])) for k in keys},
            **{f"cv_{k}_std": float(np.std([f[k] for f in per_fold])) for k in keys}}


def fit_heads(cache_path: str, out: str, options: FitOptions, say=print) -> pd.DataFrame:
    """Every head on every feature set into OUT; returns the leaderboard. One run writes into
    OUT at a time; at the end the command is logged, the board gets its intervals, and the
    verdict sentence is `board.attrs["verdict"]`."""
    with one_writer(out):
        board = _fit_heads(cache_path, out, options, say)
        board.attrs["verdict"] = finish_run(out, board, "regression" if "test_mae" in board
                                            else "classification")
        return board


def _fit_heads(cache_path: str, out: str, options: FitOptions, say) -> pd.DataFrame:
    cache = Cache.open(cache_path)
    data, keep = load_supervised(cache, options.labels, options.task, options.labels_file,
                                 options.id_col, test_ids=options.test_ids,
                                 split_col=options.split_col, seed=options.seed)
    check_board_split(out, data.split_fingerprint())  # a refused run writes nothing
    counts = {s: int(data.mask(s).sum()) for s in ("train", "val", "test")}
    if data.carved_val:
        say(f"--split-col {options.split_col} has no 'val' rows: validation is 10% of the training "
            f"samples, drawn with --seed {options.seed}")
    say(f"{data.task}: {len(data.y)} labelled rows ({data.dropped} without a finite label dropped); "
        f"train/val/test = {counts['train']}/{counts['val']}/{counts['test']} rows, "
        f"{len(np.unique(data.groups))} samples")
    if data.task == "classification":
        say("classes (train/val/test rows): " + check_classes(data))
    heads = head_names(data.task) if options.heads == ["all"] else options.heads
    for h in heads:
        if h == "cnn":
            raise ValueError("cnn is a baseline trained on the sequences: use --baseline cnn")
        if h not in {*head_names("regression"), *head_names("classification")}:
            raise ValueError(f"unknown head {h!r}; choose from {', '.join(head_names(data.task))} or all")
        if h not in head_names(data.task):
            raise ValueError(f"head {h!r} does not do {data.task}; choose from "
                             f"{', '.join(head_names(data.task))} or all")
    default = [["delta-mean"]] if cache.has_pairs else [["mean"]]
    # (feature set, heads, options, facts for config.json, features when already computed,
    # ridge's validation losses on them when already computed)
    runs = [(list(s), heads, options, {}, None, None) for s in (options.feature_sets or default)]
    if "kmer" in options.baseline and not any(s[0] in BASELINE_FEATURES for s, *_ in runs):
        # the same heads, tuned the same way, on the k-mer variant validation prefers
        name, scale, table, counts, path = choose_kmer_variant(cache, keep, data, options.kmer_max_k)
        say(f"k-mer baseline: {name}, {scale} inputs (the best of {len(table)} variants on "
            "validation)")
        runs.append(([name], heads, replace(options, head_params=pinned_scale(
            options.head_params, heads, scale)), {"kmer_variants": table}, counts,
            path if data.task == "regression" else None))
    if "cnn" in options.baseline:
        runs.append((["sequence"], ["cnn"], options, {}, None, None))
    identity = _cache_identity(cache)
    if identity.get("random_init"):
        say(f"WARNING: {cache_path} holds embeddings of a model with RANDOM weights; these "
            "heads say nothing about the pretrained model.")
    rows = []
    n_runs, started, done = sum(len(r[1]) for r in runs), time.perf_counter(), 0
    skipped = []
    for feature_set, run_heads, run_options, facts, X, ridge_path in runs:
        name = "+".join(feature_set)
        if _over_budget(options, started):
            skipped += [f"{name}/{h}" for h in run_heads]
            continue
        X = features(cache, feature_set, options.kmer_max_k)[keep] if X is None else X
        for h in run_heads:
            done += 1
            if _over_budget(options, started):
                skipped.append(f"{name}/{h}")
                continue
            what = "sequences" if feature_set == ["sequence"] else f"{X.shape[1]} features"
            say(f"head {done}/{n_runs}: {name} / {h} on {what} "
                f"[{_clock(time.perf_counter() - started)} elapsed]")
            row = fit_one(h, X, data, run_options, Path(out) / name / h, feature_set,
                          {**identity, **facts}, say, ridge_path)
            if options.cv:
                cv = cross_validate(h, X, data, run_options, say)
                write_json(Path(out) / name / h / "cv_metrics.json", cv)
                row.update(cv)
            rows.append(row)
            say(f"  {name} / {h}: " + _headline(row, data.task))
    if skipped:
        say(f"--time-budget {options.time_budget:g} s spent after {_clock(time.perf_counter() - started)}: "
            f"skipped {len(skipped)} head(s): {', '.join(skipped)}")
    if not rows:
        raise ValueError(f"--time-budget {options.time_budget:g} s left no time for any head; "
                         "give it more seconds")
    return update_leaderboard(out, rows, data.task, data.split_fingerprint())


def warning_summary(caught) -> str:
    """'ConvergenceWarning x3 (Objective did not converge...); LinAlgWarning x1 (...)'."""
    kinds: dict[str, list] = {}
    for item in caught:
        kinds.setdefault(item.category.__name__, []).append(str(item.message).splitlines()[0][:80])
    return "; ".join(f"{name} x{len(messages)} ({messages[0]})" for name, messages in kinds.items())


def _over_budget(options: FitOptions, started: float) -> bool:
    return options.time_budget is not None and time.perf_counter() - started > options.time_budget


def _headline(row: dict, task: str) -> str:
    """Scores with the split they come from: validation (what choices use), then test."""
    keys = ("mae", "r2", "pearson") if task == "regression" else ("accuracy", "roc_auc", "mcc")
    parts = [f"{split} " + " ".join(f"{k}={row[f'{split}_{k}']:.4f}" for k in keys
                                    if f"{split}_{k}" in row) for split in ("val", "test")]
    cv = [f"cv {k}={row[f'cv_{k}_mean']:.4f}+-{row[f'cv_{k}_std']:.4f}" for k in keys[:1]
          if f"cv_{k}_mean" in row]
    return " | ".join([*parts, *cv]) + f"  (fit {row['fit_seconds']:.1f} s)"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
