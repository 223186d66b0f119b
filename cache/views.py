"""A complete cache as a pandas table or a lazy xarray Dataset, for notebooks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import integrity

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from .store import Cache


def to_pandas(cache: "Cache", pool: str | None = None) -> "pd.DataFrame":
    """One row per cache row, indexed by id: group, pack, n_tokens, n_truncated, every
    label, and with `pool` its vector as columns `<pool>_0 .. <pool>_{d-1}`.

    >>> df = Cache.open("seqs.zarr").to_pandas(pool="mean")  # doctest: +SKIP
    >>> df.filter(like="mean_").to_numpy().shape             # doctest: +SKIP
    (1000, 256)
    """
    import pandas as pd

    cache.require_complete()
    table = pd.DataFrame({"group": cache.groups, "pack": cache._read("pack"),
                          "n_tokens": cache._read("n_tokens"),
                          "n_truncated": cache._read("n_truncated"),
                          **{name: cache.label(name) for name in cache.label_names}},
                         index=pd.Index(cache.ids, name="id"))
    if pool is not None:
        vectors = cache.pooled(pool).astype(np.float32)
        columns = [f"{pool}_{j}" for j in range(vectors.shape[1])]
        table = pd.concat([table, pd.DataFrame(vectors, index=table.index, columns=columns)],
                          axis=1)
    return table

def to_xarray(cache: "Cache") -> "xr.Dataset":
    """A lazy xarray Dataset: `pooled_<method>` (row, feature), one `label_<name>` per
    label, and coordinates id, group and pack along `row`. Arrays stay on disk until used
    (dask-backed when dask is installed).

    >>> ds = Cache.open("seqs.zarr").to_xarray()             # doctest: +SKIP
    >>> ds.pooled_mean.sel(row=ds.group == "sample7").mean("row")  # doctest: +SKIP
    """
    import warnings

    import xarray as xr

    cache.require_complete()
    for method in cache.pooling_methods:  # lazy reads skip _get: check for missing chunks here
        arr = cache.group[f"pooled/{method}"]
        missing = integrity.missing_chunks(cache, arr) if cache.checksummed else []
        if missing:
            raise integrity.damaged(cache, f"pooled/{method}", f"misses {len(missing)} chunk(s)")
    with warnings.catch_warnings():  # consolidated metadata, written on completion
        warnings.simplefilter("ignore")
        pooled = xr.open_zarr(str(cache.path), group="pooled", consolidated=None)
    ds = pooled.rename({m: f"pooled_{m}" for m in pooled.data_vars})
    ds = ds.assign_coords(id=("row", cache.ids.astype(str)), group=("row", cache.groups.astype(str)),
                          pack=("row", cache._read("pack")))
    for name in cache.label_names:
        values = cache.label(name)
        ds[f"label_{name}"] = ("row", values.astype(str) if values.dtype == object else values)
    ds.attrs.update({k: v for k, v in cache.summary().items() if isinstance(v, (str, int, float))})
    return ds


def summary(cache: "Cache") -> dict:
    """The facts `info` shows: model, weights, layer, pooling, rows, chunks written, labels."""
    a = cache.attrs
    done = cache.chunk_done()
    out = {k: a.get(k) for k in ("model", "weights_sha256", "random_init", "d_model",
                                 "layer", "pooling", "per_position", "dtype", "n_rows",
                                 "package_version", "created", "complete", "command")}
    out["chunks_written"] = f"{int(done.sum())}/{len(done)}"
    out["labels"] = cache.label_names
    if cache.has_pairs:
        out["variant_pairs"] = int(cache.group["pairs/id"].shape[0])
    out["tokenizer"] = a.get("settings", {}).get("tokenizer")
    return out


def describe(path: str | Path) -> str:
    from .store import Cache

    return json.dumps(summary(Cache.open(path)), indent=2, default=str)
