"""The embedding cache: one Zarr (v3) group per run, self-describing and resumable.

Layout (N rows, d = d_model; every array's first dimension is named `row` unless noted):
    ids [N] str                  row ids, in input order
    group [N] str                the sample a row belongs to (packs of one sample share it)
    pack [N] int32               index of the row within its group
    n_tokens [N] int32           tokens embedded, special tokens included
    n_truncated [N] int32        tokens cut to fit the model's l_max
    sequences [N] str            the sequence text embedded (reads joined by '|'), optional
    labels/<name> [N]            carried columns (float64 with NaN for missing, or str)
    pooled/<method> [N, d]       one array per pooling: mean, max, first, last, sum
    positions/values [T, d]      per-position embeddings (dimension `position`), when asked for
    positions/rc_values [T, d]   with --rc: the reverse complement's, in its own token order
                                 (same starts and lengths: a row and its reverse complement
                                 have as many tokens)
    positions/start [N] int64    row i's positions are values[start[i] : start[i] + length[i]]
    positions/length [N] int32
    positions/first_token [N] int32   token index (within the row) of the first stored position
    site_token [N] int32         variant pairs: token index of each row's variant
    pairs/* [P]                  variant pairs (dimension `pair`): id, ref_row, alt_row,
                                 ref_allele, alt_allele, ref_site, alt_site, edge, strand
    progress/chunk_done [C] bool one flag per chunk of `chunk_rows` rows
Attributes: format, schema_version, settings (all that determines the values), model facts,
package version, creation time, and `complete` (true only once every chunk is written).
Row chunks of pooled arrays are whole Zarr chunks; each row chunk's per-position block starts
on a Zarr chunk boundary, so separate processes never write the same Zarr chunk.

Integrity: every Zarr chunk is written (even one equal to the fill value) and carries a CRC32C
checksum, so a deleted chunk is seen as missing and a truncated or altered one fails its
checksum: neither is ever read back as zeros. `verify()` checks every chunk; a resumed embed
recomputes damaged row chunks and rewrites the row metadata.

Ownership of the folder (marker file, what --overwrite may clear): cache/folders.py.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .errors import UserError
from . import integrity, layout
from .arrays import Writer, array as _array, write_pairs, zarr_dtype
from .folders import FORMAT, claim_folder

SCHEMA_VERSION = 2  # 2: every chunk written and checksummed
POSITION_CHUNK = 4096  # positions per Zarr chunk of positions/values
STRAND_VALUES = layout.STRAND_VALUES  # positions/<name>: forward, reverse-complement strand


if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr


class CacheError(UserError, ValueError):
    """A cache that is missing, incomplete, or made with other settings."""


@dataclass
class RowMeta:
    """Everything known about the rows before any embedding is computed."""
    ids: list[str]
    groups: list[str]
    packs: list[int]
    n_tokens: list[int]
    n_truncated: list[int]
    labels: dict[str, list]
    position_first: list[int] | None = None  # per-position window start (token index)
    position_length: list[int] | None = None
    sites: list[int] | None = None  # token index of each row's variant (variant pairs)

    @property
    def n_rows(self) -> int:
        return len(self.ids)


def _label_array(values: list) -> np.ndarray:
    """Text when any value is text (the runner has typed each column), else float64."""
    if any(isinstance(v, str) and v != "" for v in values):
        return np.array(["" if v is None or (isinstance(v, float) and v != v) else str(v)
                         for v in values], dtype=str)
    return np.array([np.nan if v is None or v == "" else float(v) for v in values], dtype=np.float64)


def position_starts(lengths: np.ndarray, chunk_rows: int) -> tuple[np.ndarray, int]:
    """Start of each row's positions; each row chunk begins on a POSITION_CHUNK boundary."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    cursor = 0
    for begin in range(0, len(lengths), chunk_rows):
        block = lengths[begin: begin + chunk_rows]
        starts[begin: begin + len(block)] = cursor + np.concatenate([[0], np.cumsum(block)[:-1]])
        cursor += int(block.sum())
        cursor = -(-cursor // POSITION_CHUNK) * POSITION_CHUNK
    return starts, cursor


class Cache:
    """An open cache. `Cache.create` starts one; `Cache.open` reads one."""

    def __init__(self, group: zarr.Group, path: Path):
        self.group = group
        self.path = path

    # ---- creating and resuming ---------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, meta: RowMeta, settings: dict, facts: dict,
               d_model: int, chunk_rows: int, dtype: str, pools: list[str],
               per_position: bool, store_sequences: bool, pairs: dict | None = None) -> "Cache":
        """A new, empty cache at `path`: a missing or empty folder, or one of ours (cleared)."""
        path = Path(path)
        claim_folder(path)
        g = zarr.open_group(str(path), mode="a", zarr_format=3)
        n = meta.n_rows
        rows = (chunk_rows,)
        for name, dt_ in (("ids", str), ("group", str), ("pack", np.int32), ("n_tokens", np.int32),
                          ("n_truncated", np.int32)):
            _array(g, name, (n,), rows, dt_)
        if store_sequences:
            _array(g, "sequences", (n,), rows, str)
        labels = g.create_group("labels")
        for name, values in meta.labels.items():
            _array(labels, name, (n,), rows, zarr_dtype(_label_array(values)))
        pooled = g.create_group("pooled")
        for method in pools:
            _array(pooled, method, (n, d_model), (chunk_rows, d_model), dtype, ("row", "feature"))
        if per_position:
            lengths = np.array(meta.position_length, dtype=np.int64)
            _, total = position_starts(lengths, chunk_rows)
            pos = g.create_group("positions")
            for name in layout.position_arrays(True, settings.get("rc") is True):
                _array(pos, name, (max(total, 1), d_model), (POSITION_CHUNK, d_model), dtype,
                       ("position", "feature"))
            for name, dt_ in (("start", np.int64), ("length", np.int32), ("first_token", np.int32)):
                _array(pos, name, (n,), rows, dt_)
        if meta.sites is not None:
            _array(g, "site_token", (n,), rows, np.int32)
        if pairs is not None:
            write_pairs(g, pairs, meta.ids)
        n_chunks = -(-n // chunk_rows)
        _array(g.create_group("progress"), "chunk_done", (n_chunks,), (1,), bool, ("chunk",))
        g.attrs.update({
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "settings": settings,
            **facts, "d_model": d_model, "n_rows": n, "chunk_rows": chunk_rows,
            "dtype": dtype, "pooling": pools, "per_position": per_position,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "complete": False,
        })
        cache = cls(g, path)
        cache.write_meta(meta)
        cache._out["progress/chunk_done"][...] = False
        g.attrs["initialised"] = True  # last: a half-made store is recreated, not resumed
        return cache

    @property
    def _out(self) -> "Writer":
        return Writer(self.group)

    def write_meta(self, meta: RowMeta):
        """The per-row facts known before embedding (ids, groups, labels, position layout,
        sites). Written at creation, and again on resume, which mends any damage to them."""
        g = self._out
        g["ids"][...] = np.array(meta.ids, dtype=str)
        g["group"][...] = np.array(meta.groups, dtype=str)
        g["pack"][...] = np.array(meta.packs, dtype=np.int32)
        g["n_tokens"][...] = np.array(meta.n_tokens, dtype=np.int32)
        g["n_truncated"][...] = np.array(meta.n_truncated, dtype=np.int32)
        for name, values in meta.labels.items():
            g[f"labels/{name}"][...] = _label_array(values)
        if "positions" in self.group:
            lengths = np.array(meta.position_length, dtype=np.int64)
            starts, _ = position_starts(lengths, self.chunk_rows)
            g["positions/start"][...] = starts
            g["positions/length"][...] = lengths.astype(np.int32)
            g["positions/first_token"][...] = np.array(meta.position_first, dtype=np.int32)
        if meta.sites is not None:
            g["site_token"][...] = np.array(meta.sites, dtype=np.int32)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", check: bool = True) -> "Cache":
        """An existing cache. Its metadata is checked against the layout its root attributes
        promise before Zarr reads any of it (cache/layout.py); with `check` (every reader),
        any difference is a CacheError, while verify and a resuming embed (check=False) list
        and repair them."""
        path = Path(path)
        if not path.exists():
            raise CacheError(f"{path}: no such cache")
        try:
            attrs = layout.root_attributes(path)
        except FileNotFoundError:
            raise CacheError(f"{path} is not a Zarr cache (no zarr.json)") from None
        except UserError as exc:
            raise CacheError(str(exc)) from None
        if attrs.get("format") != FORMAT:
            raise CacheError(f"{path} is not a hyena-embed cache")
        if check:
            found = layout.problems(path, attrs)
            if found:
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                raise CacheError(f"{path} is damaged: {found[0]}{more}; verify lists every "
                                 "problem, and rerunning the embed command that made it (same "
                                 "--out and settings) repairs it")
        try:
            # the files themselves, never a consolidated copy that a later write made stale
            g = zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)
        except Exception as exc:  # zarr raises several kinds for a non-store folder
            raise CacheError(f"{path} is not a Zarr cache: {exc}") from exc
        return cls(g, path)

    def structure_problems(self) -> list[str]:
        """Damage a resume cannot mend chunk by chunk: array metadata that differs from the
        layout (a missing array among it), or an unreadable progress record."""
        found = layout.problems(self.path, self.attrs)
        if not found:
            try:
                self.chunk_done()
            except CacheError as exc:
                found.append(str(exc).split("; verifying")[0].replace(f"{self.path} is damaged: ", ""))
        return found

    # ---- state --------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def initialised(self) -> bool:
        return bool(self.group.attrs.get("initialised"))

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete"))

    @property
    def settings(self) -> dict:
        return self.group.attrs["settings"]

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    @property
    def n_rows(self) -> int:
        return int(self.group.attrs["n_rows"])

    def chunk_done(self) -> np.ndarray:
        return self._get("progress/chunk_done")

    def mark_done(self, chunk: int):
        self._out["progress/chunk_done"][chunk] = True

    def mark_complete(self):
        if not self.chunk_done().all():
            raise CacheError("cannot mark complete: some chunks are not written")
        self.group.attrs["complete"] = True
        self.group.attrs["completed"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.consolidate()

    def consolidate(self):
        """One metadata file for readers such as xarray (which warn without it). Any later
        attribute write through `Cache.open` drops it again, so it is never stale."""
        import warnings

        with warnings.catch_warnings():  # "not part of the v3 spec yet": xarray and zarr read it
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path), zarr_format=3)

    def require_complete(self):
        if not self.complete:
            done = self.chunk_done()
            raise CacheError(f"{self.path} is incomplete ({int(done.sum())}/{len(done)} chunks "
                             "written): run the same embed command again to finish it")

    # ---- writing ------------------------------------------------------------------------
    def write_chunk(self, chunk: int, pooled: dict[str, np.ndarray],
                    positions: dict[str, np.ndarray] | None, sequences: list[str] | None):
        """One row chunk's results; `positions`: {positions/<name> array: the chunk's values}."""
        begin = chunk * self.chunk_rows
        end = min(begin + self.chunk_rows, self.n_rows)
        for method, values in pooled.items():
            self._out[f"pooled/{method}"][begin:end] = values
        for name, values in (positions or {}).items():
            if len(values):
                start = int(self.group["positions/start"][begin])
                self._out[f"positions/{name}"][start: start + len(values)] = values
        if sequences is not None and "sequences" in self.group:
            self._out["sequences"][begin:end] = np.array(sequences, dtype=str)

    # ---- integrity (cache/integrity.py) ----------------------------------------------------
    @property
    def checksummed(self) -> bool:
        """Written with every chunk present and checksummed (schema 2 on)."""
        return int(self.group.attrs.get("schema_version", 1)) >= 2

    def _get(self, name: str, selection=slice(None), chunk_coords=None) -> np.ndarray:
        return integrity.read_checked(self, name, selection, chunk_coords)

    def damaged_row_chunks(self, deep: bool = True) -> dict[int, list[str]]:
        return integrity.damaged_row_chunks(self, deep)

    def verify(self) -> list[str]:
        """Every problem found, in words; empty when the cache is whole."""
        return integrity.problems(self)

    def meta_problems(self) -> list[str]:
        return integrity.meta_problems(self)

    def mark_damaged_undone(self) -> list[int]:
        """Before a resume: row chunks with damaged data are marked not done (recomputed)."""
        damaged = list(self.damaged_row_chunks(deep=True)) if self.checksummed else []
        for chunk in damaged:
            self._out["progress/chunk_done"][chunk] = False
        if damaged:
            self.group.attrs["complete"] = False
        return damaged

    # ---- reading ------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        data = self._get(name)
        # zarr hands variable-length strings back as numpy StringDType; plain objects travel better
        return data.astype(object) if data.dtype.kind == "T" else data

    @property
    def ids(self) -> np.ndarray:
        return self._read("ids")

    @property
    def groups(self) -> np.ndarray:
        return self._read("group")

    @property
    def pooling_methods(self) -> list[str]:
        return sorted(self.group["pooled"].array_keys())

    def pooled(self, method: str) -> np.ndarray:
        if method not in self.pooling_methods:  # never a path: '../ids' is no pooling
            raise CacheError(f"{self.path} has no pooled/{method}; it has "
                             f"{', '.join(self.pooling_methods)}")
        return self._get(f"pooled/{method}")

    @property
    def label_names(self) -> list[str]:
        return sorted(self.group["labels"].array_keys())

    def label(self, name: str) -> np.ndarray:
        if name not in self.label_names:
            raise CacheError(f"{self.path} carries no label {name!r}; it has "
                             f"{', '.join(self.label_names) or 'none'}")
        return self._read(f"labels/{name}")

    def sequences(self) -> np.ndarray:
        if "sequences" not in self.group:
            raise CacheError(f"{self.path} was made without --store-sequences")
        return self._read("sequences")

    def positions(self, row: int) -> np.ndarray:
        """Per-position embeddings of one row, shape (length, d)."""
        if "positions" not in self.group:
            raise CacheError(f"{self.path} holds no per-position embeddings")
        start = int(self._get("positions/start", row, [(row // self.chunk_rows,)]))
        length = int(self._get("positions/length", row, [(row // self.chunk_rows,)]))
        return self.position_values(start, length)

    @property
    def position_arrays(self) -> list[str]:
        """The positions/<name> value arrays its settings promise (the layout check holds it to
        them): values, and rc_values from embed --rc."""
        return layout.promised_position_arrays(self.attrs)

    def position_values(self, start: int, length: int, name: str = "values") -> np.ndarray:
        """positions/<name>[start : start + length], reading (and checking) only its chunks."""
        span = [(k, 0) for k in range(start // POSITION_CHUNK, -(-(start + length) // POSITION_CHUNK))]
        return self._get(f"positions/{name}", slice(start, start + length), span)

    @property
    def has_pairs(self) -> bool:
        return "pairs" in self.group

    def pairs(self) -> dict[str, np.ndarray]:
        """The variant pairs: id, ref_row, alt_row, alleles, sites, edge and strand."""
        if not self.has_pairs:
            raise CacheError(f"{self.path} holds no variant pairs (embed with --ref-col/--alt-col "
                             "or --genome)")
        return {name: self._read(f"pairs/{name}") for name in self.group["pairs"].array_keys()}

    # ---- tables for notebooks (cache/views.py) -----------------------------------------------
    def to_pandas(self, pool: str | None = None) -> "pd.DataFrame":
        """One row per cache row, indexed by id (see `views.to_pandas`)."""
        from .views import to_pandas

        return to_pandas(self, pool)

    def to_xarray(self) -> "xr.Dataset":
        """A lazy xarray Dataset of the pooled arrays and labels (see `views.to_xarray`)."""
        from .views import to_xarray

        return to_xarray(self)

    def summary(self) -> dict:
        from .views import summary

        return summary(self)
