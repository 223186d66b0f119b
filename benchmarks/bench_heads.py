"""Training time of each head on 25,000 x 256 cached features (a planted linear+nonlinear signal).

Torch heads run a fixed 20 epochs (no early stopping), as the target is stated; LightGBM and
the rest as fit-head runs them (LightGBM with early stopping on the validation rows).

    python benchmarks/bench_heads.py
    python benchmarks/bench_heads.py --n 25000 --d 256 --heads ridge lightgbm
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
