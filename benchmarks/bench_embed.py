"""End-to-end `embed` against the backbone's pure forward on the same batches.

Pure forward: pre-tokenised rows, the same token-budget batches, outputs discarded. End to end:
the whole run (FASTA read twice, validation, tokenising, pooling, Zarr writes, resume flags).
Random-weight models of the tiny-1k and small-32k shapes.

    python benchmarks/bench_embed.py                       # CPU defaults
    python benchmarks/bench_embed.py --n 20000 --length 800 --device cuda
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hyena_embed import cpu
from hyena_embed.batching import token_budget_batches
from hyena_embed.embedder import Embedder
from hyena_embed.inputs import record_reader
from hyena_embed.loading import load_model
from hyena_embed.batching import default_batch_tokens
from hyena_embed.devices import resolve_device
from hyena_embed.runner import EmbedOptions, run_embed
from hyena_embed.tokenizer import Tokenizer


def write_fasta(path: Path, n: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            size = int(rng.integers(length // 2, length + 1))
            fh.write(f">r{i}\n{''.join(rng.choice(list('ACGT'), size=size))}\n")


def pure_forward(loaded, fasta, device, precision, batch_tokens) -> tuple[float, int]:
    tok = Tokenizer(loaded.config.l_max)
    rows = [tok(r.parts) for r in record_reader(str(fasta))()]
    emb = Embedder(loaded.model, device, precision)
    batches = token_budget_batches([len(r) for r in rows], batch_tokens)
    emb.hidden([rows[i] for i in batches[0]])  # warm-up
    start = time.perf_counter()
    for b in batches:
        hidden, _ = emb.hidden([rows[i] for i in b])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(len(r) for r in rows)


def end_to_end(loaded, fasta, out, device, precision, batch_tokens, per_position) -> float:
    options = EmbedOptions(pools=("mean",), per_position=per_position, batch_tokens=batch_tokens,
                           device=str(device), precision=precision, chunk_rows=4096)
    start = time.perf_counter()
    run_embed(loaded, record_reader(str(fasta)), str(out), options, progress=False, say=lambda m: None)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="sequences")
    parser.add_argument("--length", type=int, default=1000, help="longest sequence (nt); lengths L/2..L")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--models", nargs="+", default=["tiny-1k", "small-32k"])
    args = parser.parse_args()
    cpu.keep_freed_memory()  # as the CLI does
    device = resolve_device(args.device)
    print(f"device={device} precision={args.precision} n={args.n} length<={args.length} "
          f"threads={torch.get_num_threads()}")
    print(f"{'model':<11}{'output':<14}{'forward tok/s':>15}{'embed tok/s':>13}{'embed/forward':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "in.fa"
        write_fasta(fasta, args.n, args.length)
        for name in args.models:
            loaded = load_model(name, random_init=True)
            batch_tokens = default_batch_tokens(device, loaded.config.d_model)
            fwd_s, tokens = pure_forward(loaded, fasta, device, args.precision, batch_tokens)
            for per_position in (False, True):
                out = Path(tmp) / f"{name}-{per_position}.zarr"
                e2e_s = end_to_end(loaded, fasta, out, device, args.precision, batch_tokens, per_position)
                label = "pooled+perpos" if per_position else "pooled"
                print(f"{name:<11}{label:<14}{tokens / fwd_s:>15,.0f}{tokens / e2e_s:>13,.0f}"
                      f"{fwd_s / e2e_s:>14.0%}")


if __name__ == "__main__":
    main()
