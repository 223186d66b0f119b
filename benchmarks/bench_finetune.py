"""Fine-tuning step time and peak memory, by model shape, length, --unfreeze and checkpointing.

Each configuration runs in a fresh process, so peak memory is its own: on CUDA the peak of
allocated memory, on CPU the growth of the process's peak resident set over what it held
before the first step (the model and libraries). A step is forward + backward + AdamW update
on a batch of `--batch-tokens` tokens (rows of the given length), float32 on CPU and fp16
autocast with a grad scaler on CUDA, as `finetune` runs them.

    PYTHONPATH=. python benchmarks/bench_finetune.py
    PYTHONPATH=. python benchmarks/bench_finetune.py --shapes small-32k --lengths 8192 --device cuda

`--prefix-cache` measures instead what `finetune --cache` saves: seconds per epoch (training
and validation, as training_log.csv records them) of the end-to-end run and of the run reading
the frozen blocks from `embed --per-position --layer K`, on synthetic variant pairs of 501 nt
(random weights, the same command line otherwise), and the one-time embed:

    PYTHONPATH=. python benchmarks/bench_finetune.py --prefix-cache --pairs 5000 --unfreeze 1 2

`--disk-read` times what a run reading states from disk (a cache larger than half the memory)
spends reading: one epoch's training batches of states gathered from the cache, in the order
an in-memory run draws them (rows shuffled) and chunk by chunk as a disk run draws them, with
the chunks decoded for each (same cache, same rows):

    PYTHONPATH=. python benchmarks/bench_finetune.py --disk-read --pairs 2000
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


def prefix_cache(shape: str, n_pairs: int, unfreezes: list[str], epochs: int, device: str):
    """Epoch seconds, end to end vs --cache, for each --unfreeze; prints a table."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from hyena_embed.registry import get_spec

    n_layer = get_spec(shape).config.n_layer
    with tempfile.TemporaryDirectory() as tmp:
        table = _pairs_table(n_pairs, Path(tmp))
        common = ["--model", shape, "--random-init", "--input", str(table), "--ref-col", "REF",
                  "--alt-col", "ALT", "--id-col", "ID", "--device", device, "--quiet"]
        print(f"{shape}, {n_pairs:,} pairs x 501 nt, {device}; seconds per epoch (train + validation)")
        print(f"{'unfreeze':>9}{'end to end':>12}{'--cache':>10}{'ratio':>8}{'target':>8}{'embed once':>12}")
        for unfreeze in unfreezes:
            layer = n_layer - int(unfreeze)
            states = Path(tmp) / f"states{layer}.zarr"
            started = time.perf_counter()
            _cli(["embed", *common, "--per-position", "--layer", str(layer), "--out", str(states)])
            embed_s = time.perf_counter() - started
            seconds = {}
            for name, extra in (("e2e", []), ("cache", ["--cache", str(states)])):
                out = Path(tmp) / f"runs-{name}-{unfreeze}"
                _cli(["finetune", *common, "--label", "y", "--unfreeze", unfreeze, "--epochs",
                      str(epochs), "--patience", str(epochs), "--no-plots", "--out", str(out), *extra])
                log = pd.read_csv(next(out.glob("*/mlp3/training_log.csv")))
                seconds[name] = float(log["seconds"].iloc[1:].median() if len(log) > 1 else log["seconds"].iloc[0])
            ratio = seconds["cache"] / seconds["e2e"]
            target = int(unfreeze) / n_layer + 0.15
            print(f"{unfreeze:>9}{seconds['e2e']:>12.1f}{seconds['cache']:>10.1f}{ratio:>8.2f}"
                  f"{target:>8.2f}{embed_s:>12.1f}", flush=True)


def disk_read(shape: str, n_pairs: int, unfreeze: str, batch_size: int = 32):
    """Seconds and decoded chunks to read one epoch of states from disk, by batch order."""
    import tempfile
    from pathlib import Path
    from unittest import mock

    import numpy as np

    import heads.prefix_cache as prefix_cache
    from cache.store import Cache
    from heads.seqdata import chunk_ordered_batches, length_bucketed_batches
    from hyena_embed.registry import get_spec

    layer = get_spec(shape).config.n_layer - int(unfreeze)
    with tempfile.TemporaryDirectory() as tmp:
        table, states = _pairs_table(n_pairs, Path(tmp)), Path(tmp) / "states.zarr"
        started = time.perf_counter()
        _cli(["embed", "--model", shape, "--random-init", "--input", str(table), "--ref-col", "REF",
              "--alt-col", "ALT", "--id-col", "ID", "--quiet", "--per-position", "--layer",
              str(layer), "--out", str(states)])
        cache = Cache.open(str(states))
        index = {str(i): k for k, i in enumerate(cache.ids)}
        units = np.array([[index[f"v{i}/ref"], index[f"v{i}/alt"]] for i in range(n_pairs)])
        print(f"{shape} layer {layer}, {n_pairs:,} pairs x 501 nt, states {cache.settings['dtype']} "
              f"(embedded in {time.perf_counter() - started:.0f} s); one epoch of batches of "
              f"{batch_size} pairs read from disk")
        print(f"{'order':<22}{'seconds':>9}{'chunks decoded':>16}{'of chunks':>11}")
        lengths = np.full(n_pairs, 503)
        train = np.arange(n_pairs)
        for name in ("rows (in-memory run)", "chunks (disk run)"):
            # memory just short of holding the states: the disk run's own chunk store
            size = int(cache.group["positions/values"].nbytes)
            with mock.patch.object(prefix_cache, "available_memory", lambda: size):
                reader = prefix_cache.PrefixStates(cache, units, torch.device("cpu"), say=lambda m: None)
            generator = torch.Generator().manual_seed(0)
            if name.startswith("rows"):
                batches = length_bucketed_batches(train, lengths, batch_size, generator)
            else:
                batches = chunk_ordered_batches(train, lengths, reader.first_chunks, batch_size,
                                                generator, reader.chunks_per_group)
            started = time.perf_counter()
            for batch in batches:
                reader.gather(reader.units(batch), 504)
            total = -(-reader.total // prefix_cache.POSITION_CHUNK)
            print(f"{name:<22}{time.perf_counter() - started:>9.1f}{reader.chunks_read:>16,}{total:>11,}",
                  flush=True)
            reader.close()


def _pairs_table(n_pairs: int, directory):
    """A CSV of synthetic variant pairs (501 nt, a substitution at position 250) and a random
    label, seeded: the rows both --prefix-cache and --disk-read run on."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_pairs):
        ref = "".join(rng.choice(list("ACGT"), 501))
        alt = ref[:250] + "ACGT"["ACGT".index(ref[250]) - 1] + ref[251:]
        rows.append({"ID": f"v{i}", "REF": ref, "ALT": alt, "y": rng.normal()})
    table = directory / "pairs.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def _cli(args: list[str]):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "cli.py"), *args], capture_output=True,
                          text=True, cwd=repo)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


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
    ap.add_argument("--prefix-cache", action="store_true",
                    help="Epoch seconds of finetune end to end vs --cache (variant pairs).")
    ap.add_argument("--pairs", type=int, default=5000, help="--prefix-cache: variant pairs.")
    ap.add_argument("--epochs", type=int, default=2, help="--prefix-cache: epochs per run.")
    ap.add_argument("--disk-read", action="store_true",
                    help="Seconds to read an epoch of states from disk, row order vs chunk order.")
    args = ap.parse_args()
    if args.disk_read:
        shape = args.shapes[0] if args.shapes != ap.get_default("shapes") else "small-32k"
        unfreeze = args.unfreeze[0] if args.unfreeze != ap.get_default("unfreeze") else "1"
        disk_read(shape, args.pairs, unfreeze)
        return
    if args.prefix_cache:
        shape = args.shapes[0] if args.shapes != ap.get_default("shapes") else "small-32k"
        unfreezes = args.unfreeze if args.unfreeze != ap.get_default("unfreeze") else ["1", "2"]
        prefix_cache(shape, args.pairs, unfreezes, args.epochs, args.device)
        return
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
