"""One group of rows through the frozen model: token-budget batches, pooling, per-position
copies, and results on their way back to the host while the next batch runs. Groups of cache
chunks are filled to the token budget, so a batch never stops at a chunk's edge."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .batching import HostCopies, token_budget_batches
from .devices import is_out_of_memory
from .embedder import Embedder
from .inputs import Row
from .plan import EmbedOptions
from .pooling import pool, site_features
from .tokenizer import SPECIAL_POLICIES, Tokenizer, reverse_complement_ids


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
    results = _Results(len(rows), embedder.model.config.d_model, options, firsts, lengths)
    copies = HostCopies(embedder.device, deferred)
    queue = token_budget_batches([len(t) for t in token_rows], batch_tokens)
    while queue:
        batch = queue.pop(0)
        batch_rows = [token_rows[i] for i in batch]
        earlier = copies.mark()  # the previous batch's results, read once this one is queued
        try:
            _queue_batch(embedder, tokenizer, options, batch, batch_rows, sites, copies, results)
        except RuntimeError as exc:
            if not (is_out_of_memory(exc) and len(batch) > 1):
                raise
            del exc
            if embedder.device.type == "cuda":
                torch.cuda.empty_cache()
            queue[:0] = [batch[: len(batch) // 2], batch[len(batch) // 2:]]
            continue
        copies.flush(earlier)
        if on_batch is not None:
            on_batch(len(batch), sum(len(t) for t in batch_rows))
    copies.flush()
    positions = None
    if options.per_position and rows:  # {positions/<name>: (sum of window lengths, d)}
        positions = {name: np.concatenate(parts) for name, parts in results.positions.items()}
    sequences = [tokenizer.truncate_text("|".join(r.parts)) for r in rows] \
        if options.store_sequences else None
    return results.pooled, positions, sequences


class _Results:
    """Host arrays that a chunk's batches deliver into, in row order."""

    def __init__(self, n_rows: int, d: int, options: EmbedOptions, firsts, lengths):
        self.pooled = {m: np.zeros((n_rows, d), np.float32) for m in options.stored_pools}
        # per strand (positions/values, positions/rc_values): each row's states
        self.positions = {name: [None] * n_rows for name in options.position_arrays}
        self.firsts, self.lengths = firsts, lengths

    def into(self, name: str, batch: list[int]):
        def deliver(values):
            self.pooled[name][batch] = values
        return deliver

    def window_index(self, batch: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(batch row, position) of every stored position of a batch, row after row: the
        device gathers exactly these, so neither padding nor positions outside the window
        travel to the host."""
        lengths = np.asarray([self.lengths[i] for i in batch], dtype=np.int64)
        rows = np.repeat(np.arange(len(batch)), lengths)
        starts = np.repeat(np.asarray([self.firsts[i] for i in batch], dtype=np.int64), lengths)
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, starts + offsets

    def positions_of(self, batch: list[int], name: str = "values"):
        def deliver(values):  # (sum of the batch's window lengths, d), row after row
            ends = np.cumsum([self.lengths[i] for i in batch])
            for i, part in zip(batch, np.split(values, ends[:-1])):
                self.positions[name][i] = part
        return deliver


def _queue_batch(embedder: Embedder, tokenizer: Tokenizer, options: EmbedOptions, batch, batch_rows,
                 sites, copies: HostCopies, results: _Results):
    """One batch forward (and its reverse complement with --rc); its results on their way."""
    hidden, lens = embedder.hidden(batch_rows)
    rc_hidden = None
    if options.rc:
        prefix, suffix = (len(x) for x in SPECIAL_POLICIES[tokenizer.special_tokens])
        rc_hidden, _ = embedder.hidden([reverse_complement_ids(t, prefix, suffix) for t in batch_rows])
    for m in options.pools:
        vectors = pool(hidden, lens, m)
        if rc_hidden is not None:
            vectors = (vectors + pool(rc_hidden, lens, m)) / 2
        copies.put(vectors, results.into(m, batch))
    if options.site_window is not None:
        site, around = site_features(hidden, lens, torch.as_tensor([sites[i] for i in batch]),
                                     options.site_window)
        copies.put(site, results.into("site", batch))
        copies.put(around, results.into("sitewin", batch))
    if options.per_position:  # gathered and cast on the device: only stored values travel
        position_dtype = torch.float16 if options.dtype == "float16" else torch.float32
        rows, cols = (torch.as_tensor(a).to(hidden.device) for a in results.window_index(batch))
        copies.put(hidden[rows, cols].to(position_dtype), results.positions_of(batch))
        if rc_hidden is not None:  # whole rows (no window with --rc): the same indices
            copies.put(rc_hidden[rows, cols].to(position_dtype),
                       results.positions_of(batch, "rc_values"))


def group_size(n_tokens, chunk_rows: int, batch_tokens: int) -> int:
    """Chunks embedded together: enough for two token budgets on average, so that the cache's
    chunking never caps a batch below the budget and the device has the next batch queued.
    A function of the plan and the budget alone, never of what is done already."""
    per_chunk = float(np.mean(n_tokens)) * chunk_rows if len(n_tokens) else 1.0
    return max(1, int(np.ceil(2 * batch_tokens / max(per_chunk, 1.0))))


def this_ranks_groups(rows: Iterator[Row], chunk_rows: int, mine: set[int],
                      size: int) -> Iterator[list[tuple[int, list[Row]]]]:
    """This rank's chunks (numbers in `mine`) in their groups of `size` consecutive chunks."""
    group = []
    for chunk, block in enumerate(_chunks(rows, chunk_rows)):
        if chunk not in mine:
            continue
        if group and group[-1][0] // size != chunk // size:
            yield group
            group = []
        group.append((chunk, block))
    if group:
        yield group


def next_group(groups, tokenizer: Tokenizer):
    """((chunk, rows) pairs, the rows, their token ids), or None at the end."""
    group = next(groups, None)
    if group is None:
        return None
    block = [row for _, rows in group for row in rows]
    return [(c, len(rows)) for c, rows in group], block, [tokenizer(r.parts, record=r.id) for r in block]


def split_group(chunks, pooled, positions, sequences, lengths, dtype):
    """One group's results cut back into its chunks: (pooled, positions, sequences) each."""
    row_ends = np.cumsum([n for _, n in chunks])
    row_starts = row_ends - [n for _, n in chunks]
    position_ends = np.cumsum(lengths)[row_ends - 1] if positions is not None else None
    for k, (a, b) in enumerate(zip(row_starts, row_ends)):
        part_positions = None
        if positions is not None:
            start = position_ends[k - 1] if k else 0
            part_positions = {name: values[start: position_ends[k]].astype(dtype, copy=False)
                              for name, values in positions.items()}
        yield ({m: v[a:b].astype(dtype, copy=False) for m, v in pooled.items()}, part_positions,
               None if sequences is None else sequences[a:b])
