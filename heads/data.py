"""From a cache to a supervised table: features, labels, groups and a fixed split."""
from __future__ import annotations

from dataclasses import dataclass
import sys
from pathlib import Path

import numpy as np

from cache.errors import UserError
from cache.store import Cache, CacheError
from hyena_embed.inputs import NA_TEXTS

SPLITS = ("train", "val", "test")
MIN_GROUPS = 5  # fewer validation or test samples than this cannot be scored meaningfully


class DataError(UserError, ValueError):
    """Labels, splits or features that cannot be assembled; the message says why."""


@dataclass
class Supervised:
    ids: np.ndarray  # row ids
    groups: np.ndarray  # sample ids (packs of one sample share one)
    y: np.ndarray  # (n,) or (n, targets)
    split: np.ndarray  # 'train' | 'val' | 'test' per row
    task: str
    target_names: list[str]
    dropped: int = 0  # rows without a label
    carved_val: bool = False  # the split column had no 'val': 10% of train groups became it

    def mask(self, name: str) -> np.ndarray:
        return self.split == name

    def split_fingerprint(self) -> str:
        """Which samples are in which part: equal fingerprints mean the same split."""
        import hashlib

        pairs = sorted(set(zip(map(str, self.groups), map(str, self.split))))
        return hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


MAX_KMER_K = 8  # 87,380 columns; more is never a useful baseline
KMER_BYTES = 8 << 30  # refuse k-mer tables larger than 8 GiB up front


def kmer_features(sequences, max_k: int = 6) -> np.ndarray:
    """Normalised k-mer counts for k = 1..max_k (k-mers across '|' or N are skipped)."""
    lookup = np.full(256, -1, dtype=np.int64)
    for i, base in enumerate("ACGT"):
        lookup[ord(base)] = lookup[ord(base.lower())] = i
    if not isinstance(max_k, (int, np.integer)) or not 1 <= max_k <= MAX_KMER_K:
        raise DataError(f"k-mer size {max_k!r}: choose --kmer-max-k between 1 and {MAX_KMER_K}")
    width = sum(4 ** k for k in range(1, max_k + 1))
    if len(sequences) * width * 4 > KMER_BYTES:
        raise DataError(f"k-mer counts up to k={max_k} for {len(sequences):,} rows would take "
                        f"{len(sequences) * width * 4 / 2**30:.1f} GiB; lower --kmer-max-k")
    out = np.zeros((len(sequences), width), dtype=np.float32)
    texts = [str(seq).encode("latin-1", "replace") + b"|" for seq in sequences]
    lengths = np.array([len(t) for t in texts], np.int64)
    # rows in blocks of about KMER_BLOCK_CHARS characters: a few int64 arrays of that length
    ends = np.cumsum(lengths)
    first = 0
    while first < len(texts):
        done = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, done + KMER_BLOCK_CHARS, "right")))
        _count_kmers(out[first:last], texts[first:last], lengths[first:last], max_k, lookup)
        first = last
    return out


KMER_BLOCK_CHARS = 1 << 22


def _count_kmers(out, texts, lengths, max_k, lookup):
    """The frequencies of a block of rows: every row's codes in one array, each followed by a -1
    (the '|' its text ends with) so that no window spans two rows; k-mer codes grow from the
    (k-1)-mer codes one shift at a time (a loop per row and k took 7 s for 17,667 promoters)."""
    codes = lookup[np.frombuffer(b"".join(texts), dtype=np.uint8)]
    row_of = np.repeat(np.arange(len(texts)), lengths)
    kmer, valid, offset = np.zeros(len(codes), np.int64), np.ones(len(codes), bool), 0
    for k in range(1, max_k + 1):
        n = len(codes) - k + 1  # windows starting at each position
        kmer = kmer[:n] * 4 + np.maximum(codes[k - 1:], 0)
        valid = valid[:n] & (codes[k - 1:] >= 0)
        _count_rows(out[:, offset: offset + 4 ** k], row_of[:n][valid], kmer[valid], 4 ** k)
        offset += 4 ** k


def _count_rows(out: np.ndarray, rows: np.ndarray, index: np.ndarray, size: int,
                bins: int = 1 << 22):
    """out[r] = the frequencies of `index` values among positions of row r (rows ascending),
    counted by bincount over blocks of rows small enough for `bins` counters at a time."""
    per_block = max(1, bins // size)
    for first in range(0, len(out), per_block):
        n_rows = min(per_block, len(out) - first)
        lo, hi = np.searchsorted(rows, [first, first + n_rows])
        counts = np.bincount((rows[lo:hi] - first) * size + index[lo:hi],
                             minlength=n_rows * size).reshape(n_rows, size)
        totals = counts.sum(axis=1, keepdims=True)
        out[first: first + n_rows] = np.divide(counts, totals, out=np.zeros(counts.shape),
                                               where=totals > 0)


def features(cache: Cache, sets: list[str], kmer_max_k: int = 6) -> np.ndarray:
    """Concatenate the named feature sets: pooled methods ('mean', 'last', ...) or 'kmer';
    on a cache of variant pairs, pair features (see `pair_features`)."""
    if "sequence" in sets:  # the CNN baseline's input: the text itself, not numbers
        if len(sets) > 1:
            raise DataError("the 'sequence' feature set (CNN baseline) cannot be combined")
        seqs = cache.sequences()
        if cache.has_pairs:
            pairs = cache.pairs()
            return np.stack([seqs[pairs["ref_row"]], seqs[pairs["alt_row"]]], axis=1)
        return seqs[:, None]
    if cache.has_pairs:
        return np.concatenate([pair_features(cache, name, kmer_max_k) for name in sets], axis=1)
    blocks = []
    for name in sets:
        if name == "kmer":
            blocks.append(kmer_features(cache.sequences(), kmer_max_k))
        else:
            blocks.append(cache.pooled(name).astype(np.float32))
    return np.concatenate(blocks, axis=1)


def pair_features(cache: Cache, name: str, kmer_max_k: int = 6) -> np.ndarray:
    """One feature block per pair, named as `heads.features` says. `variant`: one-hot of the
    reference and alternative base plus an indel flag. `kmer`: [k-mer counts of alt - ref, of ref];
    `kmer-delta`: alt - ref alone."""
    pairs = cache.pairs()
    ref, alt = pairs["ref_row"], pairs["alt_row"]
    if name == "variant":
        return variant_onehot(pairs["ref_allele"], pairs["alt_allele"])
    if name in ("kmer", "kmer-delta"):
        seqs = cache.sequences()
        k_ref, k_alt = kmer_features(seqs[ref], kmer_max_k), kmer_features(seqs[alt], kmer_max_k)
        # kmer-delta: the change alone; kmer adds the reference block (the exon's own content)
        return k_alt - k_ref if name == "kmer-delta" else np.concatenate([k_alt - k_ref, k_ref], axis=1)
    from .features import FeatureError, split_pair_feature

    try:
        op, pool = split_pair_feature(name, [p for p in cache.pooling_methods if p not in ("site", "sitewin")])
    except FeatureError as exc:
        raise DataError(f"{cache.path} holds variant pairs: {exc}") from None
    values = cache.pooled(pool).astype(np.float32)
    r, a = values[ref], values[alt]
    return {"delta": lambda: a - r, "ref": lambda: r, "alt": lambda: a,
            "concat": lambda: np.concatenate([r, a], axis=1)}[op]()


def variant_onehot(ref_alleles, alt_alleles) -> np.ndarray:
    """[one-hot of the reference base (ACGT), of the alternative base, indel flag]."""
    out = np.zeros((len(ref_alleles), 9), dtype=np.float32)
    for i, (r, a) in enumerate(zip(ref_alleles, alt_alleles)):
        for offset, allele in ((0, str(r)), (4, str(a))):
            if allele[:1] in "ACGT" and allele[:1]:
                out[i, offset + "ACGT".index(allele[0])] = 1
        out[i, 8] = float(len(str(r)) != len(str(a)) or "-" in (str(r), str(a)))
    return out


def units(cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What a head predicts on: rows (ids, groups), or variant pairs (pair ids, and the row
    of each pair's reference allele, whose labels the pair carries)."""
    if cache.has_pairs:
        pairs = cache.pairs()
        ids = pairs["id"].astype(str)
        return ids, ids, pairs["ref_row"]
    return cache.ids.astype(str), cache.groups.astype(str), None


def read_id_list(path: str) -> set[str]:
    """Ids from a text file (one per line) or the first column / `id` column of a CSV."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file")
    if p.suffix in (".csv", ".tsv"):
        table = pd.read_csv(p, sep="," if p.suffix == ".csv" else "\t", dtype=str)
        column = "id" if "id" in table else table.columns[0]
        return set(table[column].dropna())
    return {line.strip() for line in p.read_text().splitlines() if line.strip()}


def _labels(cache: Cache, names: list[str], labels_file: str | None, id_col: str,
            keys: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    if labels_file is None:
        try:
            values = np.stack([cache.label(n) for n in names], axis=1)
            return values if rows is None else values[rows]
        except CacheError as exc:
            raise DataError(f"{exc}; or join a table with --labels FILE --labels-id-col COL") from exc
    table = read_label_table(labels_file, id_col, names)
    found = np.isin(np.asarray(keys, dtype=str), table.index.to_numpy(dtype=str))
    if not found.all():
        ours = ", ".join(map(repr, list(dict.fromkeys(np.asarray(keys)[~found]))[:3]))
        theirs = ", ".join(map(repr, table.index[:3]))
        text = (f"{int((~found).sum())} of {len(keys)} cache ids have no row in {labels_file} "
                f"(column {id_col}): e.g. {ours}; its ids look like {theirs}. Ids are compared "
                "as text, so '001' and '1' differ")
        if not found.any():
            raise DataError(text)
        print(f"note: {text}", file=sys.stderr)
    return table.reindex(keys)[names].to_numpy()


def read_label_table(labels_file: str, id_col: str, names: list[str]):
    """A CSV/TSV/Parquet table of labels indexed by its (unique, string) id column."""
    import pandas as pd

    sep = "\t" if labels_file.endswith((".tsv", ".txt")) else ","
    # ids are text: '001' stays '001' (a number would match the cache's '1', never its '001')
    table = pd.read_parquet(labels_file) if labels_file.endswith(".parquet") \
        else pd.read_csv(labels_file, sep=sep, dtype={id_col: str}, keep_default_na=False,
                         na_values={c: NA_TEXTS for c in names})
    missing = [c for c in [id_col, *names] if c not in table]
    if missing:
        raise DataError(f"{labels_file}: column(s) {', '.join(missing)} not found; "
                        f"available: {', '.join(map(str, table.columns))}")
    table[id_col] = table[id_col].astype(str)
    if table[id_col].duplicated().any():
        raise DataError(f"{labels_file}: duplicate ids in {id_col}")
    return table.set_index(id_col)


def infer_task(y: np.ndarray, task: str | None) -> str:
    if task:
        return task
    if y.shape[1] > 1:
        return "regression"
    column = y[:, 0]
    try:
        values = column.astype(float)
    except (TypeError, ValueError):
        return "classification"
    values = values[np.isfinite(values)]
    unique = np.unique(values)
    if len(unique) == 2:
        return "classification"
    if np.all(unique == np.round(unique)) and len(unique) <= 20:
        raise DataError(f"the label has {len(unique)} integer values: say --task regression "
                        "or --task classification")
    return "regression"


def assign_split(groups: np.ndarray, ids: np.ndarray, seed: int, test_ids: set[str] | None,
                 split_values: np.ndarray | None) -> np.ndarray:
    """Split by group: a column, a test-id list, or random 80/10/10 of groups (seeded)."""
    if split_values is not None:
        bad = sorted(set(map(str, split_values)) - set(SPLITS))
        if bad:
            raise DataError(f"split column values must be train/val/test, found {', '.join(bad)}")
        split = np.asarray(split_values, dtype=object)
        for g in np.unique(groups):
            if len(set(split[groups == g])) > 1:
                raise DataError(f"group {g!r} has rows in several splits")
        if not (split == "val").any():
            split = carve_validation(split, groups, seed)
        return split
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    assignment = {}
    if test_ids is not None:
        test = {g for g in unique if g in test_ids} | set(groups[np.isin(ids, list(test_ids))])
        if not test:
            raise DataError("none of the test ids matches a row id or sample id in the cache")
        rest = rng.permutation([g for g in unique if g not in test])
        n_val = max(1, round(len(rest) / 9))  # 10% of the whole when test is 10%
        assignment.update({g: "test" for g in test})
        assignment.update({g: "val" for g in rest[:n_val]})
        assignment.update({g: "train" for g in rest[n_val:]})
    else:
        order = rng.permutation(unique)
        n_test = max(1, round(0.1 * len(order)))
        n_val = max(1, round(0.1 * len(order)))
        assignment.update({g: "test" for g in order[:n_test]})
        assignment.update({g: "val" for g in order[n_test: n_test + n_val]})
        assignment.update({g: "train" for g in order[n_test + n_val:]})
    return np.array([assignment[g] for g in groups], dtype=object)


def carve_validation(split: np.ndarray, groups: np.ndarray, seed: int,
                     fraction: float = 0.1) -> np.ndarray:
    """A split with train and test only (a chromosome or genome split, say) gets its validation
    part from 10% of the training groups, seeded; packs of one sample stay together."""
    split = split.copy()
    train_groups = np.unique(groups[split == "train"])
    rng = np.random.default_rng(seed)
    n_val = max(1, round(fraction * len(train_groups)))
    val = set(rng.choice(train_groups, size=n_val, replace=False))
    split[np.isin(groups, list(val)) & (split == "train")] = "val"
    return split


def check_split_sizes(split: np.ndarray, groups: np.ndarray):
    """Refuse splits too small to score, naming the counts."""
    counts = {s: len(np.unique(groups[split == s])) for s in SPLITS}
    small = [s for s in SPLITS if counts[s] < (1 if s == "train" else MIN_GROUPS)]
    if small:
        raise DataError(f"split too small to score: {', '.join(f'{s} {counts[s]}' for s in SPLITS)} "
                        f"samples; validation and test need at least {MIN_GROUPS} each. Label more "
                        "samples, or give a --split-col / --test-ids with more in each part")


def load_supervised(cache: Cache, label_names: list[str], task: str | None = None,
                    labels_file: str | None = None, id_col: str = "id", join_on: str = "auto",
                    test_ids: str | None = None, split_col: str | None = None,
                    seed: int = 42) -> tuple[Supervised, np.ndarray]:
    """The labelled rows of a cache and their split; returns it with the row mask kept."""
    cache.require_complete()
    ids, groups, label_rows = units(cache)
    if join_on == "auto":
        join_on = "group" if np.any(ids != groups) else "id"
    keys = groups if join_on == "group" else ids
    y = _labels(cache, label_names, labels_file, id_col, keys, label_rows)
    task = infer_task(y, task)
    if task == "regression":
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError("regression needs numeric labels") from exc
        keep = np.isfinite(y).all(axis=1)  # NaN and +-inf (e.g. log ratios of zero counts)
    else:
        if y.shape[1] > 1:
            raise DataError("classification takes one --label")
        keep = np.array([v is not None and v == v and v != "" for v in y[:, 0]])
    if not keep.any():
        raise DataError("no row has a label")
    split_values = None
    if split_col:
        split_values = _labels(cache, [split_col], labels_file, id_col, keys, label_rows)[:, 0]
    split = assign_split(groups[keep], ids[keep], seed,
                         read_id_list(test_ids) if test_ids else None,
                         None if split_values is None else split_values[keep])
    y = y[keep]
    y = y[:, 0] if y.shape[1] == 1 else y
    if task == "classification":
        y = y.astype(str) if y.dtype == object and isinstance(y[0], str) else y
    check_split_sizes(split, groups[keep])
    carved = split_values is not None and not np.isin(split_values[keep], ["val"]).any()
    return Supervised(ids[keep], groups[keep], y, split, task, list(label_names),
                      int((~keep).sum()), carved), keep
