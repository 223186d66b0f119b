"""A cache's integrity: every chunk present and its checksum right, read or verified.

Missing chunks are never read as fill values and corrupt ones never as numbers: a read that
meets either raises CacheError naming the array. `problems` lists everything wrong with a
cache in words; a resumed run recomputes the row chunks `damaged_row_chunks` names. The
messages describe the data, not a command: the layers above say which command repairs it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import zarr

from .errors import UserError

if TYPE_CHECKING:
    from .store import Cache

def missing_chunks(cache: "Cache", arr: zarr.Array, coords=None) -> list[tuple[int, ...]]:
    """Chunk coordinates of `arr` (all, or those given) with no file on disk."""
    if coords is None:
        grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
        coords = np.ndindex(*[len(g) for g in grid])
    root = cache.path / arr.path
    return [tuple(c) for c in coords if not (root / arr.metadata.encode_chunk_key(tuple(c))).exists()]


def damaged(cache: "Cache", name: str, detail: str) -> UserError:
    from .store import CacheError

    return CacheError(f"{cache.path} is damaged: {name} {detail}; verifying the cache lists every "
                      "problem, and rerunning the run that wrote it (same output, same settings) "
                      "recomputes what is damaged")


def read_checked(cache: "Cache", name: str, selection=slice(None), chunk_coords=None) -> np.ndarray:
    """Read an array, refusing missing chunks (never fill values) and bad checksums."""
    arr = cache.group[name]
    if cache.checksummed:
        missing = missing_chunks(cache, arr, chunk_coords)
        if missing:
            raise damaged(cache, name, f"misses {len(missing)} chunk(s), e.g. {missing[0]}")
    try:
        return arr[selection]
    except ValueError as exc:  # checksum mismatch or undecodable (truncated) chunk
        raise damaged(cache, name, f"has a corrupt chunk ({exc})") from None


def damaged_row_chunks(cache: "Cache", deep: bool = True) -> dict[int, list[str]]:
    """Row chunks whose embedded data (pooled, per-position, sequences) is missing or (with
    `deep`, by reading every chunk) corrupt: {row chunk: [array names]}."""
    found: dict[int, list[str]] = {}
    names = [f"pooled/{m}" for m in cache.pooling_methods]
    names += ["sequences"] if "sequences" in cache.group else []
    for name in names:
        arr = cache.group[name]
        for coords in missing_chunks(cache, arr):
            found.setdefault(coords[0], []).append(name)
        if deep:
            for c in range(arr.cdata_shape[0]):
                try:
                    arr[c * arr.chunks[0]: (c + 1) * arr.chunks[0]]
                except ValueError:
                    found.setdefault(c, []).append(name)
    for name in cache.position_arrays:
        for c in _damaged_position_chunks(cache, f"positions/{name}", deep):
            found.setdefault(c, []).append(f"positions/{name}")
    return {c: sorted(set(v)) for c, v in sorted(found.items())}


def _damaged_position_chunks(cache: "Cache", name: str, deep: bool) -> list[int]:
    values = cache.group[name]
    starts = cache.group["positions/start"][:]
    lengths = cache.group["positions/length"][:].astype(np.int64)
    out = []
    for c in range(-(-cache.n_rows // cache.chunk_rows)):
        rows = slice(c * cache.chunk_rows, (c + 1) * cache.chunk_rows)
        begin, end = int(starts[rows][0]), int((starts[rows] + lengths[rows]).max())
        if end <= begin:
            continue
        span = range(begin // values.chunks[0], -(-end // values.chunks[0]))
        bad = bool(missing_chunks(cache, values, [(k, 0) for k in span]))
        if not bad and deep:
            try:
                values[begin:end]
            except ValueError:
                bad = True
        if bad:
            out.append(c)
    return out


def problems(cache: "Cache") -> list[str]:
    """Every problem found, in words; empty when the cache is whole."""
    out = []
    structure = cache.structure_problems()
    if structure:  # reading chunks of arrays whose metadata is wrong could mislead or fail
        return structure + ([] if cache.complete else ["incomplete"])
    if not cache.checksummed:
        out.append("written before chunk checksums (schema 1): missing chunks cannot be told "
                   "from empty ones; embed again into a new output folder to get them")
    if not cache.complete:
        done = cache.chunk_done()
        out.append(f"incomplete: {int(done.sum())}/{len(done)} chunks written")
    out += meta_problems(cache)
    if cache.checksummed:
        for chunk, names in damaged_row_chunks(cache, deep=True).items():
            rows = f"{chunk * cache.chunk_rows}-{min((chunk + 1) * cache.chunk_rows, cache.n_rows) - 1}"
            out.append(f"row chunk {chunk} (rows {rows}): {', '.join(names)} missing or corrupt")
    return out


def meta_problems(cache: "Cache") -> list[str]:
    """Damage to the per-row arrays written before embedding (ids, labels, ...)."""
    g = cache.group
    names = ["ids", "group", "pack", "n_tokens", "n_truncated",
             *[f"labels/{n}" for n in cache.label_names],
             *[f"positions/{n}" for n in ("start", "length", "first_token") if "positions" in g],
             *(["site_token"] if "site_token" in g else []),
             *[f"pairs/{n}" for n in (g["pairs"].array_keys() if cache.has_pairs else [])]]
    out = []
    for name in names:
        try:
            read_checked(cache, name)
        except UserError as exc:
            out.append(str(exc).split("; verifying")[0].replace(f"{cache.path} is damaged: ", ""))
    return out
