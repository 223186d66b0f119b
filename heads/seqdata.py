"""Raw sequences for fine-tuning: the rows `embed` would make, with labels, a split and extras.

The rows, packs, labels and split follow the same rules as `embed` + `fit-head`, so a
fine-tuned model and the heads fitted on a cache of the same input are scored on the same
samples.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch

from hyena_embed.tokenizer import reverse_complement_ids
from hyena_embed.inputs import InputError, is_missing, plan_rows
from hyena_embed.tokenizer import (SPECIAL_POLICIES, InvalidSequenceError, Tokenizer, pad_batch_to_grid,
                                   padded_width)
from .data import Supervised, assign_split, infer_task, read_id_list, read_label_table

if TYPE_CHECKING:
    from .prefix_cache import PrefixStates


@dataclass
class SequenceSet:
    data: Supervised  # ids, groups, labels, split, task (as fit-head has them)
    parts: list[list[str]]  # the sequence(s) of each row
    tokens: list[np.ndarray]
    numeric: np.ndarray  # (n, k) extra numeric inputs
    categories: np.ndarray  # (n, m) codes of the categorical extra inputs (0 = unseen)
    vocabularies: list[list[str]] = field(default_factory=list)
    fingerprint: str = ""
    report: dict = field(default_factory=dict)

    @cached_property  # read every epoch and every evaluation; the tokens never change
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])


def load_sequences(records, tokenizer: Tokenizer, label_names: list[str], *, task=None,
                   packs=None, labels_file=None, labels_id_col="id", test_ids=None,
                   split_col=None, seed=42, numeric_cols=(), category_cols=(),
                   vocabularies=None) -> SequenceSet:
    """Every labelled row, tokenised, with its split. Rows without a label are dropped and
    counted; a bad character, an empty sequence or a duplicate id stops with the record named."""
    rows = list(plan_rows(records(), tokenizer.max_body, packs))
    if not rows:
        raise InputError("no sequences: the input is empty")
    seen = set()
    for row in rows:
        if row.id in seen:
            raise InputError(f"duplicate id {row.id!r}: ids must be unique")
        seen.add(row.id)
        if not any(row.parts):
            raise InputError(f"record {row.group!r}: empty sequence")
    ids = np.array([r.id for r in rows], dtype=object)
    groups = np.array([r.group for r in rows], dtype=object)
    task, y, keep = label_values(rows, groups, label_names, task, labels_file, labels_id_col)
    if not keep.any():
        raise InputError("no row has a label")
    split_values = None
    if split_col:
        split_values = np.array([str(r.labels.get(split_col)) for r in rows], dtype=object)[keep]
    split = assign_split(groups[keep].astype(str), ids[keep].astype(str), seed,
                         read_id_list(test_ids) if test_ids else None, split_values)
    rows = [r for r, k in zip(rows, keep) if k]
    y = y[keep]
    y = y[:, 0] if y.shape[1] == 1 else y
    if task == "classification":
        y = np.array([str(v) for v in y], dtype=object)
    numeric = numeric_inputs(rows, numeric_cols)
    categories, vocabularies = category_codes(rows, category_cols, split, vocabularies)
    tokens = []
    n_truncated = 0
    for r in rows:
        try:
            t, cut = tokenizer.encode(r.parts, record=r.id)
        except InvalidSequenceError as exc:
            raise InputError(str(exc)) from exc
        tokens.append(t)
        n_truncated += cut > 0
    digest = hashlib.sha256()
    for r, s, label in zip(rows, split, y):
        digest.update(f"{r.id}\0{'|'.join(r.parts)}\0{s}\0{label!r}\0".encode())
    data = Supervised(ids[keep].astype(str), groups[keep].astype(str), y, split, task,
                      list(label_names), int((~keep).sum()))
    for name in ("train", "val", "test"):
        if not data.mask(name).any():
            raise InputError(f"the {name} split is empty: too few labelled samples")
    report = {"rows": len(rows), "dropped_missing_labels": data.dropped,
              "truncated_rows": n_truncated, "samples": len(np.unique(data.groups)),
              "reads_left_out": sum(r.reads_left_out for r in rows)}
    return SequenceSet(data, [r.parts for r in rows], tokens, numeric, categories, vocabularies,
                       digest.hexdigest(), report)


def label_values(units, keys, label_names, task, labels_file=None, labels_id_col="id"):
    """(task, (n, targets) labels, which units have a usable label) for rows or pairs: from
    each unit's own labels, or from `labels_file` joined on `keys`. Regression keeps finite
    labels only (NaN and +-inf, e.g. log ratios of zero counts, are dropped and counted)."""
    if labels_file:
        table = read_label_table(labels_file, labels_id_col, list(label_names))
        y = table.reindex(np.asarray(keys).astype(str))[list(label_names)].to_numpy(dtype=object)
    else:
        y = np.array([[u.labels.get(n) for n in label_names] for u in units], dtype=object)
    task = infer_task(y, task)
    if task == "regression":
        try:
            y = np.array([[np.nan if is_missing(v) else float(v) for v in row] for row in y])
        except (TypeError, ValueError) as exc:
            raise InputError(f"regression needs numeric labels: {exc}") from exc
        return task, y, np.isfinite(y).all(axis=1)
    if len(label_names) > 1:
        raise InputError("classification takes one --label")
    return task, y, np.array([not is_missing(v) for v in y[:, 0]])


def numeric_inputs(rows, columns) -> np.ndarray:
    values = np.zeros((len(rows), len(columns)), dtype=np.float32)
    for k, col in enumerate(columns):
        for i, r in enumerate(rows):
            v = r.labels.get(col)
            try:
                values[i, k] = float(v)
            except (TypeError, ValueError):
                raise InputError(f"record {r.id!r}: extra numeric input {col}={v!r} is not a "
                                 "number") from None
            if not np.isfinite(values[i, k]):
                raise InputError(f"record {r.id!r}: extra numeric input {col} is missing")
    return values


def category_codes(rows, columns, split=None, vocabularies=None):
    """Codes per categorical column; vocabularies come from the training rows (0 = unseen)."""
    if vocabularies is None:
        vocabularies = [["<unseen>", *sorted({str(r.labels.get(c)) for r, s in zip(rows, split)
                                              if s == "train"})] for c in columns]
    codes = np.zeros((len(rows), len(columns)), dtype=np.int64)
    for k, col in enumerate(columns):
        index = {v: i for i, v in enumerate(vocabularies[k])}
        codes[:, k] = [index.get(str(r.labels.get(col)), 0) for r in rows]
    return codes, vocabularies


POOL_BATCHES = 32  # rows are sorted by length within pools of this many batches


def _by_length(pool: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """A pool of rows cut into batches of similar length (longest first)."""
    pool = pool[np.argsort(-lengths[pool], kind="stable")]
    return [pool[i: i + batch_size] for i in range(0, len(pool), batch_size)]


def length_bucketed_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int,
                            generator: torch.Generator) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length (less padding), in shuffled order."""
    order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    pool_size = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool_size):
        batches += _by_length(order[start: start + pool_size], lengths, batch_size)
    shuffle = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in shuffle]


def chunk_ordered_batches(indices: np.ndarray, lengths: np.ndarray, chunks: np.ndarray,
                          batch_size: int, generator: torch.Generator,
                          chunks_per_group: int = 1) -> list[np.ndarray]:
    """Training batches for states read from disk (`finetune --cache` too large for memory):
    groups of `chunks_per_group` consecutive storage chunks in shuffled order, the rows of each
    group in shuffled order, then length-bucketed batches as `length_bucketed_batches` makes
    them, but shuffled within each pool (at most POOL_BATCHES batches, of one group) only. The
    reader keeps a group's chunks while its pools are trained, so each chunk is read and
    decompressed about once an epoch (1 + 1/chunks_per_group times: a row may run into the next
    chunk), not once per row it holds (rows of 500 tokens: ~8 per chunk). `chunks[i]`: the
    first storage chunk of row i."""
    group_of = chunks[indices] // max(1, chunks_per_group)
    distinct = np.unique(group_of)
    rank = np.empty(int(distinct.max()) + 1 if len(distinct) else 0, np.int64)
    rank[distinct] = torch.randperm(len(distinct), generator=generator).numpy()
    within = torch.randperm(len(indices), generator=generator).numpy()
    sort = np.lexsort((within, rank[group_of]))
    order, group_of = indices[sort], group_of[sort]
    batches = []
    for pool in chunk_groups(group_of, batch_size * POOL_BATCHES, 1):  # never two groups in a pool
        pooled = _by_length(order[pool], lengths, batch_size)
        batches += [pooled[i] for i in torch.randperm(len(pooled), generator=generator).numpy()]
    return batches


def chunk_groups(chunk_of: np.ndarray, max_rows: int, max_chunks: int | None) -> list[np.ndarray]:
    """Positions 0..n-1 of rows in storage order (`chunk_of`: each one's first chunk, grouped)
    cut into consecutive groups of at most max_rows rows and max_chunks distinct chunks."""
    groups, start, seen = [], 0, 0
    for i in range(len(chunk_of)):
        new = i == start or chunk_of[i] != chunk_of[i - 1]
        if i > start and (i - start >= max_rows or (new and max_chunks and seen >= max_chunks)):
            groups.append(np.arange(start, i))
            start, seen, new = i, 0, True
        seen += new
    if len(chunk_of):
        groups.append(np.arange(start, len(chunk_of)))
    return groups


def epoch_batches(indices, lengths, batch_size, generator, states) -> list[np.ndarray]:
    """An epoch's training batches: chunk by chunk when the states are read from disk."""
    if states is not None and states.chunk_ordered:
        return chunk_ordered_batches(indices, lengths, states.first_chunks, batch_size, generator,
                                     states.chunks_per_group)
    return length_bucketed_batches(indices, lengths, batch_size, generator)


class BatchMaker:
    """Token batches for training (shuffled, length-bucketed, augmented) and evaluation."""

    def __init__(self, rows: SequenceSet, tokenizer: Tokenizer, batch_size: int,
                 rc: bool = False, shuffle_reads: bool = False, states: "PrefixStates | None" = None):
        self.rows = rows
        self.states = states  # finetune --cache: the frozen blocks' output, read per batch
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.rc = rc
        self.reversed: np.ndarray | None = None  # --rc-augment: this epoch's coin for each row
        self.shuffle_reads = shuffle_reads
        self.prefix, self.suffix = (len(x) for x in SPECIAL_POLICIES[tokenizer.special_tokens])

    def epoch(self, indices: np.ndarray, generator: torch.Generator) -> list[np.ndarray]:
        """The epoch's batches; with --rc-augment every row's strand is drawn here too, before
        any batch is made, so states read ahead from a cache are those of the right strand."""
        batches = epoch_batches(indices, self.rows.lengths, self.batch_size, generator, self.states)
        if self.rc:
            self.reversed = (torch.rand(len(self.rows.lengths), generator=generator) < 0.5).numpy()
        return batches

    def strands(self, batch: np.ndarray, training: bool) -> np.ndarray:
        """1 for the rows of a training batch trained as their reverse complement, else 0
        (evaluation never reverses)."""
        if not (training and self.rc):
            return np.zeros(len(batch), np.int64)
        if self.reversed is None:
            raise RuntimeError("BatchMaker.epoch draws the strands before a training batch")
        return self.reversed[batch].astype(np.int64)

    def inputs(self, batch: np.ndarray, generator: torch.Generator | None = None) -> dict:
        """The model's keyword inputs for these rows (augmented when a generator is given)."""
        ids, lengths = self.tokens(batch, generator)
        numeric, categories = self.extras(batch)
        tokens = {"input_ids": ids}
        if self.states is not None:  # the same rows and width, as states after the frozen blocks
            tokens = {"prefix": self.states.gather(self.states.units(batch), ids.shape[1],
                                                   self.strands(batch, generator is not None))}
        return {**tokens, "lengths": lengths, "numeric": numeric, "categories": categories}

    def upcoming(self, batch: np.ndarray):
        """A training batch the loop will ask for next: with --cache from disk, start reading it."""
        if self.states is not None and self.states.from_disk:
            width = padded_width(int(self.rows.lengths[batch].max()), self.tokenizer.max_length)
            self.states.read_ahead(self.states.units(batch), width,
                                   self.strands(batch, training=True))

    def tokens(self, batch: np.ndarray, generator: torch.Generator | None = None):
        """Right-padded ids and lengths; augmented when a generator is given (training)."""
        rows = []
        for i in batch:
            t = self.rows.tokens[i]
            if generator is not None and self.shuffle_reads and len(self.rows.parts[i]) > 1:
                parts = self.rows.parts[i]
                order = torch.randperm(len(parts), generator=generator).tolist()
                t, _ = self.tokenizer.encode([parts[k] for k in order])
            rows.append(t)
        for k, flip in enumerate(self.strands(batch, generator is not None)):
            if flip:
                rows[k] = reverse_complement_ids(rows[k], self.prefix, self.suffix)
        return pad_batch_to_grid(rows, self.tokenizer.max_length)

    def extras(self, batch: np.ndarray):
        return (torch.as_tensor(self.rows.numeric[batch]),
                torch.as_tensor(self.rows.categories[batch]))
