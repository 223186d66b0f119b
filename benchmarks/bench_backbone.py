"""Tokens/s of the backbone's fast frozen path against the reference port's per-forward path.

Both paths run the same random-weight model on the same batches, at the same precision, in the
same process (so both get the malloc setting `cpu.keep_freed_memory`, as the CLI applies it;
`--default-malloc` turns it off for both). The reference path is the HF port op for op: every
filter and its FFT recomputed at size 2L on each forward, F.linear, conv1d, transposes. Lengths
are in nucleotides; each row also carries the [SEP] the tokenizer appends (8000 nt = 8001
tokens). The tiny-1k shape gets a widened l_max to reach 8k. On CPU it measures float32, and
bfloat16 autocast where oneDNN has native bf16 (AVX512-BF16/AMX).

    python benchmarks/bench_backbone.py                  # CPU, and CUDA when present
    python benchmarks/bench_backbone.py --lengths 500 8000 --batch-tokens 32768
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from hyena_embed import cpu
from hyena_embed.backbone import HyenaDNA
from hyena_embed.config import HyenaConfig

SHAPES = {"tiny-1k": (128, 2), "small-32k": (256, 4)}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, filter cache, cuFFT plans
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run(device: str, precision: str, lengths, batch_tokens: int, repeats: int):
    autocast = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[precision]
    print(f"\n# device={device} precision={precision} batch_tokens={batch_tokens} "
          f"threads={torch.get_num_threads()}")
    print(f"{'shape':<10}{'nt':>6}{'batch':>6}{'reference tok/s':>17}{'fast tok/s':>13}{'speedup':>9}")
    for shape, (d_model, n_layer) in SHAPES.items():
        l_max = max(1026 if shape == "tiny-1k" else 32770, max(lengths) + 2)
        torch.manual_seed(0)
        model = HyenaDNA(HyenaConfig(d_model=d_model, n_layer=n_layer, d_inner=4 * d_model,
                                     l_max=l_max)).eval().to(device)
        for nt in lengths:
            tokens = nt + 1
            batch = max(1, batch_tokens // tokens)
            ids = torch.randint(7, 11, (batch, tokens), device=device)
            ids[:, -1] = 1  # [SEP]
            rates = {}
            for fast in (False, True):
                model.set_fast_path(fast)

                def forward():
                    with torch.inference_mode(), torch.autocast(
                            device_type=torch.device(device).type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
                        model(ids)
                rates[fast] = batch * tokens / best_time(forward, repeats)
            print(f"{shape:<10}{nt:>6}{batch:>6}{rates[False]:>17,.0f}{rates[True]:>13,.0f}"
                  f"{rates[True] / rates[False]:>8.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000, 8000])
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc's defaults (page faults on every large tensor)")
    args = parser.parse_args()
    tuned = not args.default_malloc and cpu.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, oneDNN linear: {cpu.onednn_linear_available()}, "
          f"malloc keeps freed memory: {tuned}")
    run("cpu", "float32", args.lengths, args.batch_tokens, args.repeats)
    if cpu.native_bf16():
        run("cpu", "bfloat16", args.lengths, args.batch_tokens, args.repeats)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        for precision in ("float32", "float16"):
            run("cuda", precision, args.lengths, args.batch_tokens * 16, args.repeats)


if __name__ == "__main__":
    main()
