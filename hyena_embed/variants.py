"""Variant pairs: reference and alternative windows, from a two-column table or VCF + genome.

Every pair becomes two rows of one embed run, `<pair id>/ref` and `<pair id>/alt`, each knowing
where the variant sits in it (`site`, a 0-based index into the window), so the cache can hold
features at the variant beside the pooled vectors.

From a genome, windows of `window` nt are centred on the variant's first reference base. The
reference allele is checked against the genome; windows running off a contig end are padded
with N and flagged (`edge`); an indel's alternative window keeps the left flank and the
variant's position and takes as much right flank as it needs to keep the window's length;
multi-allelic records are split into one pair per alternative allele; on the minus strand
both windows are reverse-complemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .inputs import NA_TEXTS, InputError, Record, open_text

COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


@dataclass
class VariantPair:
    id: str
    ref_seq: str
    alt_seq: str
    ref_site: int  # index of the variant's first base in ref_seq
    alt_site: int
    ref_allele: str
    alt_allele: str
    labels: dict[str, Any] = field(default_factory=dict)
    edge: bool = False  # the window ran off a contig end and was padded with N
    strand: str = "+"

    def records(self) -> tuple[Record, Record]:
        return (Record(f"{self.id}/ref", [self.ref_seq], self.labels, site=self.ref_site),
                Record(f"{self.id}/alt", [self.alt_seq], self.labels, site=self.alt_site))


@dataclass
class PairReport:
    pairs: int = 0
    mismatches_skipped: int = 0
    edge_padded: int = 0
    multiallelic_split: int = 0
    identical_skipped: int = 0

    def line(self) -> str:
        parts = [f"{self.pairs} variant pairs"]
        if self.mismatches_skipped:
            parts.append(f"{self.mismatches_skipped} skipped: reference allele does not match the genome")
        if self.identical_skipped:
            parts.append(f"{self.identical_skipped} skipped: ref and alt sequences identical")
        if self.edge_padded:
            parts.append(f"{self.edge_padded} windows padded with N at a contig end (flagged)")
        if self.multiallelic_split:
            parts.append(f"{self.multiallelic_split} multi-allelic records split")
        return "; ".join(parts)


def first_difference(ref: str, alt: str) -> int | None:
    """Index of the first differing base (the site of an SNV, or where an indel starts)."""
    for i, (a, b) in enumerate(zip(ref, alt)):
        if a != b:
            return i
    return None if len(ref) == len(alt) else min(len(ref), len(alt))


def pairs_from_table(path: str, ref_col: str, alt_col: str, id_col: str | None,
                     label_cols: Sequence[str] = (), site_col: str | None = None,
                     report: PairReport | None = None) -> Iterator[VariantPair]:
    """Pairs from a table with a reference and an alternative sequence column. The site is
    `site_col` (0-based) when given, else the first base where the two sequences differ."""
    import pandas as pd

    report = report if report is not None else PairReport()
    with open_text(path) as fh:  # comma or tab: MaPSy's .txt files are comma-separated
        sep = "\t" if "\t" in fh.readline() else ","
    wanted = [ref_col, alt_col, *([id_col] if id_col else []), *label_cols,
              *([site_col] if site_col else [])]
    # sequences and ids are text, read as written: an empty cell stays empty (never 'nan'),
    # and id 0007 stays 0007; label columns keep pandas' usual missing-value words
    text = {c: str for c in (ref_col, alt_col, id_col) if c}
    chunks = pd.read_csv(path, sep=sep, chunksize=50_000, dtype=text, keep_default_na=False,
                         na_values={c: NA_TEXTS for c in label_cols})
    for chunk_no, chunk in enumerate(chunks):
        missing = [c for c in wanted if c not in chunk]
        if missing:
            raise InputError(f"{path}: column(s) {', '.join(missing)} not found; available: "
                             f"{', '.join(map(str, chunk.columns))}")
        for offset, row in enumerate(chunk.itertuples(index=False)):
            values = dict(zip(chunk.columns, row))
            number = chunk_no * 50_000 + offset
            pid = str(values[id_col]) if id_col else str(number)
            ref, alt = str(values[ref_col]).strip().upper(), str(values[alt_col]).strip().upper()
            empty = [c for c, v in ((ref_col, ref), (alt_col, alt)) if not v]
            if empty:
                raise InputError(f"{path}: pair {pid!r} (line {number + 2}) has no sequence in "
                                 f"{' and '.join(empty)}: give both alleles, or remove the row")
            if site_col:
                try:
                    site = int(values[site_col])
                except (TypeError, ValueError):
                    raise InputError(f"pair {pid!r}: {site_col}={values[site_col]!r} is not a "
                                     "whole number") from None
                if not 0 <= site < min(len(ref), len(alt)):
                    raise InputError(f"pair {pid!r}: {site_col}={site} lies outside the sequences")
            else:
                site = first_difference(ref, alt)
                if site is None:
                    report.identical_skipped += 1
                    continue
            end_ref, end_alt = _difference_ends(ref, alt, site)
            report.pairs += 1
            yield VariantPair(pid, ref, alt, site, site, ref[site:end_ref] or "-",
                              alt[site:end_alt] or "-", {c: values[c] for c in label_cols})


def _difference_ends(ref: str, alt: str, site: int) -> tuple[int, int]:
    """Ends of the differing stretch (the alleles), matching from the right."""
    i, j = len(ref), len(alt)
    while i > site and j > site and ref[i - 1] == alt[j - 1]:
        i, j = i - 1, j - 1
    return i, j


def read_variant_records(path: str, label_cols: Sequence[str] = (),
                         strand_col: str | None = None) -> Iterator[dict]:
    """Variant records from a VCF (CHROM POS ID REF ALT ...) or a table with columns
    chrom, pos, ref, alt (1-based positions), plus optional id, strand and label columns."""
    name = str(path).lower()
    if name.endswith((".vcf", ".vcf.gz")):
        with open_text(path) as fh:
            for number, line in enumerate(fh, 1):
                if line.startswith("#") or not line.strip():
                    continue
                f = line.rstrip("\n").split("\t")
                if len(f) < 5:
                    raise InputError(f"{path}:{number}: a VCF line needs CHROM POS ID REF ALT")
                yield {"chrom": f[0], "pos": f[1], "id": None if f[2] == "." else f[2],
                       "ref": f[3], "alt": f[4], "strand": "+", "labels": {}, "where": f"{path}:{number}"}
        return
    import pandas as pd

    sep = "," if name.endswith((".csv", ".csv.gz")) else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str)
    table.columns = [c.lstrip("#") for c in table.columns]
    lower = {c.lower(): c for c in table.columns}
    need = ["chrom", "pos", "ref", "alt"]
    missing = [c for c in need if c not in lower] + [c for c in label_cols if c not in table]
    if strand_col and strand_col not in table:
        missing.append(strand_col)
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} not found; need chrom, pos, "
                         f"ref, alt; available: {', '.join(table.columns)}")
    for number, row in enumerate(table.to_dict("records"), 2):
        yield {"chrom": row[lower["chrom"]], "pos": row[lower["pos"]],
               "id": row.get(lower.get("id", "id")), "ref": row[lower["ref"]],
               "alt": row[lower["alt"]], "strand": row[strand_col] if strand_col else "+",
               "labels": {c: row[c] for c in label_cols}, "where": f"{path}:{number}"}


def pairs_from_genome(variants: str, genome: str, window: int = 501, on_mismatch: str = "skip",
                      label_cols: Sequence[str] = (), strand_col: str | None = None,
                      report: PairReport | None = None) -> Iterator[VariantPair]:
    """Reference and alternative windows cut from an indexed FASTA (pyfaidx) around each
    variant; see the module docstring for the rules."""
    import pyfaidx

    if on_mismatch not in ("skip", "error"):
        raise InputError("--on-mismatch must be skip or error")
    if window < 1:
        raise InputError("--window must be at least 1")
    report = report if report is not None else PairReport()
    try:
        fasta = pyfaidx.Fasta(genome, as_raw=True, sequence_always_upper=True)
    except (OSError, pyfaidx.FastaIndexingError) as exc:
        raise InputError(f"cannot open the genome {genome}: {exc}") from exc
    half = window // 2
    with fasta:
        for rec in read_variant_records(variants, label_cols, strand_col):
            chrom, where = str(rec["chrom"]), rec["where"]
            if chrom not in fasta:
                raise InputError(f"{where}: contig {chrom!r} is not in {genome}")
            try:
                pos0 = int(rec["pos"]) - 1
            except ValueError:
                raise InputError(f"{where}: position {rec['pos']!r} is not a number") from None
            ref = str(rec["ref"]).upper()
            strand = str(rec["strand"]).strip()
            if strand not in ("+", "-"):
                raise InputError(f"{where}: strand must be + or -, not {strand!r}")
            contig = fasta[chrom]
            found = contig[pos0: pos0 + len(ref)] if 0 <= pos0 < len(contig) else ""
            if found != ref:
                if on_mismatch == "error":
                    raise InputError(f"{where}: reference allele {ref} does not match the genome "
                                     f"({found or 'outside the contig'} at {chrom}:{pos0 + 1}); "
                                     "check the genome build, or pass --on-mismatch skip")
                report.mismatches_skipped += 1
                continue
            alts = [a.upper() for a in str(rec["alt"]).split(",")]
            report.multiallelic_split += len(alts) > 1
            for alt in alts:
                base_id = rec["id"] or f"{chrom}:{pos0 + 1}:{ref}>{alt}"
                pid = f"{base_id}:{alt}" if len(alts) > 1 and rec["id"] else base_id
                ref_win, ref_edge = _cut(contig, pos0 - half, pos0 + window - half)
                alt_tail, alt_edge = _cut(contig, pos0 + len(ref),
                                          pos0 + len(ref) + window - half - len(alt))
                alt_win = (ref_win[:half] + alt + alt_tail)[:window]
                edge = ref_edge or alt_edge
                ref_site = alt_site = half
                if strand == "-":
                    ref_win, alt_win = reverse_complement(ref_win), reverse_complement(alt_win)
                    ref_site = window - half - len(ref)
                    alt_site = window - half - min(len(alt), window - half)
                    ref_site, alt_site = max(ref_site, 0), max(alt_site, 0)
                report.pairs += 1
                report.edge_padded += edge
                yield VariantPair(pid, ref_win, alt_win, ref_site, alt_site, ref,
                                  alt if alt else "-", dict(rec["labels"]), edge, strand)


def _cut(contig, start: int, end: int) -> tuple[str, bool]:
    """contig[start:end], padded with N where it runs off either end; and whether it did."""
    if end <= start:
        return "", False
    left_pad = max(0, -start)
    right_pad = max(0, end - len(contig))
    body = contig[max(0, start): min(end, len(contig))] if min(end, len(contig)) > max(0, start) else ""
    return "N" * left_pad + body + "N" * right_pad, bool(left_pad or right_pad)


def pair_records(pairs: list[VariantPair]) -> Iterator[Record]:
    for pair in pairs:
        yield from pair.records()


def pair_table(pairs: list[VariantPair]) -> dict[str, list]:
    """Columns the cache stores under pairs/ (row ids are matched to row indices there)."""
    return {"id": [p.id for p in pairs], "ref_id": [f"{p.id}/ref" for p in pairs],
            "alt_id": [f"{p.id}/alt" for p in pairs],
            "ref_allele": [p.ref_allele for p in pairs], "alt_allele": [p.alt_allele for p in pairs],
            "ref_site": [p.ref_site for p in pairs], "alt_site": [p.alt_site for p in pairs],
            "edge": [p.edge for p in pairs], "strand": [p.strand for p in pairs]}


@dataclass(frozen=True)
class PairSource:
    """Where variant pairs come from: a table of two sequence columns, or a VCF (or table of
    chrom/pos/ref/alt) cut from a genome. The `pair_options` of the command line fill it."""
    ref_col: str | None = None
    alt_col: str | None = None
    site_col: str | None = None
    genome: str | None = None
    variant_window: int = 501
    strand_col: str | None = None
    on_mismatch: str = "skip"

    @property
    def given(self) -> bool:
        return bool(self.ref_col or self.alt_col or self.genome)


def read_pairs(input_path: str, source: PairSource, id_col: str | None, label_cols: Sequence[str],
               seq_col: str | None = None) -> tuple[list[VariantPair], PairReport]:
    """Every variant pair of the input, and the report of what was read and skipped."""
    if seq_col:
        raise InputError("variant pairs take --ref-col/--alt-col or --genome, not --seq-col")
    report = PairReport()
    if source.genome:
        if source.ref_col or source.alt_col or source.site_col:
            raise InputError("give --genome (windows cut around each variant) or --ref-col and "
                             "--alt-col (sequences in a table), not both")
        pairs = list(pairs_from_genome(input_path, source.genome, source.variant_window,
                                       source.on_mismatch, label_cols, source.strand_col, report))
    else:
        if not (source.ref_col and source.alt_col):
            raise InputError("variant pairs from a table need both --ref-col and --alt-col")
        pairs = list(pairs_from_table(input_path, source.ref_col, source.alt_col, id_col, label_cols,
                                      source.site_col, report))
    if not pairs:
        raise InputError(f"no variant pairs in the input ({report.line()})")
    return pairs, report
