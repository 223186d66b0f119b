"""The embed run: input rows -> frozen backbone -> Zarr cache, resumable and chunked.

Pass 1 streams the input once to validate it (characters, empty or duplicate ids, missing
labels, lengths) and to size the cache. Pass 2 streams it again, chunk by chunk: chunks already
written are skipped, each chunk is sorted into token-budget batches, and a background thread
writes whole chunks while the model works on the next. A chunk is marked done only after its
data are written, so a killed run resumes where it stopped and ends with the same cache.
Under torchrun each rank embeds the chunks c with c % world_size == rank.
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from cache.folders import prepare_out, remove_if_bare
from cache.store import Cache, CacheError, RowMeta
from .distributed import Distributed
from .batching import HostCopies, default_batch_tokens, token_budget_batches
from .devices import is_out_of_memory, resolve_device
from .embedder import Embedder
from .inputs import InputError, Record, Row, is_missing, plan_rows, typed_labels
from .loading import LoadedModel
from .locking import exclusive
from .pooling import POOLINGS, pool, site_features
from .tokenizer import SPECIAL_POLICIES, InvalidSequenceError, Tokenizer, reverse_complement_ids

SITE_POOLS = ("site", "sitewin")  # the hidden state at a variant, and the mean around it


@dataclass
class EmbedOptions:
    pools: tuple[str, ...] = ("mean",)
    per_position: bool = False
    window: tuple[int, int] | None = None  # token positions [start, end) per row
    center_window: int | None = None  # W positions centred in each row
    layer: int | None = None  # hidden state index; None = final output
    dtype: str = "float16"  # storage dtype
    rc: bool = False  # average pooled vectors with the reverse complement's
    packs: int | None = None  # cut multi-read samples into this many rows
    special_tokens: str = "sep"
    truncation: str = "keep-end"  # or keep-start, or error
    missing_labels: str = "keep"  # keep (NaN) or drop
    store_sequences: bool = True  # needed for the k-mer baseline
    chunk_rows: int = 1024
    batch_tokens: int | None = None  # default per device
    precision: str = "auto"
    device: str = "auto"
    site_window: int | None = None  # variant pairs: features at the site and K positions around
    label_type: str = "auto"  # auto | numeric | text (inputs.typed_labels)
    compile: bool = False  # torch.compile the dense parts (float rounding only: not a setting)

    @property
    def stored_pools(self) -> list[str]:
        return [*self.pools, *(SITE_POOLS if self.site_window is not None else ())]

    def validate(self):
        bad = [p for p in self.pools if p not in POOLINGS]
        if bad or not (self.pools or self.per_position):
            raise InputError(f"--pool takes {', '.join(POOLINGS)} (got {', '.join(bad) or 'none'})")
        if self.dtype not in ("float16", "float32"):
            raise InputError("--dtype must be float16 or float32")
        if self.window and self.center_window:
            raise InputError("give --position-window or --center-window, not both")
        if (self.window or self.center_window) and not self.per_position:
            raise InputError("--position-window/--center-window restrict --per-position output: add --per-position")
        if self.rc and self.per_position:
            raise InputError("--rc averages pooled vectors only; drop --per-position or --rc")
        if self.missing_labels not in ("keep", "drop"):
            raise InputError("--missing-labels must be keep or drop")
        if self.packs is not None and self.packs < 1:
            raise InputError("--packs must be at least 1")
        if self.site_window is not None and (self.site_window < 0 or self.rc):
            raise InputError("--site-window must be >= 0, and cannot go with --rc (the site "
                             "moves in the reverse complement)")


@dataclass
class Plan:
    meta: RowMeta
    fingerprint: str
    report: dict = field(default_factory=dict)


def _window(n_tokens: int, options: EmbedOptions) -> tuple[int, int]:
    if options.window:
        start, end = options.window
    elif options.center_window:
        start = max(0, (n_tokens - options.center_window) // 2)
        end = start + options.center_window
    else:
        start, end = 0, n_tokens
    start = min(start, n_tokens)
    return start, max(0, min(end, n_tokens) - start)


def _dropped(row: Row, options: EmbedOptions, label_names) -> bool:
    """The one rule, used by both passes, for rows left out for missing labels."""
    return options.missing_labels == "drop" and any(is_missing(row.labels.get(n)) for n in label_names)


def iter_kept_rows(records: Callable[[], Iterator[Record]], tokenizer: Tokenizer,
                   options: EmbedOptions, label_names) -> Iterator[Row]:
    """Rows after packing, without the ones dropped for missing labels (same in both passes)."""
    for row in plan_rows(records(), tokenizer.max_body, options.packs):
        if not _dropped(row, options, label_names):
            yield row


def make_plan(records, tokenizer: Tokenizer, options: EmbedOptions, label_names) -> Plan:
    ids, groups, packs, n_tokens, cut, firsts, lengths, sites = [], [], [], [], [], [], [], []
    labels = {name: [] for name in label_names}
    seen: set[str] = set()
    digest = hashlib.sha256()
    n_records_seen, dropped_missing, reads_left_out, n_truncated = 0, 0, 0, 0
    for row in plan_rows(records(), tokenizer.max_body, options.packs):
        n_records_seen += row.pack == 0
        if row.id in seen:
            raise InputError(f"duplicate id {row.id!r}: ids must be unique")
        seen.add(row.id)
        if not row.parts or not any(row.parts):
            raise InputError(f"record {row.group!r}: empty sequence")
        if _dropped(row, options, label_names):
            dropped_missing += 1
            continue
        ids_row, n_cut = tokenizer.encode(row.parts, record=row.id)  # raises on bad characters
        ids.append(row.id)
        groups.append(row.group)
        packs.append(row.pack)
        n_tokens.append(len(ids_row))
        cut.append(n_cut)
        n_truncated += n_cut > 0
        reads_left_out += row.reads_left_out
        first, length = _window(len(ids_row), options)
        if options.site_window is not None:
            sites.append(_site_token(row, tokenizer, n_cut))
        firsts.append(first)
        lengths.append(length)
        for name in label_names:
            labels[name].append(row.labels.get(name))
        digest.update(row.id.encode() + b"\0" + "|".join(row.parts).encode() + b"\0"
                      + repr([row.labels.get(n) for n in label_names]).encode()
                      + repr(row.site).encode())
    if not ids:
        raise InputError("no sequences to embed: the input is empty"
                         + (f" after dropping {dropped_missing} rows with missing labels"
                            if dropped_missing else ""))
    labels = typed_labels(labels, options.label_type)
    meta = RowMeta(ids, groups, packs, n_tokens, cut, labels,
                   firsts if options.per_position else None,
                   lengths if options.per_position else None,
                   sites if options.site_window is not None else None)
    report = {"rows": len(ids), "records": n_records_seen, "truncated_rows": n_truncated,
              "dropped_missing_labels": dropped_missing, "reads_left_out": reads_left_out,
              "tokens": int(sum(n_tokens))}
    return Plan(meta, digest.hexdigest(), report)


def _site_token(row: Row, tokenizer: Tokenizer, n_cut: int) -> int:
    """Token index of a row's variant site, after the special prefix and any truncation."""
    if row.site is None:
        raise InputError(f"record {row.id!r} has no variant site: --site-window is for variant "
                         "pairs (--ref-col/--alt-col or --genome)")
    return site_token(row.site, tokenizer, n_cut, row.id)


def site_token(site: int, tokenizer: Tokenizer, n_cut: int, record: str) -> int:
    """Token index of a variant at nucleotide `site`, after the special prefix and any cut."""
    prefix = len(SPECIAL_POLICIES[tokenizer.special_tokens][0])
    site = site - (n_cut if tokenizer.truncation == "keep-end" else 0)
    if not 0 <= site < tokenizer.max_body:
        raise InputError(f"record {record!r}: the variant was cut off by truncation to l_max; "
                         "use a shorter --window or a model with a longer context")
    return prefix + site


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


def _open_or_create(out, plan, settings, loaded, options, overwrite, say,
                    pairs=None) -> tuple[Cache, bool]:
    """The store to write into, and whether there is anything left to do."""
    try:
        existing = Cache.open(out, mode="r+")
    except CacheError:  # a folder of ours with no whole store yet (killed while being created)
        existing = None
    if existing is not None and existing.initialised:
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
             "tokenizer": settings["tokenizer"], "model_config": loaded.config.to_dict()}
    cache = Cache.create(out, plan.meta, settings, facts, loaded.config.d_model,
                         options.chunk_rows, options.dtype, options.stored_pools,
                         options.per_position, options.store_sequences, pairs)
    return cache, True


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    block = []
    for row in rows:
        block.append(row)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def embed_chunk(embedder: Embedder, tokenizer: Tokenizer, rows: list[Row], options: EmbedOptions,
                batch_tokens: int, firsts=None, lengths=None, sites=None,
                on_batch: Callable[[int, int], None] | None = None, deferred: bool | None = None,
                token_rows: list[np.ndarray] | None = None):
    """Pooled vectors (and per-position block) for one chunk of rows, in row order.
    `on_batch(rows, tokens)` is called after each batch (progress).

    On CUDA nothing here waits for the device per batch: results come back through
    `HostCopies` while the next batch runs, and a batch that runs out of memory is split in
    two and run again. `token_rows`: the rows already tokenised (by a thread running ahead)."""
    if token_rows is None:
        token_rows = [tokenizer(r.parts, record=r.id) for r in rows]
    d = embedder.model.config.d_model
    pooled = {m: np.zeros((len(rows), d), np.float32) for m in options.stored_pools}
    per_row_positions: list[np.ndarray | None] = [None] * len(rows)
    prefix, suffix = (len(x) for x in SPECIAL_POLICIES[tokenizer.special_tokens])
    copies = HostCopies(embedder.device, deferred)
    position_dtype = torch.float16 if options.dtype == "float16" else torch.float32

    def into(name, batch):
        def deliver(values):
            pooled[name][batch] = values
        return deliver

    def positions_of(batch):
        def deliver(values):
            for j, i in enumerate(batch):
                per_row_positions[i] = values[j, firsts[i]: firsts[i] + lengths[i]]
        return deliver

    queue = token_budget_batches([len(t) for t in token_rows], batch_tokens)
    while queue:
        batch = queue.pop(0)
        batch_rows = [token_rows[i] for i in batch]
        earlier = copies.mark()  # the previous batch's results, read once this one is queued
        try:
            hidden, lens = embedder.hidden(batch_rows)
            if options.rc:
                rc_hidden, _ = embedder.hidden([reverse_complement_ids(t, prefix, suffix)
                                                for t in batch_rows])
            for m in options.pools:
                vectors = pool(hidden, lens, m)
                if options.rc:
                    vectors = (vectors + pool(rc_hidden, lens, m)) / 2
                copies.put(vectors, into(m, batch))
            if options.site_window is not None:
                site, around = site_features(hidden, lens, torch.as_tensor([sites[i] for i in batch]),
                                             options.site_window)
                copies.put(site, into("site", batch))
                copies.put(around, into("sitewin", batch))
            if options.per_position:  # cast on the device: half the bytes to move for float16
                copies.put(hidden.to(position_dtype), positions_of(batch))
        except RuntimeError as exc:
            if not (is_out_of_memory(exc) and len(batch) > 1):
                raise
            del exc
            hidden = rc_hidden = None
            if embedder.device.type == "cuda":
                torch.cuda.empty_cache()
            queue[:0] = [batch[: len(batch) // 2], batch[len(batch) // 2:]]
            continue
        copies.flush(earlier)
        if on_batch is not None:
            on_batch(len(batch), sum(len(t) for t in batch_rows))
    copies.flush()
    positions = None
    if options.per_position:
        positions = np.concatenate([p for p in per_row_positions]) if rows else None
    sequences = [tokenizer.truncate_text("|".join(r.parts)) for r in rows] \
        if options.store_sequences else None
    return pooled, positions, sequences


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
    settings = settings_of(loaded, tokenizer, options, plan.fingerprint, precision, label_names)
    if dist.rank == 0:
        cache, todo = _open_or_create(out, plan, settings, loaded, options, overwrite, say, pairs)
    dist.barrier()
    if dist.rank != 0:
        cache = Cache.open(out, mode="r+")
        todo = not cache.complete
    if not todo:
        return {"out": out, "skipped": True, **plan.report}
    batch_tokens = options.batch_tokens or default_batch_tokens(device, loaded.config.d_model)
    done = cache.chunk_done()
    size = group_size(plan.meta.n_tokens, options.chunk_rows, batch_tokens)
    # whole groups go to a rank, and a group with any chunk left is embedded whole: its batches,
    # and so its rounding, are the same in a resumed, a multi-rank and a single run
    todo_groups = {c // size for c in range(len(done)) if not done[c]}
    mine = [c for c in range(len(done)) if c // size in todo_groups and (c // size) % dist.world == dist.rank]
    started = time.perf_counter()
    bar = _Progress(_rows_and_tokens(plan.meta, mine, options.chunk_rows), progress and dist.rank == 0)
    pending: list[list[Future]] = []
    rows = iter_kept_rows(records, tokenizer, options, label_names)
    groups = _groups(_chunks(rows, options.chunk_rows), set(mine), size)
    # one thread reads and tokenises the next group while the device runs this one; another
    # writes finished chunks
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        ahead = reader.submit(_next_group, groups, tokenizer)
        while (group := ahead.result()) is not None:
            ahead = reader.submit(_next_group, groups, tokenizer)
            chunks, block, token_rows = group
            meta_rows = np.concatenate([np.arange(c * options.chunk_rows, c * options.chunk_rows + n)
                                        for c, n in chunks])
            firsts = lengths = sites = None
            if options.per_position:
                firsts = np.asarray(plan.meta.position_first)[meta_rows]
                lengths = np.asarray(plan.meta.position_length)[meta_rows]
            if plan.meta.sites is not None:
                sites = np.asarray(plan.meta.sites)[meta_rows]
            pooled, positions, sequences = embed_chunk(embedder, tokenizer, block, options,
                                                       batch_tokens, firsts, lengths, sites,
                                                       on_batch=bar.update, token_rows=token_rows)
            pending.append([writer.submit(_write, cache, chunk, *part) for chunk, part in
                            zip((c for c, _ in chunks), _split(chunks, pooled, positions, sequences,
                                                               lengths, options.dtype))
                            if not done[chunk]])
            while len(pending) > 2:  # bound memory: at most two groups in flight
                for f in pending.pop(0):
                    f.result()
        for futures in pending:
            for f in futures:
                f.result()
    bar.close()
    dist.barrier()
    if dist.rank == 0:
        cache.mark_complete()
        elapsed = time.perf_counter() - started
        say(f"wrote {out}: {plan.meta.n_rows} rows in {elapsed:.1f} s")
    return {"out": out, "skipped": False, "seconds": time.perf_counter() - started, **plan.report}


def group_size(n_tokens, chunk_rows: int, batch_tokens: int) -> int:
    """Chunks embedded together: enough for two token budgets on average, so that the cache's
    chunking never caps a batch below the budget and the device has the next batch queued.
    A function of the plan and the budget alone, never of what is done already."""
    per_chunk = float(np.mean(n_tokens)) * chunk_rows if len(n_tokens) else 1.0
    return max(1, int(np.ceil(2 * batch_tokens / max(per_chunk, 1.0))))


def _groups(chunks: Iterator[list[Row]], mine: set[int], size: int) -> Iterator[list[tuple[int, list[Row]]]]:
    """This rank's chunks in their groups of `size` consecutive chunks."""
    group = []
    for chunk, block in enumerate(chunks):
        if chunk not in mine:
            continue
        if group and group[-1][0] // size != chunk // size:
            yield group
            group = []
        group.append((chunk, block))
    if group:
        yield group


def _next_group(groups, tokenizer: Tokenizer):
    """((chunk, rows) pairs, the rows, their token ids), or None at the end."""
    group = next(groups, None)
    if group is None:
        return None
    block = [row for _, rows in group for row in rows]
    return [(c, len(rows)) for c, rows in group], block, [tokenizer(r.parts, record=r.id) for r in block]


def _split(chunks, pooled, positions, sequences, lengths, dtype):
    """One group's results cut back into its chunks: (pooled, positions, sequences) each."""
    row_ends = np.cumsum([n for _, n in chunks])
    row_starts = row_ends - [n for _, n in chunks]
    position_ends = np.cumsum(lengths)[row_ends - 1] if positions is not None else None
    for k, (a, b) in enumerate(zip(row_starts, row_ends)):
        part_positions = None
        if positions is not None:
            start = position_ends[k - 1] if k else 0
            part_positions = positions[start: position_ends[k]].astype(dtype)
        yield ({m: v[a:b].astype(dtype) for m, v in pooled.items()}, part_positions,
               None if sequences is None else sequences[a:b])


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
