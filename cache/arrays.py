"""Zarr arrays as the cache writes them: every chunk written, even one equal to the fill value,
and compressed with a CRC32C checksum, so damage is always seen (cache/integrity.py)."""
from __future__ import annotations

import numpy as np
import zarr

ARRAY_CONFIG = {"write_empty_chunks": True}  # a missing chunk file is damage, never "all fill"


def compressors():
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0), Crc32cCodec()]


def zarr_dtype(data: np.ndarray):
    # numpy's fixed-width unicode has no Zarr v3 spec; variable-length UTF-8 does
    return str if data.dtype.kind in "UO" else data.dtype


class Writer:
    """Arrays looked up for writing: every chunk is written, even one equal to the fill value
    (Zarr's runtime setting, which is not stored with the array, so it is set on each lookup)."""

    def __init__(self, group: zarr.Group):
        self.group = group

    def __getitem__(self, name: str) -> zarr.Array:
        with zarr.config.set({"array.write_empty_chunks": True}):
            return self.group[name]


def array(group: zarr.Group, name: str, shape, chunks, dtype, dims=("row",)) -> zarr.Array:
    """An array whose every chunk is written and checksummed (see the module docstring)."""
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims,
                              compressors=compressors(), config=ARRAY_CONFIG)


def write_pairs(g: zarr.Group, pairs: dict, row_ids: list[str]):
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
        array(group, name, data.shape, (max(1, len(data)),), zarr_dtype(data), ("pair",))[...] = data
