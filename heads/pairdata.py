"""Variant pairs for fine-tuning: both alleles tokenised, the site of each, labels and a split.

The pairs come from the same readers as `embed`'s (a two-column table, or a VCF/table plus a
genome); the split is by pair, as fit-head splits a pair cache, or by a group column (a gene,
say) so that related pairs stay on one side. One batch of B pairs is one forward pass over
2B rows: the B reference windows, then the B alternative windows.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch

from hyena_embed.inputs import InputError, is_missing
from hyena_embed.tokenizer import InvalidSequenceError, Tokenizer, pad_batch_to_grid, padded_width
from hyena_embed.variants import VariantPair
from .data import Supervised, assign_split, read_id_list, variant_onehot
from .seqdata import category_codes, label_values, numeric_inputs
from .seqmodel import VARIANT_BASES

if TYPE_CHECKING:
    from .prefix_cache import PrefixStates

SITE_POOLS = ("site", "sitewin")


@dataclass
class PairSet:
    data: Supervised  # ids = pair ids; groups = pair ids or the --group-col value
    ref_tokens: list[np.ndarray]
    alt_tokens: list[np.ndarray]
    sites: np.ndarray  # (n, 2) token index of the variant in the ref and alt window
    variant: np.ndarray  # (n, 9) allele one-hot (fit-head's `variant` feature)
    variant_codes: np.ndarray  # (n, 2) codes of the ref and alt base in VARIANT_BASES
    numeric: np.ndarray
    categories: np.ndarray
    vocabularies: list[list[str]] = field(default_factory=list)
    fingerprint: str = ""
    report: dict = field(default_factory=dict)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (ref, alt) window of each pair

    @cached_property  # read every epoch and every evaluation; the tokens never change
    def lengths(self) -> np.ndarray:
        """Tokens a pair costs in one forward pass (both windows)."""
        return np.array([len(r) + len(a) for r, a in zip(self.ref_tokens, self.alt_tokens)])


def tokenise_pairs(pairs: list[VariantPair], tokenizer: Tokenizer):
    """(ref tokens, alt tokens, (n, 2) site token indices); a window longer than the model's
    context is refused (truncation would move or cut off the variant)."""
    refs, alts, sites = [], [], []
    for p in pairs:
        for seq in (p.ref_seq, p.alt_seq):
            if len(seq) > tokenizer.max_body:
                raise InputError(f"pair {p.id!r}: a {len(seq)}-nt window does not fit the model's "
                                 f"context ({tokenizer.max_body} nt); use a shorter --window or a "
                                 "model with a longer context")
        try:
            ref, alt = tokenizer(p.ref_seq, record=p.id), tokenizer(p.alt_seq, record=p.id)
        except InvalidSequenceError as exc:
            raise InputError(str(exc)) from exc
        refs.append(ref)
        alts.append(alt)
        sites.append((tokenizer.site_token(p.ref_site, 0, p.id), tokenizer.site_token(p.alt_site, 0, p.id)))
    return refs, alts, np.array(sites, dtype=np.int64).reshape(-1, 2)


def variant_codes(pairs: list[VariantPair]) -> np.ndarray:
    """Codes of the reference and alternative base (0 for indels and anything not ACGT)."""
    index = {b: i for i, b in enumerate(VARIANT_BASES)}
    return np.array([[index.get(a if len(a) == 1 else "", 0) for a in (p.ref_allele, p.alt_allele)]
                     for p in pairs], dtype=np.int64).reshape(-1, 2)


def load_pairs(pairs: list[VariantPair], tokenizer: Tokenizer, label_names: list[str], *,
               task=None, labels_file=None, labels_id_col="id", test_ids=None, split_col=None,
               group_col=None, seed=42, numeric_cols=(), category_cols=()) -> PairSet:
    """Every labelled pair, tokenised, with its split; pairs without a label are dropped and
    counted, a duplicate pair id stops with the id named."""
    if not pairs:
        raise InputError("no variant pairs in the input")
    ids = np.array([p.id for p in pairs], dtype=object)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if (ids == i).sum() > 1)
        raise InputError(f"duplicate pair id {dup!r}: ids must be unique")
    task, y, keep = label_values(pairs, ids, label_names, task, labels_file, labels_id_col)
    if not keep.any():
        raise InputError("no pair has a label")
    kept = [p for p, k in zip(pairs, keep) if k]
    if group_col:
        if any(is_missing(p.labels.get(group_col)) for p in kept):
            raise InputError(f"--group-col {group_col}: some labelled pairs have no group")
        groups = np.array([str(p.labels[group_col]) for p in kept], dtype=object)
    else:
        groups = ids[keep].astype(str)
    split_values = None
    if split_col:
        split_values = np.array([str(p.labels.get(split_col)) for p in kept], dtype=object)
    split = assign_split(groups, ids[keep].astype(str), seed,
                         read_id_list(test_ids) if test_ids else None, split_values)
    y = y[keep]
    y = y[:, 0] if y.shape[1] == 1 else y
    if task == "classification":
        y = np.array([str(v) for v in y], dtype=object)
    refs, alts, sites = tokenise_pairs(kept, tokenizer)
    numeric = numeric_inputs(kept, numeric_cols)
    categories, vocabularies = category_codes(kept, category_cols, split)
    digest = hashlib.sha256()
    for p, s, g, label in zip(kept, split, groups, y):
        digest.update(f"{p.id}\0{p.ref_seq}\0{p.alt_seq}\0{p.ref_site}\0{p.alt_site}\0{g}\0{s}\0"
                      f"{label!r}\0".encode())
    data = Supervised(ids[keep].astype(str), groups.astype(str), y, split, task, list(label_names),
                      int((~keep).sum()))
    for name in ("train", "val", "test"):
        if not data.mask(name).any():
            raise InputError(f"the {name} split is empty: too few labelled pairs")
    report = {"rows": len(kept), "dropped_missing_labels": data.dropped, "truncated_rows": 0,
              "samples": len(np.unique(groups))}
    return PairSet(data, refs, alts, sites,
                   variant_onehot([p.ref_allele for p in kept], [p.alt_allele for p in kept]),
                   variant_codes(kept), numeric, categories, vocabularies, digest.hexdigest(), report,
                   [(p.ref_seq, p.alt_seq) for p in kept])


class PairBatchMaker:
    """Batches of pairs: one forward over [ref rows; alt rows]. Training batches are shuffled
    and length-bucketed as single-sequence ones are."""

    def __init__(self, rows: PairSet, tokenizer: Tokenizer, batch_size: int,
                 variant_embedding: bool = False, states: "PrefixStates | None" = None):
        self.rows, self.tokenizer, self.batch_size = rows, tokenizer, batch_size
        self.variant_embedding = variant_embedding
        self.states = states  # finetune --cache: the frozen blocks' output, read

    def epoch(self, indices: np.ndarray, generator: torch.Generator) -> list[np.ndarray]:
        from .seqdata import epoch_batches

        return epoch_batches(indices, self.rows.lengths, self.batch_size, generator, self.states)

    def upcoming(self, batch: np.ndarray):
        """A batch the loop will ask for next: with --cache from disk, start reading it."""
        if self.states is not None and self.states.from_disk:
            longest = max(max(len(self.rows.ref_tokens[i]), len(self.rows.alt_tokens[i])) for i in batch)
            self.states.read_ahead(self.states.units(batch), padded_width(longest, self.tokenizer.max_length))

    def inputs(self, batch: np.ndarray, generator: torch.Generator | None = None) -> dict:
        rows = self.rows
        ids, lengths = pad_batch_to_grid([rows.ref_tokens[i] for i in batch]
                                         + [rows.alt_tokens[i] for i in batch],
                                         self.tokenizer.max_length)
        tokens = {"input_ids": ids}
        if self.states is not None:  # the same rows and width, as states after the frozen blocks
            tokens = {"prefix": self.states.gather(self.states.units(batch), ids.shape[1])}
        sites = torch.as_tensor(np.concatenate([rows.sites[batch, 0], rows.sites[batch, 1]]))
        categories = rows.categories[batch]
        if self.variant_embedding:
            categories = np.concatenate([rows.variant_codes[batch], categories], axis=1)
        return {**tokens, "lengths": lengths, "sites": sites,
                "variant": torch.as_tensor(rows.variant[batch]),
                "numeric": torch.as_tensor(rows.numeric[batch]),
                "categories": torch.as_tensor(categories)}
