"""Stage two's speed.

Default mode: training time of each head on 25,000 x 256 cached features (a planted
linear+nonlinear signal). Torch heads run a fixed 20 epochs (no early stopping), as the target
is stated; LightGBM and the rest as fit-head runs them.

`--table` mode (issue 22): a synthetic 17,667 x 150-nt promoter table with a planted motif
signal and a train/test split column, embedded with a random-weights model, then the real
fit-head (tuning grids on validation, successive halving for torch heads) on the embeddings
and on k-mer counts (k <= 6: 5,460 columns), each head's time printed. Targets on 2 cores:
mlp3 on the k-mers at most 60 s; `--head all --baseline kmer --baseline cnn` at most 5 minutes.
Each head's test r2 is printed beside its time; `--full-grid` trains every torch candidate to
early stopping instead of halving the grid, the reference the halving's results must match
within 0.01 (run both, compare the r2 columns).

`--halving-check` asks the same over several draws of the table (`--seeds`): every candidate
of a torch head's grid on the k-mer counts (raw, the variant fit-head chooses on seed 0) runs
to early stopping once, its validation loss after the first round recorded on the way, so the
halving's pick (the survivors of `heads.tuning.round_one_order`, then the lowest validation
loss) and the full grid's come from the same runs; test r2 of both, and the gap, per seed
and head.

    python benchmarks/bench_heads.py
    python benchmarks/bench_heads.py --n 25000 --d 256 --heads ridge lightgbm
    PYTHONPATH=. python benchmarks/bench_heads.py --table --heads mlp3 --baselines kmer
    PYTHONPATH=. python benchmarks/bench_heads.py --table --heads all --baselines kmer cnn
    PYTHONPATH=. python benchmarks/bench_heads.py --table --heads linear mlp2 mlp3 mlp2_ln --full-grid
    PYTHONPATH=. python benchmarks/bench_heads.py --halving-check --heads mlp3 mlp2 --seeds 0 1 2
    PYTHONPATH=. python benchmarks/bench_heads.py --halving-check --heads mlp3 --seeds 0 --candidates
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from heads.metrics import regression_metrics
from heads.registry import head_names, make_head


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=25_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--heads", nargs="+", default=["linear", "mlp2", "mlp3", "mlp2_ln", "ridge", "lightgbm"])
    parser.add_argument("--table", action="store_true", help="the 17,667 x 150-nt fit-head run")
    parser.add_argument("--baselines", nargs="*", default=["kmer"])
    parser.add_argument("--time-budget", type=float)
    parser.add_argument("--out", default="/tmp/bench_heads_table")
    parser.add_argument("--full-grid", action="store_true",
                        help="--table: fit-head --full-grid (every torch candidate to early stopping, no halving)")
    parser.add_argument("--halving-check", action="store_true",
                        help="halving's pick vs the full grid's over --seeds draws of the table")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--candidates", action="store_true",
                        help="--halving-check: each candidate's round-one loss, rank, epochs and test r2 too")
    args = parser.parse_args()
    if args.halving_check:
        return halving_check(args.heads, args.seeds, args.candidates)
    if args.table:
        return table_mode(args)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, args.d)).astype(np.float32)
    y = X[:, :8] @ rng.normal(size=8) + np.sin(X[:, 8]) + 0.1 * rng.normal(size=args.n)
    n_train, n_val = int(0.8 * args.n), int(0.1 * args.n)
    tr, va, te = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None)
    print(f"{args.n} x {args.d} features, threads={torch.get_num_threads()}, "
          f"cuda={torch.cuda.is_available()}")
    print(f"{'head':<10}{'fit s':>8}{'test r':>9}")
    for name in args.heads:
        if name not in head_names("regression"):
            raise SystemExit(f"unknown head {name}")
        head = make_head(name, "regression", epochs=20)
        if hasattr(head, "patience"):
            head.set_params(patience=10**9)  # exactly 20 epochs
        start = time.perf_counter()
        head.fit(X[tr], y[tr], X[va], y[va])
        seconds = time.perf_counter() - start
        r = regression_metrics(y[te], head.predict(X[te]))["pearson"]
        print(f"{name:<10}{seconds:>8.2f}{r:>9.3f}")


def promoters(seed: int = 0, n: int = 17_667, length: int = 150):
    """The synthetic promoter table: sequences, activity, a 90/10 train/test split column.
    Planted: TATA boxes and GC content raise the activity; noise on top."""
    import re

    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]
    y = [2.0 * len(re.findall("TATAA", s)) + 4.0 * (s.count("G") + s.count("C")) / length
         + rng.normal(0, 0.3) for s in seqs]
    split = np.where(rng.random(n) < 0.9, "train", "test")
    return seqs, y, split


def halving_check(heads: list[str], seeds: list[int], show_candidates: bool = False):
    """Test r2 of the halving's pick and of the full grid's, per seed and torch head; with
    `show_candidates`, every candidate's run (why a pick was missed: a slow starter's rank)."""
    from heads.data import carve_validation, kmer_features
    from heads.tuning import candidates, round_one_epochs, round_one_order, validation_loss

    fit_seed = 42  # fit-head's default --seed: the validation draw and the heads' seeds
    print(f"{'seed':>4}  {'head':<8}{'full grid r2':>13}{'halving r2':>12}{'gap':>8}  seconds "
          "(full grid / halving's survivors, to early stopping)")
    gaps = []
    for seed in seeds:
        seqs, y, split = promoters(seed)
        y = np.asarray(y)
        ids = np.array([f"p{i:05d}" for i in range(len(seqs))])  # as --table writes them
        split = carve_validation(split, ids, fit_seed)  # fit-head's validation draw
        X = kmer_features(seqs, 6).astype(np.float32)
        tr, va, te = (split == s for s in ("train", "val", "test"))
        for name in heads:
            shared, runs = {}, []
            grid = candidates(name, {name: {"scale": ["raw"]}})
            models = [make_head(name, "regression", seed=fit_seed, params=params) for params in grid]
            for params, head, first_round in zip(grid, models, round_one_epochs(models)):
                began = time.perf_counter()
                head.begin(X[tr], y[tr], X[va], y[va], shared)
                head.advance(first_round)
                round_one = head.best_val_loss_
                head.advance(head.epochs)
                fitted = head.end()
                runs.append({"params": params, "round_one": round_one, "best_epoch": head.best_epoch_,
                             "val": validation_loss(fitted, X[va], y[va], "regression", y[tr]),
                             "r2": regression_metrics(y[te], fitted.predict(X[te]))["r2"],
                             "seconds": time.perf_counter() - began})
            order, n_kept = round_one_order([r["round_one"] for r in runs])
            kept = order[:n_kept]
            full = min(range(len(runs)), key=lambda i: runs[i]["val"])
            halved = min(kept, key=lambda i: runs[i]["val"])
            gap = runs[full]["r2"] - runs[halved]["r2"]
            gaps.append(gap)
            print(f"{seed:>4}  {name:<8}{runs[full]['r2']:>13.4f}{runs[halved]['r2']:>12.4f}"
                  f"{gap:>8.4f}  {sum(r['seconds'] for r in runs):.0f} / "
                  f"{sum(runs[i]['seconds'] for i in kept):.0f}", flush=True)
            if show_candidates:
                for rank, i in enumerate(order):
                    run = runs[i]
                    tuned = ", ".join(f"{k}={v}" for k, v in run["params"].items() if k != "scale")
                    print(f"      {tuned:<30} round one {run['round_one']:.5f} (rank {rank + 1}"
                          f"{', kept' if rank < n_kept else ''})  best epoch {run['best_epoch']:>3}  "
                          f"val {run['val']:.4f}  test r2 {run['r2']:.4f}"
                          f"{'  <- full grid' if i == full else ''}{'  <- halving' if i == halved else ''}")
    print(f"gap (full grid - halving) mean {np.mean(gaps):.4f}, max {np.max(gaps):.4f}; within "
          f"0.01: {sum(g <= 0.01 for g in gaps)} of {len(gaps)}")


def table_mode(args):
    import re
    import shutil
    import time as clock
    from pathlib import Path

    import pandas as pd

    from heads.fit import FitOptions, fit_heads
    from hyena_embed.loading import load_model
    from hyena_embed.inputs import record_reader
    from hyena_embed.runner import EmbedOptions, run_embed

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seqs, y, split = promoters(seed=0)
    n, length = len(seqs), len(seqs[0])
    pd.DataFrame({"id": [f"p{i:05d}" for i in range(n)], "seq": seqs, "y": y, "split": split}) \
        .to_csv(out / "promoters.csv", index=False)
    loaded = load_model("tiny-1k", random_init=True)
    started = clock.perf_counter()
    run_embed(loaded, record_reader(str(out / "promoters.csv"), "auto", "seq", "id", ["y", "split"], None),
              str(out / "p.zarr"), EmbedOptions(pools=("mean",)), label_names=["y", "split"],
              progress=False, say=lambda m: None)
    print(f"embedded {n} x {length} nt (tiny-1k, random weights) in {clock.perf_counter() - started:.0f} s; "
          f"threads={torch.get_num_threads()}")
    times, scores = {}, {}

    def say(message):
        print(message, flush=True)
        if message.startswith("head "):
            times["current"] = (message.split(": ", 1)[1].split(" on ")[0], clock.perf_counter())
        elif message.startswith("  ") and not message.startswith("  note:") and "current" in times:
            name, began = times.pop("current")
            times[name] = clock.perf_counter() - began
            found = re.search(r"test .*?r2=(-?[0-9.]+)", message)
            scores[name] = float(found.group(1)) if found else float("nan")

    options = FitOptions(heads=args.heads, feature_sets=[["mean"]], labels=["y"], task="regression",
                         split_col="split", baseline=list(args.baselines), plots=False,
                         time_budget=args.time_budget, full_grid=args.full_grid)
    began = clock.perf_counter()
    fit_heads(str(out / "p.zarr"), str(out / "runs"), options, say=say)
    print(f"\nfit-head wall: {clock.perf_counter() - began:.0f} s"
          f"{' (full grid: no halving)' if args.full_grid else ''}")
    print(f"  {'features / head':<28}{'seconds':>8}  {'test r2':>8}")
    for name, seconds in times.items():
        print(f"  {name:<28}{seconds:8.1f}  {scores.get(name, float('nan')):8.4f}")


if __name__ == "__main__":
    main()
