"""What an embed run will write, known before any forward: its options, and the plan read
in a first pass over the input (every row's id, group, token count, window and site, the
labels, and a fingerprint of it all). The second pass (`runner`) embeds exactly these rows."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cache.layout import position_arrays
from cache.store import RowMeta
from .inputs import InputError, Record, Row, is_missing, plan_rows, typed_labels
from .pooling import POOLINGS
from .tokenizer import Tokenizer

SITE_POOLS = ("site", "sitewin")  # the hidden state at a variant, and the mean around it


@dataclass
class EmbedOptions:
    pools: tuple[str, ...] = ("mean",)
    per_position: bool = False
    window: tuple[int, int] | None = None  # token positions [start, end) per row
    center_window: int | None = None  # W positions centred in each row
    layer: int | None = None  # hidden state index; None = final output
    dtype: str = "float16"  # storage dtype
    rc: bool = False  # also embed the reverse complement: pooled vectors averaged with its,
    # and with --per-position its states stored too (positions/rc_values, for finetune --cache)
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
    def position_arrays(self) -> list[str]:
        """The per-position arrays written: positions/values, and with --rc the reverse
        strand's states (its own token order, the same starts and lengths)."""
        return position_arrays(self.per_position, self.rc)

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
        if self.rc and (self.window or self.center_window):
            raise InputError("--rc stores the reverse strand's per-position states of whole rows "
                             "only (a window sits elsewhere on the other strand); drop "
                             "--position-window/--center-window or --rc")
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
    return tokenizer.site_token(row.site, n_cut, row.id)
