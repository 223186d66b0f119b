"""The embed run: input rows -> frozen backbone -> Zarr cache, resumable and chunked.

Pass 1 (`plan.make_plan`) streams the input once to validate it (characters, empty or
duplicate ids, missing labels, lengths) and to size the cache. Pass 2 streams it again in
groups of chunks (`chunking`): groups already written are skipped, a thread reads and tokenises
the next group while the model runs this one, each group is sorted into token-budget batches,
and another thread writes whole chunks. A chunk is marked done only after its data are written,
so a killed run resumes where it stopped and ends with the same cache. Under torchrun each rank
embeds whole groups (group g on rank g % world_size).
"""
from __future__ import annotations

import shlex
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cache.folders import prepare_out, remove_if_bare
from cache.store import Cache, CacheError, RowMeta
from . import __version__
from .batching import default_batch_tokens
from .chunking import embed_chunk, group_size, next_group, split_group, this_ranks_groups
from .devices import resolve_device
from .distributed import Distributed
from .embedder import Embedder
from .inputs import InputError, Record
from .loading import LoadedModel
from .locking import exclusive
from .plan import EmbedOptions, iter_kept_rows, make_plan
from .tokenizer import InvalidSequenceError, Tokenizer


def settings_of(loaded: LoadedModel, tokenizer: Tokenizer, options: EmbedOptions,
                fingerprint: str, precision: str, label_names) -> dict:
    """Everything that determines the cache's values; a resume must match it exactly."""
    keep = ("pools", "per_position", "window", "center_window", "dtype", "rc", "packs",
            "missing_labels", "store_sequences", "chunk_rows", "site_window", "label_type")
    opts = {k: v for k, v in asdict(options).items() if k in keep}
    opts["pools"] = list(opts["pools"])
    opts["window"] = list(opts["window"]) if opts["window"] else None
    return {"model": loaded.name, "weights_sha256": loaded.weights_sha256,
            "modulation_shift": loaded.config.modulation_shift,
            "layer": loaded.model.resolve_layer(options.layer), "tokenizer": tokenizer.describe(),
            "precision": precision, "labels": list(label_names), "input_sha256": fingerprint,
            **opts}


def _command_line() -> str:
    """The command that made the cache, as a report shows it (python cli.py embed ...)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("cli.py"):
        argv = ["python", "cli.py", *argv[1:]]
    return shlex.join(argv)[:2000]


def _recorded_batch_tokens(out) -> int | None:
    try:
        return Cache.open(out, check=False).settings.get("batch_tokens")
    except CacheError:
        return None


def _open_or_create(out, plan, settings, loaded, options, overwrite, say,
                    pairs=None) -> tuple[Cache, bool]:
    """The store to write into, and whether there is anything left to do."""
    try:
        existing = Cache.open(out, mode="r+", check=False)
    except CacheError:  # a folder of ours with no whole store yet (killed while being created)
        existing = None
    structure = existing.structure_problems() if existing is not None else []
    if structure and existing.initialised:  # an array or the progress record lost: start again
        say(f"{out} is damaged ({'; '.join(structure[:3])}); computing it again")
    if not structure and existing is not None and existing.initialised:
        if existing.settings != settings:
            diff = sorted(k for k in set(settings) | set(existing.settings)
                          if settings.get(k) != existing.settings.get(k))
            if not overwrite:
                raise CacheError(f"{out} was made with other settings ({', '.join(diff)}); "
                                 "use another --out, or --overwrite to replace it")
            say(f"overwriting {out} (settings differ: {', '.join(diff)})")
        else:
            meta_damage = existing.meta_problems()
            if meta_damage:
                existing.write_meta(plan.meta)
                existing.group.attrs["complete"] = False  # consolidated again when complete
                say(f"{out}: mended the row metadata ({'; '.join(meta_damage)})")
            damaged = existing.mark_damaged_undone()
            if damaged:
                say(f"{out}: row chunk(s) {', '.join(map(str, damaged))} damaged; recomputing them")
            if existing.chunk_done().all():
                if not existing.complete:
                    existing.mark_complete()
                    return existing, False
                say(f"{out} is already complete ({existing.n_rows} rows); nothing to do")
                return existing, False
            done = existing.chunk_done()
            say(f"resuming {out}: {int(done.sum())}/{len(done)} chunks already written")
            return existing, True
    facts = {"model": loaded.name, "weights_sha256": loaded.weights_sha256,
             "random_init": loaded.random_init, "model_source": loaded.source,
             "layer": settings["layer"], "max_length": loaded.config.l_max,
             "tokenizer": settings["tokenizer"], "model_config": loaded.config.to_dict(),
             "package_version": __version__, "command": _command_line()}
    cache = Cache.create(out, plan.meta, settings, facts, loaded.config.d_model,
                         options.chunk_rows, options.dtype, options.stored_pools,
                         options.per_position, options.store_sequences, pairs)
    return cache, True


def run_embed(loaded: LoadedModel, records: Callable[[], Iterator[Record]], out: str,
              options: EmbedOptions, label_names=(), overwrite: bool = False,
              progress: bool = True, say: Callable[[str], None] = print,
              pairs: dict | None = None) -> dict:
    """Embed every row into the cache at `out`; returns a summary of the run."""
    options.validate()
    dist = Distributed(resolve_device(options.device).type)
    try:
        if dist.rank != 0:  # rank 0 holds the folder's lock for the whole run
            return _run(loaded, records, out, options, list(label_names), overwrite, progress,
                        lambda _msg: None, dist, pairs)
        made = prepare_out(out)
        try:
            with exclusive(out):
                return _run(loaded, records, out, options, list(label_names), overwrite,
                            progress, say, dist, pairs)
        except BaseException:
            if made:  # a folder this run made and left without a store (bad input): gone again
                remove_if_bare(out)
            raise
    finally:
        dist.close()


def _run(loaded, records, out, options, label_names, overwrite, progress, say, dist, pairs) -> dict:
    device = resolve_device(options.device, dist.local_rank)
    tokenizer = Tokenizer(loaded.config.l_max, options.special_tokens,
                          "error" if options.truncation == "error" else options.truncation)
    embedder = Embedder(loaded.model, device, options.precision, options.layer, options.compile, say)
    precision = embedder.precision.name
    try:
        plan = make_plan(records, tokenizer, options, label_names)
    except InvalidSequenceError as exc:
        raise InputError(str(exc)) from exc
    r = plan.report
    say(f"{r['rows']} rows, {r['tokens']:,} tokens; truncated to l_max: {r['truncated_rows']}; "
        f"dropped for missing labels: {r['dropped_missing_labels']}"
        + (f"; reads left out (packs full): {r['reads_left_out']}" if r["reads_left_out"] else ""))
    if options.per_position and dist.rank == 0:
        _check_room(out, plan.meta, loaded.config.d_model, options, say)
    settings = settings_of(loaded, tokenizer, options, plan.fingerprint, precision, label_names)
    # batches change the last bit of some values (padding enters the FFT's rounding), so the
    # budget is a setting: a resume keeps the recorded one unless --batch-tokens says otherwise
    settings["batch_tokens"] = options.batch_tokens or _recorded_batch_tokens(out) \
        or default_batch_tokens(device, loaded.config.d_model)
    if dist.rank == 0:
        cache, todo = _open_or_create(out, plan, settings, loaded, options, overwrite, say, pairs)
    dist.barrier()
    if dist.rank != 0:
        cache = Cache.open(out, mode="r+")
        todo = not cache.complete
    if not todo:
        return {"out": out, "skipped": True, **plan.report}
    batch_tokens = int(cache.settings["batch_tokens"])
    started = time.perf_counter()
    _embed_groups(embedder, tokenizer, cache, plan, records, options, label_names, batch_tokens,
                  progress and dist.rank == 0, dist)
    dist.barrier()
    if dist.rank == 0:
        cache.mark_complete()
        elapsed = time.perf_counter() - started
        say(f"wrote {out}: {plan.meta.n_rows} rows in {elapsed:.1f} s")
    return {"out": out, "skipped": False, "seconds": time.perf_counter() - started, **plan.report}


def _check_room(out, meta: RowMeta, d_model: int, options: EmbedOptions, say):
    """Per-position states can be large: their size is said before the run, and a disk
    without room for them (less what an earlier run already wrote) is refused now."""
    positions = int(np.asarray(meta.position_length, dtype=np.int64).sum())
    strands = len(options.position_arrays)
    size = strands * positions * d_model * np.dtype(options.dtype).itemsize
    say(f"per-position states: {positions:,} positions x {d_model} x {options.dtype}"
        + (" x 2 strands (--rc)" if strands == 2 else "") + f" = {_bytes(size)}")
    written = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file() and not f.is_symlink())
    free = shutil.disk_usage(out).free
    if size - written > free:
        raise CacheError(f"{out}: the per-position states need {_bytes(size - written)} more and "
                         f"the disk has {_bytes(free)} free; free space, use another --out, or "
                         "store fewer positions (--center-window, --position-window)")


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _embed_groups(embedder, tokenizer, cache: Cache, plan, records, options: EmbedOptions,
                  label_names, batch_tokens: int, progress: bool, dist: Distributed):
    """Pass 2: this rank's unfinished groups of chunks through the model and into the cache.
    One thread reads and tokenises the next group while the device runs this one; another
    writes finished chunks."""
    done = cache.chunk_done()
    size = group_size(plan.meta.n_tokens, options.chunk_rows, batch_tokens)
    # whole groups go to a rank, and a group with any chunk left is embedded whole: its batches,
    # and so its rounding, are the same in a resumed, a multi-rank and a single run
    todo_groups = {c // size for c in range(len(done)) if not done[c]}
    mine = [c for c in range(len(done)) if c // size in todo_groups and (c // size) % dist.world == dist.rank]
    bar = _Progress(_rows_and_tokens(plan.meta, mine, options.chunk_rows), progress)
    pending: list[list[Future]] = []
    rows = iter_kept_rows(records, tokenizer, options, label_names)
    groups = this_ranks_groups(rows, options.chunk_rows, set(mine), size)
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        ahead = reader.submit(next_group, groups, tokenizer)
        while (group := ahead.result()) is not None:
            ahead = reader.submit(next_group, groups, tokenizer)
            chunks, block, token_rows = group
            firsts, lengths, sites = _row_facts(plan.meta, chunks, options)
            pooled, positions, sequences = embed_chunk(embedder, tokenizer, block, options,
                                                       batch_tokens, firsts, lengths, sites,
                                                       on_batch=bar.update, token_rows=token_rows)
            parts = split_group(chunks, pooled, positions, sequences, lengths, options.dtype)
            pending.append([writer.submit(_write, cache, chunk, *part)
                            for (chunk, _), part in zip(chunks, parts) if not done[chunk]])
            while len(pending) > 2:  # bound memory: at most two groups in flight
                for f in pending.pop(0):
                    f.result()
        for futures in pending:
            for f in futures:
                f.result()
    bar.close()


def _row_facts(meta: RowMeta, chunks: list[tuple[int, int]], options: EmbedOptions):
    """The per-position windows (first token, length) and variant sites of a group's rows."""
    rows = np.concatenate([np.arange(c * options.chunk_rows, c * options.chunk_rows + n) for c, n in chunks])
    firsts = lengths = sites = None
    if options.per_position:
        firsts = np.asarray(meta.position_first)[rows]
        lengths = np.asarray(meta.position_length)[rows]
    if meta.sites is not None:
        sites = np.asarray(meta.sites)[rows]
    return firsts, lengths, sites


def _write(cache: Cache, chunk: int, pooled, positions, sequences):
    cache.write_chunk(chunk, pooled, positions, sequences)
    cache.mark_done(chunk)  # after the data: a chunk marked done is whole


def _rows_and_tokens(meta: RowMeta, chunks: list[int], chunk_rows: int) -> tuple[int, int]:
    n_tokens = np.asarray(meta.n_tokens)
    blocks = [n_tokens[c * chunk_rows: (c + 1) * chunk_rows] for c in chunks]
    return sum(len(b) for b in blocks), int(sum(b.sum() for b in blocks))


class _Progress:
    """A bar that moves after every batch: tokens (which set the pace, so the ETA holds when
    lengths vary), rows done out of the run's, and the token rate."""

    def __init__(self, totals: tuple[int, int], enabled: bool):
        from tqdm.auto import tqdm

        self.rows_total, tokens_total = totals
        self.rows = 0
        self.bar = tqdm(total=tokens_total, unit="tok", unit_scale=True, disable=not enabled,
                        dynamic_ncols=True, smoothing=0.1,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} tok [{elapsed}<{remaining}, "
                                   "{rate_fmt}{postfix}]")

    def update(self, rows: int, tokens: int):
        self.rows += rows
        self.bar.set_postfix_str(f"rows {self.rows:,}/{self.rows_total:,}", refresh=False)
        self.bar.update(tokens)

    def close(self):
        self.bar.close()
