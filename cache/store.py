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
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

FORMAT = "hyena-embed-cache"
SCHEMA_VERSION = 1
POSITION_CHUNK = 4096  # positions per Zarr chunk of positions/values


class CacheError(ValueError):
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
    try:
        return np.array([np.nan if v is None or v == "" else float(v) for v in values],
                        dtype=np.float64)
    except (TypeError, ValueError):
        return np.array(["" if v is None else str(v) for v in values], dtype=str)


def _zarr_dtype(data: np.ndarray):
    # numpy's fixed-width unicode has no Zarr v3 spec; variable-length UTF-8 does
    return str if data.dtype.kind in "UO" else data.dtype


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
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        g = zarr.open_group(str(path), mode="w", zarr_format=3)
        n = meta.n_rows
        rows = (chunk_rows,)

        def put(name, data, chunks=rows, dims=("row",)):
            arr = g.create_array(name, shape=data.shape, chunks=chunks, dtype=_zarr_dtype(data),
                                 dimension_names=dims)
            arr[...] = data

        put("ids", np.array(meta.ids, dtype=str))
        put("group", np.array(meta.groups, dtype=str))
        put("pack", np.array(meta.packs, dtype=np.int32))
        put("n_tokens", np.array(meta.n_tokens, dtype=np.int32))
        put("n_truncated", np.array(meta.n_truncated, dtype=np.int32))
        if store_sequences:
            g.create_array("sequences", shape=(n,), chunks=rows, dtype=str,
                           dimension_names=("row",))
        labels = g.create_group("labels")
        for name, values in meta.labels.items():
            data = _label_array(values)
            arr = labels.create_array(name, shape=(n,), chunks=rows, dtype=_zarr_dtype(data),
                                      dimension_names=("row",))
            arr[...] = data
        pooled = g.create_group("pooled")
        for method in pools:
            pooled.create_array(method, shape=(n, d_model), chunks=(chunk_rows, d_model),
                                dtype=dtype, dimension_names=("row", "feature"))
        if per_position:
            lengths = np.array(meta.position_length, dtype=np.int64)
            starts, total = position_starts(lengths, chunk_rows)
            pos = g.create_group("positions")
            pos.create_array("values", shape=(max(total, 1), d_model),
                             chunks=(POSITION_CHUNK, d_model), dtype=dtype,
                             dimension_names=("position", "feature"))
            for name, data in [("start", starts), ("length", lengths.astype(np.int32)),
                               ("first_token", np.array(meta.position_first, dtype=np.int32))]:
                arr = pos.create_array(name, shape=(n,), chunks=rows, dtype=data.dtype,
                                       dimension_names=("row",))
                arr[...] = data
        if meta.sites is not None:
            put("site_token", np.array(meta.sites, dtype=np.int32))
        if pairs is not None:
            _write_pairs(g, pairs, meta.ids)
        n_chunks = -(-n // chunk_rows)
        g.create_group("progress").create_array(
            "chunk_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False,
            dimension_names=("chunk",))
        from hyena_embed import __version__

        g.attrs.update({
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "settings": settings,
            **facts, "d_model": d_model, "n_rows": n, "chunk_rows": chunk_rows,
            "dtype": dtype, "pooling": pools, "per_position": per_position,
            "package_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "complete": False,
        })
        g.attrs["initialised"] = True  # last: a half-made store is recreated, not resumed
        return cls(g, path)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Cache":
        path = Path(path)
        if not path.exists():
            raise CacheError(f"{path}: no such cache")
        try:
            # the files themselves, never a consolidated copy that a later write made stale
            g = zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)
        except Exception as exc:  # zarr raises several kinds for a non-store folder
            raise CacheError(f"{path} is not a Zarr cache: {exc}") from exc
        if g.attrs.get("format") != FORMAT:
            raise CacheError(f"{path} is not a hyena-embed cache")
        return cls(g, path)

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
        return self.group["progress/chunk_done"][:]

    def mark_done(self, chunk: int):
        self.group["progress/chunk_done"][chunk] = True

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
                    positions: np.ndarray | None, sequences: list[str] | None):
        begin = chunk * self.chunk_rows
        end = min(begin + self.chunk_rows, self.n_rows)
        for method, values in pooled.items():
            self.group[f"pooled/{method}"][begin:end] = values
        if positions is not None and len(positions):
            start = int(self.group["positions/start"][begin])
            self.group["positions/values"][start: start + len(positions)] = positions
        if sequences is not None and "sequences" in self.group:
            self.group["sequences"][begin:end] = np.array(sequences, dtype=str)

    # ---- reading ------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        data = self.group[name][:]
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
        if method not in self.group["pooled"]:
            raise CacheError(f"{self.path} has no pooled/{method}; it has "
                             f"{', '.join(self.pooling_methods)}")
        return self.group[f"pooled/{method}"][:]

    @property
    def label_names(self) -> list[str]:
        return sorted(self.group["labels"].array_keys())

    def label(self, name: str) -> np.ndarray:
        if name not in self.group["labels"]:
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
        start = int(self.group["positions/start"][row])
        length = int(self.group["positions/length"][row])
        return self.group["positions/values"][start: start + length]

    @property
    def has_pairs(self) -> bool:
        return "pairs" in self.group

    def pairs(self) -> dict[str, np.ndarray]:
        """The variant pairs: id, ref_row, alt_row, alleles, sites, edge and strand."""
        if not self.has_pairs:
            raise CacheError(f"{self.path} holds no variant pairs (embed with --ref-col/--alt-col "
                             "or --genome)")
        return {name: self._read(f"pairs/{name}") for name in self.group["pairs"].array_keys()}

    # ---- tables for notebooks -------------------------------------------------------------
    def to_pandas(self, pool: str | None = None) -> "pd.DataFrame":
        """One row per cache row, indexed by id: group, pack, n_tokens, n_truncated, every
        label, and with `pool` its vector as columns `<pool>_0 .. <pool>_{d-1}`.

        >>> df = Cache.open("seqs.zarr").to_pandas(pool="mean")  # doctest: +SKIP
        >>> df.filter(like="mean_").to_numpy().shape             # doctest: +SKIP
        (1000, 256)
        """
        import pandas as pd

        self.require_complete()
        table = pd.DataFrame({"group": self.groups, "pack": self._read("pack"),
                              "n_tokens": self._read("n_tokens"),
                              "n_truncated": self._read("n_truncated"),
                              **{name: self.label(name) for name in self.label_names}},
                             index=pd.Index(self.ids, name="id"))
        if pool is not None:
            vectors = self.pooled(pool).astype(np.float32)
            columns = [f"{pool}_{j}" for j in range(vectors.shape[1])]
            table = pd.concat([table, pd.DataFrame(vectors, index=table.index, columns=columns)],
                              axis=1)
        return table

    def to_xarray(self) -> "xr.Dataset":
        """A lazy xarray Dataset: `pooled_<method>` (row, feature), one `label_<name>` per
        label, and coordinates id, group and pack along `row`. Arrays stay on disk until used
        (dask-backed when dask is installed).

        >>> ds = Cache.open("seqs.zarr").to_xarray()             # doctest: +SKIP
        >>> ds.pooled_mean.sel(row=ds.group == "sample7").mean("row")  # doctest: +SKIP
        """
        import warnings

        import xarray as xr

        self.require_complete()
        with warnings.catch_warnings():  # consolidated metadata, written on completion
            warnings.simplefilter("ignore")
            pooled = xr.open_zarr(str(self.path), group="pooled", consolidated=None)
        ds = pooled.rename({m: f"pooled_{m}" for m in pooled.data_vars})
        ds = ds.assign_coords(id=("row", self.ids.astype(str)), group=("row", self.groups.astype(str)),
                              pack=("row", self._read("pack")))
        for name in self.label_names:
            values = self.label(name)
            ds[f"label_{name}"] = ("row", values.astype(str) if values.dtype == object else values)
        ds.attrs.update({k: v for k, v in self.summary().items() if isinstance(v, (str, int, float))})
        return ds

    def summary(self) -> dict:
        a = self.attrs
        done = self.chunk_done()
        out = {k: a.get(k) for k in ("model", "weights_sha256", "random_init", "d_model",
                                     "layer", "pooling", "per_position", "dtype", "n_rows",
                                     "package_version", "created", "complete")}
        out["chunks_written"] = f"{int(done.sum())}/{len(done)}"
        out["labels"] = self.label_names
        if self.has_pairs:
            out["variant_pairs"] = int(self.group["pairs/id"].shape[0])
        out["tokenizer"] = a.get("settings", {}).get("tokenizer")
        return out


def _write_pairs(g: zarr.Group, pairs: dict, row_ids: list[str]):
    """pairs/* arrays (dimension `pair`): row indices of both alleles of every pair whose two
    rows were embedded (a pair loses both rows or neither when labels are missing)."""
    index = {rid: i for i, rid in enumerate(row_ids)}
    keep = [k for k, (r, a) in enumerate(zip(pairs["ref_id"], pairs["alt_id"]))
            if r in index and a in index]
    group = g.create_group("pairs")
    columns = {"id": np.array([pairs["id"][k] for k in keep], dtype=str),
               "ref_row": np.array([index[pairs["ref_id"][k]] for k in keep], dtype=np.int64),
               "alt_row": np.array([index[pairs["alt_id"][k]] for k in keep], dtype=np.int64)}
    for name in ("ref_allele", "alt_allele", "strand"):
        columns[name] = np.array([str(pairs[name][k]) for k in keep], dtype=str)
    for name in ("ref_site", "alt_site"):
        columns[name] = np.array([pairs[name][k] for k in keep], dtype=np.int32)
    columns["edge"] = np.array([bool(pairs["edge"][k]) for k in keep], dtype=bool)
    for name, data in columns.items():
        arr = group.create_array(name, shape=data.shape, chunks=(max(1, len(data)),),
                                 dtype=_zarr_dtype(data), dimension_names=("pair",))
        arr[...] = data


def describe(path: str | Path) -> str:
    cache = Cache.open(path)
    return json.dumps(cache.summary(), indent=2, default=str)
