"""The splice-delta study as one script: every rung of the ladder on MaPSy, one table.

Rungs, cheapest first, all on one fixed split (fit-head's seeded 80/10/10 of the pairs with a
finite label, --seed 42) and each scored on the same test pairs with a 95% bootstrap interval:
  zero-shot    the language model's own scores (site and window LLR, allele distances), no
               training; the sign of each score is chosen on validation
  frozen       heads on cached delta features (tuned on validation), one embed for all
  finetune u0  the head trained through the frozen backbone, from raw pairs
  finetune uN  the last N blocks unfrozen (--unfreeze), encoder lr = head lr x 0.1
  baselines    k-mer counts (alt - ref, ref) with the same heads and tuning, and a one-hot CNN

Each target (vivo, vitro) gets its own leaderboard folder and a table with wall times; the
data are read in place. Here (no hub) it runs with the small-32k shape at random init, which
says what the pipeline costs and that a random backbone is no better than the baselines; with
the hub reachable, drop --random-init for the users' experiment.

    PYTHONPATH=. python benchmarks/bench_splice_study.py --model small-32k --random-init \\
        --out /tmp/splice_study
"""
from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from heads.finetune import FinetuneOptions, finetune
from heads.fit import FitOptions, fit_heads
from heads.verdict import annotate_board
from heads.zeroshot import zero_shot_rows
from hyena_embed import cpu
from hyena_embed.loading import load_model
from hyena_embed.runner import EmbedOptions, run_embed
from hyena_embed.variants import PairReport, pair_records, pair_table, pairs_from_table
from hyena_embed.zeroshot import score_pairs

TARGETS = ("log2_vivo_ratio", "log2_vitro_ratio")


def main():
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(here.parent / "shared/data/mapsy_splicing/mapsy.txt"))
    ap.add_argument("--model", default="small-32k")
    ap.add_argument("--random-init", action="store_true", help="random weights (no hub here)")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--heads", nargs="+", default=["ridge", "mlp3", "lightgbm"],
                    help="frozen heads on delta-mean (fit-head --head)")
    ap.add_argument("--baselines", nargs="*", default=["kmer", "cnn"])
    ap.add_argument("--unfreeze", nargs="+", default=["0", "2"])
    ap.add_argument("--epochs", type=int, default=4, help="finetune epochs (early stopping on val)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--features", default="delta-mean+delta-site",
                    help="finetune pair features (fit-head's names)")
    ap.add_argument("--strands", default="both", choices=["both", "+"])
    ap.add_argument("--limit", type=int, help="first N pairs only (a quick look)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="/tmp/splice_study")
    args = ap.parse_args()
    cpu.keep_freed_memory()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, random_init=args.random_init)
    report = PairReport()
    pairs = list(pairs_from_table(args.data, "WT_SEQ", "MUT_SEQ", "ID", TARGETS, report=report))
    pairs = pairs[: args.limit] if args.limit else pairs
    print(report.line() + (" (RANDOM weights)" if loaded.random_init else ""))

    started = time.perf_counter()
    scores = score_pairs(loaded, pairs, args.strands, args.device)
    zero_shot_s = time.perf_counter() - started
    started = time.perf_counter()
    cache = out / "mapsy.zarr"
    shutil.rmtree(cache, ignore_errors=True)
    run_embed(loaded, lambda: pair_records(pairs), str(cache),
              EmbedOptions(pools=("mean",), site_window=5, dtype="float32", device=args.device),
              label_names=TARGETS, pairs=pair_table(pairs), progress=False)
    embed_s = time.perf_counter() - started
    print(f"zero-shot scores {zero_shot_s:.0f} s, embedding {2 * len(pairs)} windows {embed_s:.0f} s")

    tables = []
    for target in args.targets:
        board_dir = out / target
        shutil.rmtree(board_dir, ignore_errors=True)
        walls = {}
        labels = [p.labels[target] for p in pairs]
        zero_shot_rows(board_dir, [p.id for p in pairs], scores, labels, target, args.seed)
        walls["zero-shot"] = zero_shot_s
        board = fit_heads(str(cache), str(board_dir), FitOptions(
            heads=args.heads, feature_sets=[["delta-mean"]], labels=[target], task="regression",
            seed=args.seed, baseline=list(args.baselines), kmer_max_k=4, plots=False,
            device=args.device))
        for row in board.itertuples():  # fit-head's own seconds, plus the shared embed for ours
            walls[(row.features, row.head)] = row.fit_seconds + (embed_s if row.features == "delta-mean" else 0)
        for unfreeze in args.unfreeze:
            options = FinetuneOptions(labels=[target], task="regression", head="mlp3",
                                      unfreeze=unfreeze, epochs=args.epochs,
                                      batch_size=args.batch_size, patience=3, seed=args.seed,
                                      features=args.features.split("+"), device=args.device,
                                      plots=False)
            began = time.perf_counter()
            row = finetune(loaded, None, str(board_dir), options, pairs=pairs, progress=False,
                           say=lambda m: None)
            walls[(row["features"], row["head"])] = time.perf_counter() - began
        verdict = annotate_board(board_dir, pd.read_csv(board_dir / "leaderboard.csv"), "regression")
        board = pd.read_csv(board_dir / "leaderboard.csv")
        print(f"\n## {target}: {verdict['sentence']}")
        table = _study_table(board, walls, target)
        print(table.to_string(index=False))
        table.to_csv(out / f"study_{target}.csv", index=False)
        tables.append(table)
    pd.concat(tables).to_csv(out / "study.csv", index=False)
    print(f"\nmachine: {platform.processor() or platform.machine()}, model {args.model}"
          f"{' (random init)' if loaded.random_init else ''}; tables in {out}/study*.csv")


def _rung(features: str, head: str) -> str:
    if features == "zero-shot":
        return "zero-shot"
    if features.startswith("finetune-"):
        return f"finetune u{features.rsplit('-u', 1)[1]}"
    if features in ("kmer", "sequence"):
        return "baseline"
    return "frozen"


def _study_table(board: pd.DataFrame, walls: dict, target: str) -> pd.DataFrame:
    rows = []
    for r in board.itertuples():
        ci = (f"[{r.test_pearson_low:.3f}, {r.test_pearson_high:.3f}]"
              if hasattr(r, "test_pearson_low") and np.isfinite(r.test_pearson_low) else "")
        wall = walls.get("zero-shot") if r.features == "zero-shot" else walls.get((r.features, r.head))
        rows.append({"target": target.split("_")[1], "rung": _rung(r.features, r.head),
                     "features": r.features, "head": r.head,
                     "val r": r.val_pearson, "test r": r.test_pearson, "test r 95% CI": ci,
                     "test spearman": r.test_spearman,
                     # a zero-shot score is on its own scale: its MAE to the label means nothing
                     "test MAE": np.nan if r.features == "zero-shot" else r.test_mae,
                     "wall s": None if wall is None else round(wall, 1)})
    order = {"zero-shot": 0, "baseline": 1, "frozen": 2}
    table = pd.DataFrame(rows)
    table["_o"] = [order.get(k, 3) for k in table["rung"]]
    return table.sort_values(["_o", "rung", "val r"], ascending=[True, True, False]) \
        .drop(columns="_o").round(3)


if __name__ == "__main__":
    main()
