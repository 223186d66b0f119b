"""Fine-tuning step time and peak memory, by model shape, length, --unfreeze and checkpointing.

Each configuration runs in a fresh process, so peak memory is its own: on CUDA the peak of
allocated memory, on CPU the growth of the process's peak resident set over what it held
before the first step (the model and libraries). A step is forward + backward + AdamW update
on a batch of `--batch-tokens` tokens (rows of the given length), float32 on CPU and fp16
autocast with a grad scaler on CUDA, as `finetune` runs them.

    PYTHONPATH=. python benchmarks/bench_finetune.py
    PYTHONPATH=. python benchmarks/bench_finetune.py --shapes small-32k --lengths 8192 --device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from hyena_embed import cpu


def one(shape: str, length: int, unfreeze: str, checkpointing: bool, batch_tokens: int,
        steps: int, device: str) -> dict:
    from heads.freezing import apply_unfreeze_, parse_unfreeze
    from heads.seqmodel import SequencePredictor
    from hyena_embed.backbone import HyenaDNA
    from hyena_embed.registry import get_spec

    config = get_spec(shape).config
    config = config.replace(l_max=max(config.l_max, length + 2))  # the shape at this length
    torch.manual_seed(0)
    model = SequencePredictor(HyenaDNA(config), "mlp3", 1)
    apply_unfreeze_(model.encoder, parse_unfreeze(unfreeze, config.n_layer))
    model.gradient_checkpointing = checkpointing
    dev = torch.device(device)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dev.type == "cuda")
    rows = max(1, batch_tokens // length)
    ids = torch.randint(7, 11, (rows, length), device=dev)
    lengths = torch.full((rows,), length, device=dev)
    target = torch.zeros(rows, 1, device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            loss = torch.nn.functional.mse_loss(model(ids, lengths).float(), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    before_kb = _rss_kb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step()  # warm-up (allocations, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    seconds = (time.perf_counter() - start) / steps
    return {"shape": shape, "length": length, "rows": rows, "unfreeze": unfreeze,
            "grad_checkpoint": checkpointing, "step_s": round(seconds, 3),
            "tokens_per_s": round(rows * length / seconds), "peak_mb": round(peak_mb),
            "trainable_params": sum(p.numel() for p in params), "device": device}


def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny-1k", "small-32k"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 8192])
    ap.add_argument("--unfreeze", nargs="+", default=["0", "2", "all"])
    ap.add_argument("--batch-tokens", type=int, default=16_384)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a single configuration, as JSON
    args = ap.parse_args()
    if args.one:
        cpu.keep_freed_memory()  # as the CLI does
        print(json.dumps(one(**json.loads(args.one))))
        return
    print(f"{'shape':<10}{'length':>7}{'rows':>5}{'unfreeze':>9}{'ckpt':>6}{'step s':>9}"
          f"{'tok/s':>9}{'peak MB':>9}{'trainable':>11}")
    for shape in args.shapes:
        for length in args.lengths:
            for unfreeze in args.unfreeze:
                for checkpointing in ((False,) if unfreeze == "0" else (False, True)):
                    spec = {"shape": shape, "length": length, "unfreeze": unfreeze,
                            "checkpointing": checkpointing, "batch_tokens": args.batch_tokens,
                            "steps": args.steps, "device": args.device}
                    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                         capture_output=True, text=True)
                    if out.returncode:
                        print(f"{shape} {length} {unfreeze} {checkpointing}: failed\n{out.stderr[-2000:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"{shape:<10}{length:>7}{r['rows']:>5}{unfreeze:>9}{'yes' if checkpointing else 'no':>6}"
                          f"{r['step_s']:>9.3f}{r['tokens_per_s']:>9,}{r['peak_mb']:>9,}"
                          f"{r['trainable_params']:>11,}", flush=True)


if __name__ == "__main__":
    main()
