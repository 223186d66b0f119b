"""Reading sequences: FASTA(.gz), CSV/TSV(.gz), Parquet, Hugging Face datasets.

Every reader streams `Record`s (id, one or several sequences, carried labels); `plan_rows` turns
records into the rows that get embedded: one per record, or, for a list of reads, reads joined
with [SEP] up to the model's context and cut into `packs` disjoint rows of one group.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cache.errors import UserError

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
FORMATS = ("auto", "fasta", "table", "parquet", "hf")


# cells read as missing in label columns (ids and sequences are read as written)
NA_TEXTS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "-"]

class InputError(UserError, ValueError):
    """Bad input: the message names the file, record or column and what to do."""


@dataclass
class Record:
    id: str
    parts: list[str]  # one sequence, or the reads of one sample
    labels: dict[str, Any] = field(default_factory=dict)
    site: int | None = None  # a variant's index in the sequence (variant pairs only)


@dataclass
class Row:
    """One embedded row: a sequence, a joined set of reads, or one pack of a sample."""
    id: str
    group: str  # the sample a pack belongs to (its own id otherwise)
    pack: int
    parts: list[str]
    labels: dict[str, Any]
    reads_left_out: int = 0
    site: int | None = None


def open_text(path: str | Path):
    path = Path(path)
    # utf-8-sig: a byte-order mark (as some Windows editors write) is read as nothing
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, "rt", encoding="utf-8-sig")


def is_missing(value) -> bool:
    """An absent label or input value: None, '' or NaN."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def detect_format(path: str) -> str:
    p = Path(path)
    if not p.exists():
        if _base_suffix(p) in (*FASTA_SUFFIXES, *TABLE_SUFFIXES, ".parquet"):
            raise InputError(f"{path}: no such file")
        return "hf"  # a hub dataset name
    if p.is_dir():
        return "parquet" if any(p.glob("*.parquet")) and not (p / "dataset_info.json").exists() \
            and not (p / "state.json").exists() else "hf"
    suffix = _base_suffix(p)
    if suffix in FASTA_SUFFIXES:
        return "fasta"
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix == ".parquet":
        return "parquet"
    raise InputError(f"{path}: cannot tell the format from the name; pass --format "
                     f"({', '.join(FORMATS[1:])})")


def read_fasta(path: str) -> Iterator[Record]:
    seq_id, chunks, seen_header = None, [], False
    with open_text(path) as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                if seq_id is not None:
                    yield Record(seq_id, ["".join(chunks)])
                seq_id = line[1:].split()[0] if line[1:].strip() else None
                if seq_id is None:
                    raise InputError(f"{path}:{number}: FASTA header without an id")
                chunks, seen_header = [], True
            elif not seen_header:
                raise InputError(f"{path}:{number}: sequence before the first '>' header; "
                                 "is this a FASTA file?")
            else:
                chunks.append(line)
    if seq_id is not None:
        yield Record(seq_id, ["".join(chunks)])


def _missing_columns(wanted: Sequence[str], available: Sequence[str], source: str):
    missing = [c for c in wanted if c not in available]
    if missing:
        raise InputError(f"{source}: column(s) {', '.join(missing)} not found; "
                         f"available: {', '.join(map(str, available))}")


def _as_parts(value, record_id) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise InputError(f"record {record_id!r}: sequence column holds {type(value).__name__}, "
                     "expected a string or a list of strings")


def _records_from_batches(batches: Iterator[dict], seq_col: str, id_col: str | None,
                          label_cols: Sequence[str], source: str) -> Iterator[Record]:
    """Records from column batches (dict of column -> list), checking the columns once."""
    row_number = 0
    for batch in batches:
        if row_number == 0:
            _missing_columns([seq_col, *([id_col] if id_col else []), *label_cols],
                             list(batch), source)
        n = len(batch[seq_col])
        for i in range(n):
            rid = str(batch[id_col][i]) if id_col else str(row_number)
            yield Record(rid, _as_parts(batch[seq_col][i], rid),
                         {c: batch[c][i] for c in label_cols})
            row_number += 1


def read_table(path: str, seq_col: str, id_col: str | None, label_cols: Sequence[str],
               chunk_rows: int = 50_000) -> Iterator[Record]:
    import pandas as pd

    sep = "," if _base_suffix(Path(path)) == ".csv" else "\t"
    try:
        # every column as text: ids stay as written ("007", "1e5"); labels are typed later
        # by one rule (typed_labels), not guessed per chunk
        reader = pd.read_csv(path, sep=sep, chunksize=chunk_rows, dtype=str, keep_default_na=True)
        batches = ({c: chunk[c].tolist() for c in chunk.columns} for chunk in reader)
        yield from _records_from_batches(batches, seq_col, id_col, label_cols, path)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: the file is empty") from exc


def read_parquet(path: str, seq_col: str, id_col: str | None, label_cols: Sequence[str],
                 chunk_rows: int = 50_000) -> Iterator[Record]:
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    batches = (b.to_pydict() for b in dataset.to_batches(batch_size=chunk_rows))
    yield from _records_from_batches(batches, seq_col, id_col, label_cols, path)


def read_hf(spec: str, seq_col: str, id_col: str | None, label_cols: Sequence[str],
            split: str | None = None, chunk_rows: int = 2_000) -> Iterator[Record]:
    import datasets

    p = Path(spec)
    try:
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_info.json").exists()
                           or (p / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(p))
        else:
            data = datasets.load_dataset(spec, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise InputError(f"cannot load dataset {spec!r}: {exc}") from exc
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            raise InputError(f"{spec} has splits {', '.join(data)}: pick one with --split")
        if split not in data:
            raise InputError(f"{spec}: no split {split!r}; available: {', '.join(data)}")
        data = data[split]
    _missing_columns([seq_col, *([id_col] if id_col else []), *label_cols], data.column_names, spec)
    yield from _records_from_batches(data.iter(batch_size=chunk_rows), seq_col, id_col,
                                     label_cols, spec)


LABEL_TYPES = ("auto", "numeric", "text")


def typed_labels(labels: dict[str, list], label_type: str = "auto") -> dict[str, list]:
    """Each label column as numbers (float, NaN where missing) or as text, by one rule: a
    column is numeric when every present value parses as a number. A column that is mostly
    numbers with a few other values is an error naming them, unless --label-type says text."""
    if label_type not in LABEL_TYPES:
        raise InputError(f"--label-type must be one of {', '.join(LABEL_TYPES)}")
    out = {}
    for name, values in labels.items():
        present = [v for v in values if not is_missing(v)]
        bad = []
        for v in present:
            try:
                float(v)
            except (TypeError, ValueError):
                bad.append(str(v))
        numeric = not bad if label_type == "auto" else label_type == "numeric"
        if numeric and bad:
            raise InputError(f"label {name!r}: --label-type numeric, but {len(bad)} value(s) are "
                             f"not numbers: {', '.join(repr(b) for b in sorted(set(bad))[:5])}")
        if label_type == "auto" and bad and len(bad) <= 0.1 * len(present):
            raise InputError(
                f"label {name!r} is numeric except {len(bad)} value(s): "
                f"{', '.join(repr(b) for b in sorted(set(bad))[:5])}. Fix them in the file "
                "(decimal point, not comma; leave missing values empty), or pass --label-type "
                "text if the column is really categorical")
        out[name] = [float("nan") if is_missing(v) else (float(v) if numeric else str(v))
                     for v in values]
    return out


def record_reader(path: str, fmt: str = "auto", seq_col: str | None = None,
                  id_col: str | None = None, label_cols: Sequence[str] = (),
                  split: str | None = None) -> Callable[[], Iterator[Record]]:
    """A factory of fresh record iterators (the embed run reads its input twice)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "fasta":
        if label_cols:
            raise InputError("FASTA input carries no label columns; join labels at fit-head "
                             "time with --labels FILE")
        return lambda: _readable(path, read_fasta(path))
    if seq_col is None:
        raise InputError(f"{path} is a {fmt} input: say which column holds the sequences "
                         "with --seq-col")
    if fmt != "hf" and not Path(path).exists():
        raise InputError(f"{path}: no such file")
    readers = {"table": read_table, "parquet": read_parquet}
    if fmt == "hf":
        return lambda: read_hf(path, seq_col, id_col, label_cols, split)
    return lambda: _readable(path, readers[fmt](path, seq_col, id_col, label_cols))


def _readable(path: str, records: Iterator[Record]) -> Iterator[Record]:
    """A damaged file (truncated or corrupt gzip, bad bytes, broken Parquet) is an InputError
    naming it, never a traceback (or click's bare 'Aborted!' on EOFError)."""
    import zlib

    try:
        yield from records
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot read it ({type(exc).__name__}: {exc}); is the file "
                         "complete and in the format its name says?") from None


def pack_reads(reads: Sequence[str], budget: int, packs: int) -> tuple[list[list[str]], int]:
    """Greedily fill up to `packs` disjoint sets of whole reads, each within `budget` tokens.

    Each read costs its length plus one [SEP] between reads. A read longer than the whole
    budget gets a pack of its own (the tokenizer truncates it). Returns the packs and the
    number of reads left out because every pack was full.
    """
    filled: list[list[str]] = []
    used = 0
    for index, read in enumerate(reads):
        cost = len(read) + (1 if filled and filled[-1] else 0)
        if filled and filled[-1] and used + cost <= budget:
            filled[-1].append(read)
            used += cost
            continue
        if len(filled) == packs:
            return filled, len(reads) - index
        filled.append([read])
        used = len(read)
    return filled, 0


def plan_rows(records: Iterator[Record], budget: int, packs: int | None) -> Iterator[Row]:
    """Rows to embed. A record with several reads becomes `packs` rows (default 1) of one group."""
    for rec in records:
        if len(rec.parts) <= 1:
            yield Row(rec.id, rec.id, 0, rec.parts, rec.labels, site=rec.site)
            continue
        filled, left_out = pack_reads(rec.parts, budget, packs or 1)
        if packs is None:
            yield Row(rec.id, rec.id, 0, filled[0], rec.labels, left_out)
            continue
        for k, part in enumerate(filled):
            yield Row(f"{rec.id}/pack{k}", rec.id, k, part, rec.labels,
                      left_out if k == len(filled) - 1 else 0)
