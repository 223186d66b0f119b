"""One command that proves the GPU path and measures it (issue 14); `--device cpu --quick` runs
the same checks on CPU in under a minute, so the script cannot rot (tests/test_gpu_check.py).

Checks (each PASS/FAIL, the run exits 1 on any FAIL):
- the reference fixtures in float32 on the device, with the CPU tests' tolerance;
- pooled output under fp16 and bf16 autocast within 1e-2 relative of float32 (CUDA; on CPU
  bf16 only where it is native);
- batch invariance: mixed lengths in one batch equal each sequence alone;
- a full `embed` run into a cache, then `fit-head` on it;
- a few `finetune` epochs with --unfreeze 2 (fp16 with its grad scaler and bf16 on CUDA,
  float32 on CPU) on a planted task: losses finite and falling.
Measures: embed end to end (pooled only, and with per-position output) and the reference
port's per-forward path on the same device in the same process, in tokens/s, for the tiny-1k
and small-32k shapes at 500, 1k, 8k and 32k nt; peak GPU memory; fine-tuning step time.
Prints one table and writes JSON (`--json`).

    python benchmarks/gpu_check.py --json gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick           # anywhere, < 1 minute
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hyena_embed import cpu  # noqa: E402
from hyena_embed.config import HyenaConfig  # noqa: E402
from hyena_embed.backbone import HyenaDNA  # noqa: E402
from hyena_embed.embedder import Embedder  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from cuda_forward import timed  # noqa: E402  (median of repeats, after a warm-up)

SHAPES = {"tiny-1k": (128, 2), "small-32k": (256, 4)}
FIXTURES = Path(os.environ.get("HYENA_FIXTURES", REPO.parent / "shared" / "fixtures" / "hyena_reference"))


class Checks:
    def __init__(self):
        self.results = []

    def run(self, name, fn):
        started = time.perf_counter()
        try:
            detail = fn() or ""
            ok = True
        except Exception as exc:  # every check reports; none stops the others
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.results.append({"check": name, "ok": ok, "detail": str(detail)[:300],
                             "seconds": round(time.perf_counter() - started, 2)})
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


def model_of(shape: str, l_max: int, device) -> HyenaDNA:
    d_model, n_layer = SHAPES[shape]
    torch.manual_seed(0)
    return HyenaDNA(HyenaConfig(d_model=d_model, n_layer=n_layer, d_inner=4 * d_model,
                                l_max=l_max)).eval().to(device)


def random_rows(rng, n, lo, hi):
    return [rng.integers(7, 11, size=int(rng.integers(lo, hi + 1))).astype(np.int64) for _ in range(n)]


def check_fixtures(device):
    from safetensors.torch import load_file

    from helpers import assert_close_to_reference
    from hyena_embed.checkpoints import build_from_directory
    from hyena_embed.precision import exact_float32

    if not FIXTURES.exists():
        return "skipped: no fixtures"
    n = 0
    for name in ("tiny-1k", "tiny-1k-d256-ckpt"):
        expected = load_file(FIXTURES / name / "expected.safetensors")
        model, _ = build_from_directory(FIXTURES / name / "hf")
        model = model.to(device).eval()
        i = 0
        while f"seq{i}.input_ids" in expected:
            with torch.no_grad(), exact_float32():  # float32 means float32: no TF32
                states = model(expected[f"seq{i}.input_ids"][None].to(device), output_hidden_states=True)
            for j, state in enumerate(states):
                assert_close_to_reference(state[0].cpu(), expected[f"seq{i}.hidden_states.{j}"])
                n += 1
            i += 1
    return f"{n} hidden states match"


def check_precisions(device, quick):
    model = model_of("tiny-1k" if quick else "small-32k", 1026 if quick else 32770, device)
    rng = np.random.default_rng(0)
    rows = random_rows(rng, 16, 100, 1000)
    reference = Embedder(model, device, "float32").pooled(rows, ["mean"])["mean"]
    precisions = ["float16", "bfloat16"] if device.type == "cuda" else \
        (["bfloat16"] if cpu.native_bf16() else [])
    worst = {}
    for precision in precisions:
        got = Embedder(model, device, precision).pooled(rows, ["mean"])["mean"]
        worst[precision] = float(np.abs(got - reference).max() / np.abs(reference).max())
        assert worst[precision] < 1e-2, f"{precision}: {worst[precision]:.2e} relative to float32"
    return ", ".join(f"{p} {w:.1e}" for p, w in worst.items()) or "no reduced precision here"


def check_batch_invariance(device):
    model = model_of("tiny-1k", 1026, device)
    emb = Embedder(model, device, "float32")
    rows = random_rows(np.random.default_rng(1), 12, 5, 1000)
    together = emb.pooled(rows, ["mean", "last"])
    worst = 0.0
    for i, row in enumerate(rows):
        alone = emb.pooled([row], ["mean", "last"])
        for m in ("mean", "last"):
            np.testing.assert_allclose(together[m][i], alone[m][0], rtol=1e-4, atol=1e-4)
            worst = max(worst, float(np.abs(together[m][i] - alone[m][0]).max()))
    return f"max difference {worst:.1e}"


def check_embed_and_fit_head(device, work: Path):
    from click.testing import CliRunner

    import cli

    rng = np.random.default_rng(2)
    n = 300
    seqs = ["".join(rng.choice(list("ACGT"), size=int(rng.integers(100, 400)),
                               p=[p, 0.5 - p, 0.5 - p, p])) for p in rng.uniform(0.1, 0.4, n)]
    import pandas as pd

    gc = [(s.count("G") + s.count("C")) / len(s) for s in seqs]
    pd.DataFrame({"id": [f"r{i}" for i in range(n)], "seq": seqs, "gc": gc}).to_csv(work / "t.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["embed", "--model", "tiny-1k", "--random-init", "--input",
                                      str(work / "t.csv"), "--seq-col", "seq", "--id-col", "id",
                                      "--label", "gc", "--device", str(device), "--quiet",
                                      "--out", str(work / "t.zarr")])
    assert result.exit_code == 0, result.output[-500:]
    result = runner.invoke(cli.main, ["fit-head", "--cache", str(work / "t.zarr"), "--label", "gc",
                                      "--head", "ridge", "--head", "mlp2", "--epochs", "20",
                                      "--device", str(device), "--no-plots",
                                      "--out", str(work / "runs")])
    assert result.exit_code == 0, result.output[-500:]
    board = pd.read_csv(work / "runs" / "leaderboard.csv").set_index("head")
    assert board.loc["ridge", "test_pearson"] > 0.5, board.test_pearson.to_dict()
    return f"ridge test r {board.loc['ridge', 'test_pearson']:.2f}"


def check_finetune(device, precision, work: Path, epochs: int):
    from heads.finetune import FinetuneOptions, finetune
    from hyena_embed.inputs import Record
    from hyena_embed.loading import random_model

    rng = np.random.default_rng(3)
    records = []
    for i in range(160):
        seq = list(rng.choice(list("ACGT"), size=80))
        label = float(rng.integers(0, 3))
        for _ in range(int(label)):
            at = int(rng.integers(0, 74))
            seq[at: at + 6] = list("TATAAT")
        records.append(Record(f"r{i}", ["".join(seq)], {"y": label + rng.normal(0, 0.1)}))
    loaded = random_model("tiny-1k", seed=0)
    options = FinetuneOptions(labels=["y"], head="mlp2", unfreeze="2", epochs=epochs, batch_size=16,
                              lr=3e-3, patience=epochs, precision=precision, device=str(device),
                              plots=False, warmup=0.0)
    started = time.perf_counter()
    finetune(loaded, lambda: iter(records), str(work / f"ft_{precision}"), options,
             progress=False, say=lambda m: None)
    log = json.loads((work / f"ft_{precision}" / "finetune-mean-u2" / "mlp2" / "metrics.json").read_text())
    import pandas as pd

    history = pd.read_csv(work / f"ft_{precision}" / "finetune-mean-u2" / "mlp2" / "training_log.csv")
    losses = history.train_loss.to_numpy()
    assert np.isfinite(losses).all(), f"non-finite losses {losses}"
    assert losses[-1] < losses[0], f"training loss did not fall: {losses.round(4)}"
    step = (time.perf_counter() - started) / max(1, epochs * 8)
    return f"train loss {losses[0]:.3f} -> {losses[-1]:.3f}; test r {log['test']['pearson']:.2f}; ~{step * 1000:.0f} ms/step"


def measure(device, quick):
    """Embed tokens/s: fast frozen path pooled-only and with per-position copies, and the
    reference port's per-forward path, on the same device."""
    from hyena_embed.pooling import pool

    from hyena_embed.batching import default_batch_tokens
    from hyena_embed.embedder import Embedder
    from hyena_embed.inputs import Row
    from hyena_embed.runner import EmbedOptions, embed_chunk
    from hyena_embed.tokenizer import Tokenizer

    lengths = [500, 1000] if quick else [500, 1000, 8000, 32000]
    shapes = ["tiny-1k"] if quick else list(SHAPES)
    rows = []
    for shape in shapes:
        model = model_of(shape, max(lengths) + 2, device)
        budget = default_batch_tokens(device, model.config.d_model)  # what embed uses
        for nt in lengths:
            tokens = nt + 1
            batch = max(1, budget // tokens)
            ids = torch.randint(7, 11, (batch, tokens), device=device)
            ids[:, -1] = 1
            lens = torch.full((batch,), tokens, device=device)
            autocast = torch.float16 if device.type == "cuda" else None
            rates = {}
            for label, fast, per_position in (("port", False, False), ("pooled", True, False),
                                              ("per-position", True, True)):
                model.set_fast_path(fast)

                def step():
                    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.float32,
                                                                enabled=autocast is not None):
                        hidden = model(ids).float()
                        pooled = pool(hidden, lens, "mean").cpu()
                        if per_position:
                            hidden.to(torch.float16).cpu()
                    return pooled
                rates[label] = batch * tokens / timed(step, device, 1 if quick else 3)
            # embed's own loop over the same rows (tokenising, batching, host copies; no disk)
            model.set_fast_path(True)
            embedder = Embedder(model, device, "auto")
            text = "".join(np.random.default_rng(0).choice(list("ACGT"), nt))
            chunk = [Row(f"r{i}", f"r{i}", 0, [text], {}) for i in range(batch)]
            tok = Tokenizer(model.config.l_max)
            for label, per_position in (("embed pooled", False), ("embed per-position", True)):
                options = EmbedOptions(per_position=per_position)
                firsts, n_tok = [0] * batch, [tokens] * batch
                rates[label] = batch * tokens / timed(
                    lambda: embed_chunk(embedder, tok, chunk, options, budget, firsts, n_tok),
                    device, 1 if quick else 3)
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
            rows.append({"shape": shape, "nt": nt, "batch": batch, **{f"{k} tok/s": round(v) for k, v in rates.items()},
                         "speedup": round(rates["pooled"] / rates["port"], 2),
                         "embed / forward": round(rates["embed pooled"] / rates["pooled"], 2),
                         "per-position / pooled": round(rates["per-position"] / rates["pooled"], 2),
                         "peak GiB": None if peak is None else round(peak, 2)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="small shapes and few steps (CPU, tests)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--checks-only", action="store_true",
                        help="the PASS/FAIL checks without the throughput table "
                             "(benchmarks/cuda_forward.py measures the kernels' table)")
    args = parser.parse_args(argv)
    cpu.keep_freed_memory()
    from hyena_embed.devices import resolve_device

    device = resolve_device(args.device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; torch {torch.__version__}; {platform.processor() or platform.machine()}", flush=True)
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checks.run("fixtures float32", lambda: check_fixtures(device))
        checks.run("fp16/bf16 pooled within 1e-2 of float32", lambda: check_precisions(device, args.quick))
        checks.run("batch invariance, mixed lengths", lambda: check_batch_invariance(device))
        checks.run("embed -> cache -> fit-head", lambda: check_embed_and_fit_head(device, work))
        precisions = ["float16", "bfloat16"] if device.type == "cuda" else ["float32"]
        for precision in precisions:
            checks.run(f"finetune --unfreeze 2 ({precision})",
                       lambda p=precision: check_finetune(device, p, work, 3 if args.quick else 6))
    table = [] if args.checks_only else measure(device, args.quick)
    result = {"device": str(device), "quick": args.quick, "torch": torch.__version__,
              "checks": checks.results, "throughput": table}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    import pandas as pd

    if table:
        print("\n" + pd.DataFrame(table).to_string(index=False))
    failed = [c["check"] for c in checks.results if not c["ok"]]
    print(f"\n{len(checks.results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
