"""The metadata a cache must have, checked before Zarr reads any of it.

Zarr trusts an array's zarr.json: a crafted shape allocates without bound, an unknown data type
or codec raises deep inside it, a chunk shape of 0 divides by zero. A cache's layout is fully
determined by its root attributes (rows, d_model, chunk_rows, dtype, pools, per-position,
labels, pairs), so every array's metadata is compared with what that layout promises, from
files read with a size bound and never through links. `problems` lists what differs, in words
naming the file; an array the settings promise and the folder lacks is one of them.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .safe_io import read_json

STRING, INT32, INT64, FLOAT64, BOOL = "string", "int32", "int64", "float64", "bool"
ROW_ARRAYS = {"ids": STRING, "group": STRING, "pack": INT32, "n_tokens": INT32,
              "n_truncated": INT32}
POSITION_ARRAYS = {"positions/start": INT64, "positions/length": INT32,
                   "positions/first_token": INT32}
STRAND_VALUES = ("values", "rc_values")  # positions/<name>: forward, reverse-complement strand
PAIR_ARRAYS = {"id": STRING, "ref_row": INT64, "alt_row": INT64, "ref_allele": STRING,
               "alt_allele": STRING, "strand": STRING, "ref_site": INT32, "alt_site": INT32,
               "edge": BOOL}
STORED_DTYPES = ("float16", "float32", "bfloat16")
CODECS = {"bytes", "vlen-utf8", "zstd", "crc32c", "blosc", "gzip"}
KEY_ENCODING = {"name": "default", "configuration": {"separator": "/"}}
MAX_ROWS, MAX_WIDTH, MAX_POSITIONS = 1 << 40, 1 << 16, 1 << 44


class LayoutError(UserError, ValueError):
    """Root metadata that does not describe a cache; the message names the file."""


def root_attributes(path: Path) -> dict:
    """The root group's attributes, checked for the facts the layout is derived from."""
    meta_file = Path(path) / "zarr.json"
    meta = read_json(meta_file)
    attrs = meta.get("attributes")
    if meta.get("node_type") != "group" or meta.get("zarr_format") != 3 or not isinstance(attrs, dict):
        raise LayoutError(f"{meta_file} is not the root of a Zarr v3 group")
    bad = [k for k, ok in (
        ("n_rows", _whole(attrs.get("n_rows"), 0, MAX_ROWS)),
        ("d_model", _whole(attrs.get("d_model"), 1, MAX_WIDTH)),
        ("chunk_rows", _whole(attrs.get("chunk_rows"), 1, MAX_ROWS)),
        ("dtype", attrs.get("dtype") in STORED_DTYPES),
        ("pooling", isinstance(attrs.get("pooling"), list)
         and all(isinstance(p, str) and p.isidentifier() for p in attrs["pooling"])),
        ("settings", isinstance(attrs.get("settings"), dict))) if not ok]
    if "format" in attrs and bad:
        raise LayoutError(f"{meta_file} is damaged: {', '.join(bad)} not as embed writes them")
    return attrs


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def position_arrays(per_position: bool, rc: bool) -> list[str]:
    """The per-position value arrays (positions/<name>) of a cache: the forward strand's, and
    with --rc the reverse complement's."""
    if not per_position:
        return []
    return list(STRAND_VALUES if rc else STRAND_VALUES[:1])


def promised_position_arrays(attrs: dict) -> list[str]:
    """`position_arrays` as a cache's root attributes promise them."""
    settings = attrs.get("settings") if isinstance(attrs.get("settings"), dict) else {}
    return position_arrays(bool(attrs.get("per_position")), settings.get("rc") is True)


def expected_arrays(attrs: dict, present: set[str]) -> dict[str, tuple]:
    """{array path: (shape, chunk shape, data types)} the root attributes promise. Shapes hold
    None where the layout leaves a length open (positions, pairs)."""
    n, d, rows = attrs["n_rows"], attrs["d_model"], attrs["chunk_rows"]
    stored, settings = attrs["dtype"], attrs["settings"]
    out = {name: ((n,), (rows,), (t,)) for name, t in ROW_ARRAYS.items()}
    out["progress/chunk_done"] = ((-(-n // rows),), (1,), (BOOL,))
    for pool in attrs["pooling"]:
        out[f"pooled/{pool}"] = ((n, d), (rows, d), (stored,))
    if settings.get("store_sequences"):
        out["sequences"] = ((n,), (rows,), (STRING,))
    labels = settings.get("labels") if isinstance(settings.get("labels"), list) else []
    for label in labels:
        out[f"labels/{label}"] = ((n,), (rows,), (FLOAT64, STRING))
    for name in promised_position_arrays(attrs):
        out[f"positions/{name}"] = ((None, d), (4096, d), (stored,))
    if attrs.get("per_position"):
        out.update({k: ((n,), (rows,), (t,)) for k, t in POSITION_ARRAYS.items()})
    if "site_token" in present or any(p in ("site", "sitewin") for p in attrs["pooling"]):
        out["site_token"] = ((n,), (rows,), (INT32,))
    if any(p.startswith("pairs/") for p in present):
        out.update({f"pairs/{k}": ((None,), (None,), (t,)) for k, t in PAIR_ARRAYS.items()})
    return out


def present_arrays(path: Path) -> set[str]:
    """Paths of the arrays in the folder (a zarr.json below the root), links never followed."""
    found = set()
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "c"]  # chunk folders hold no metadata
        if "zarr.json" in files and Path(root) != Path(path):
            found.add(Path(root).relative_to(path).as_posix())
    return found


def problems(path: str | Path, attrs: dict) -> list[str]:
    """Every way the arrays' metadata differs from what the layout promises, in words."""
    path = Path(path)
    present = present_arrays(path)
    stray = [os.path.relpath(os.path.join(r, f), path) for r, _, files in os.walk(path)
             for f in files if f in (".zarray", ".zgroup", ".zattrs")]
    out = [f"{s} is Zarr v2 metadata, which a cache never holds" for s in stray[:3]]
    expected = expected_arrays(attrs, present)
    pair_lengths = set()
    for name, (shape, chunks, types) in expected.items():
        if name not in present:
            out.append(f"{name} is missing")
            continue
        try:
            meta = read_json(path / name / "zarr.json")
            why = _array_problem(meta, shape, chunks, types, attrs.get("schema_version", 1))
            if name.startswith("pairs/") and not why:
                pair_lengths.add(meta["shape"][0])
        except UserError as exc:
            why = str(exc)
        if why:
            out.append(f"{name}/zarr.json: {why}")
    if len(pair_lengths) > 1:
        out.append("pairs/* arrays disagree on the number of pairs")
    return out


def _array_problem(meta: dict, shape, chunks, types, schema: int) -> str | None:
    if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
        return "not a Zarr v3 array"
    got_shape = meta.get("shape")
    if not isinstance(got_shape, list) or len(got_shape) != len(shape) \
            or not all(_whole(s, 0, MAX_POSITIONS) for s in got_shape) \
            or any(want is not None and want != got for want, got in zip(shape, got_shape)):
        return f"shape {got_shape!r}, not {list(shape)!r}"
    grid = meta.get("chunk_grid") if isinstance(meta.get("chunk_grid"), dict) else {}
    got_chunks = (grid.get("configuration") or {}).get("chunk_shape") \
        if isinstance(grid.get("configuration"), dict) else None
    if grid.get("name") != "regular" or not isinstance(got_chunks, list) \
            or len(got_chunks) != len(chunks) or not all(_whole(c, 1, MAX_POSITIONS) for c in got_chunks) \
            or any(want is not None and want != got for want, got in zip(chunks, got_chunks)):
        return f"chunk shape {got_chunks!r}, not {list(chunks)!r}"
    if None in chunks and got_chunks[0] < max(1, got_shape[0]):
        return "pair chunks smaller than the pair count"
    if meta.get("data_type") not in types:
        return f"data type {meta.get('data_type')!r}, not {' or '.join(types)}"
    codecs = meta.get("codecs")
    names = [c.get("name") for c in codecs if isinstance(c, dict)] if isinstance(codecs, list) else []
    if not names or len(names) != len(codecs) or set(names) - CODECS \
            or (schema >= 2 and names[-1] != "crc32c") \
            or not all(_codec_ok(c) for c in codecs):
        return f"codecs {names or codecs!r} are not the ones embed writes"
    if meta.get("chunk_key_encoding") != KEY_ENCODING or meta.get("storage_transformers", []) != []:
        return "chunk keys or storage transformers are not the ones embed writes"
    fill, kind = meta.get("fill_value"), meta["data_type"]
    if not (isinstance(fill, str) if kind == STRING else isinstance(fill, bool) if kind == BOOL
            else isinstance(fill, (int, float)) and not isinstance(fill, bool) or fill in ("NaN",)):
        return f"fill value {fill!r} does not fit its data type"
    return None


def _codec_ok(codec: dict) -> bool:
    config = codec.get("configuration", {})
    if not isinstance(config, dict):
        return False
    if codec["name"] == "bytes":
        return set(config) <= {"endian"} and config.get("endian", "little") in ("little", "big")
    if codec["name"] == "zstd":
        return set(config) <= {"level", "checksum"} and _whole(config.get("level", 0), -131072, 22) \
            and isinstance(config.get("checksum", False), bool)
    return codec["name"] in ("blosc", "gzip") or not config
