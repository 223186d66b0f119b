"""Forward throughput on one GPU: the port's ops, the CPU-shaped fast path, the fused kernels
(hyena_embed/cuda_path.py), and embed's loop over the same rows; the token budget's plateau;
the fused path's error against float32; a kernel profile. Part of the GPU command
(benchmarks/gpu_run.sh); `--quick` runs tiny shapes on CPU (Triton's interpreter if
TRITON_INTERPRET=1) so the script cannot rot.

    python benchmarks/cuda_forward.py --json cuda_forward.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hyena_embed.backbone import HyenaDNA  # noqa: E402
from hyena_embed.config import HyenaConfig  # noqa: E402

SHAPES = {"tiny-1k": (128, 2), "small-32k": (256, 4)}


def model_of(shape: str, l_max: int, device) -> HyenaDNA:
    d_model, n_layer = SHAPES[shape]
    torch.manual_seed(0)
    model = HyenaDNA(HyenaConfig(d_model=d_model, n_layer=n_layer, d_inner=4 * d_model, l_max=l_max))
    # non-zero biases and norms, so that every term of the maths is exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval().to(device)


def timed(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def forward_rate(model, device, batch, tokens, variant, repeats, dtype=torch.float16):
    ids = torch.randint(7, 11, (batch, tokens), device=device)
    model.set_fast_path(variant != "port")
    model.set_kernels(variant == "kernels")

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return model(ids).mean(1).cpu()
    return batch * tokens / timed(step, device, repeats)


def accuracy(model, device, tokens=2000):
    """Relative error of each path under fp16 against the float32 fast path (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ids = torch.randint(7, 11, (4, tokens), device=device)
    model.set_fast_path(True)
    model.set_kernels(False)
    with torch.inference_mode():
        ref = model(ids)
        out = {}
        for variant in ("port", "fast", "kernels"):
            model.set_fast_path(variant != "port")
            model.set_kernels(variant == "kernels")
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    got = model(ids)
                out[f"{variant} {str(dtype)[6:]}"] = float((got - ref).abs().max() / ref.abs().max())
    model.set_fast_path(True)
    model.set_kernels(True)
    return out


def loop_rate(model, device, nt, budget, repeats):
    """embed's own loop (tokenising, batching, pooling, host copies; no disk)."""
    from hyena_embed.embedder import Embedder
    from hyena_embed.inputs import Row
    from hyena_embed.runner import EmbedOptions, embed_chunk
    from hyena_embed.tokenizer import Tokenizer

    model.set_fast_path(True)
    model.set_kernels(True)
    embedder = Embedder(model, device, "auto")
    tokens = nt + 1
    batch = max(1, budget // tokens)
    text = "".join(np.random.default_rng(0).choice(list("ACGT"), nt))
    chunk = [Row(f"r{i}", f"r{i}", 0, [text], {}) for i in range(batch)]
    tok = Tokenizer(model.config.l_max)
    out = {}
    for label, per_position in (("loop pooled", False), ("loop per-position", True)):
        options = EmbedOptions(per_position=per_position)
        out[label] = batch * tokens / timed(
            lambda: embed_chunk(embedder, tok, chunk, options, budget, [0] * batch, [tokens] * batch),
            device, repeats)
    return out


def profile(model, device, batch, tokens):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    ids = torch.randint(7, 11, (batch, tokens), device=device)
    model.set_fast_path(True)
    model.set_kernels(True)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16):
        model(ids)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(ids)
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=14)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    repeats = 1 if args.quick else 3
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__}
    from hyena_embed import cuda_path
    result["gemm_gelu_is_tanh"] = (cuda_path._gemm_gelu_is_tanh(device, torch.float16)
                                   if device.type == "cuda" else None)
    small = "tiny-1k" if args.quick else "small-32k"
    model = model_of(small, 32770, device)
    result["accuracy"] = accuracy(model, device, 300 if args.quick else 2000)
    print("accuracy", json.dumps(result["accuracy"]), flush=True)
    rows = []
    lengths = [500, 1000] if args.quick else [500, 1000, 8000, 32000]
    budget = 16_384 if args.quick else 2 ** 21
    for shape in (["tiny-1k"] if args.quick else ["tiny-1k", "small-32k"]):
        model = model_of(shape, max(lengths) + 2, device)
        for nt in (lengths if shape == "small-32k" or args.quick else [500, 1000]):
            tokens = nt + 1
            batch = max(1, budget // tokens)
            row = {"shape": shape, "nt": nt, "batch": batch}
            for variant in ("port", "fast", "kernels"):
                row[variant] = forward_rate(model, device, batch, tokens, variant, repeats)
            row.update(loop_rate(model, device, nt, budget, repeats))
            rows.append(row)
            print({k: (f"{v / 1e6:.2f}M" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    result["rates"] = rows
    if device.type == "cuda":
        plateau = []
        model = model_of("small-32k", 8194, device)
        for budget in (2 ** 18, 2 ** 20, 2 ** 22):
            for nt in (1000,):
                torch.cuda.reset_peak_memory_stats()
                rate = forward_rate(model, device, max(1, budget // (nt + 1)), nt + 1, "kernels", 3)
                plateau.append({"budget": budget, "nt": nt, "tok/s": rate,
                                "peak GiB": torch.cuda.max_memory_allocated() / 2 ** 30})
                print(plateau[-1], flush=True)
        result["plateau"] = plateau
        result["profile"] = profile(model, device, 2048, 1001)
        print(result["profile"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
