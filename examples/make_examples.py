"""Writes the small synthetic inputs the README's commands run on (already in this folder).

Everything is generated from fixed seeds with a *planted* signal, so a newcomer can run the
whole path offline and see a model learn something real:
- demo.csv: 800 sequences (150-400 nt) with `activity` = 0.8 x (copies of the TATAAT motif)
  + 2 x (GC fraction) + noise, and a `high` yes/no class (activity above the median);
- demo_new.fa: 40 unlabelled sequences from the same source, for `predict`;
- demo_reads.parquet: 60 samples, each a list of 10-30 reads with a sample-level `pH` that
  moves the reads' GC content (the microbial-pH story in miniature); the same labels as a
  table (demo_reads_labels.csv) and every fifth sample as official test ids (demo_reads_test.txt);
- demo_pairs.csv: 300 reference/alternative 200-nt windows (one SNV each) with `donor`,
  `acceptor` and `neither` deltas that depend on the motifs the SNV makes or breaks;
- demo_genome.fa + demo_variants.vcf: two 5-kb contigs and 24 SNVs on them.

    python examples/make_examples.py     # rewrites the files identically
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
BASES = np.array(list("ACGT"))


def random_dna(rng, n, gc=0.5):
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return "".join(rng.choice(BASES, size=n, p=p))


def plant(rng, seq, motif, copies):
    seq = list(seq)
    for _ in range(copies):
        at = int(rng.integers(0, len(seq) - len(motif)))
        seq[at: at + len(motif)] = motif
    return "".join(seq)


def activity_table(rng, n, start=0):
    rows = []
    for i in range(start, start + n):
        gc = rng.uniform(0.3, 0.7)
        seq = plant(rng, random_dna(rng, int(rng.integers(150, 401)), gc), "TATAAT",
                    int(rng.poisson(1.5)))
        copies = seq.count("TATAAT")
        frac = (seq.count("G") + seq.count("C")) / len(seq)
        rows.append({"id": f"seq{i:04d}", "seq": seq,
                     "activity": round(0.8 * copies + 2 * frac + rng.normal(0, 0.3), 4)})
    return pd.DataFrame(rows)


def write_demo(rng):
    table = activity_table(rng, 800)
    table["high"] = np.where(table.activity > table.activity.median(), "yes", "no")
    table.to_csv(HERE / "demo.csv", index=False)
    new = activity_table(rng, 40, start=800)
    (HERE / "demo_new.fa").write_text("".join(f">{r.id}\n{r.seq}\n" for r in new.itertuples()))


def write_reads(rng):
    rows = []
    for s in range(60):
        ph = round(rng.uniform(4.5, 8.5), 2)
        gc = 0.35 + 0.05 * (ph - 4.5)  # the sample's pH shifts its reads' GC content
        reads = [random_dna(rng, int(rng.integers(100, 251)), gc) for _ in range(rng.integers(10, 31))]
        rows.append({"sample_id": f"sample{s:02d}", "reads": reads, "pH": ph})
    table = pd.DataFrame(rows)
    table.to_parquet(HERE / "demo_reads.parquet", index=False)
    table[["sample_id", "pH"]].to_csv(HERE / "demo_reads_labels.csv", index=False)
    (HERE / "demo_reads_test.txt").write_text("\n".join(table.sample_id[::5]) + "\n")


def write_pairs(rng):
    rows = []
    for i in range(300):
        ref = random_dna(rng, 200)
        site = int(rng.integers(90, 110))
        alt_base = rng.choice([b for b in "ACGT" if b != ref[site]])
        alt = ref[:site] + alt_base + ref[site + 1:]

        def gain(motif):  # copies of a motif the SNV makes (+) or breaks (-) near the site
            lo, hi = site - len(motif) + 1, site + len(motif)
            return alt[lo:hi].count(motif) - ref[lo:hi].count(motif)

        donor, acceptor = gain("GT") + 0.5 * gain("GTAAG"), gain("AG") + 0.5 * gain("TTTAG")
        noise = rng.normal(0, 0.2, size=3)
        rows.append({"ID": f"pair{i:03d}", "REF_SEQ": ref, "ALT_SEQ": alt,
                     "donor": round(donor + noise[0], 4), "acceptor": round(acceptor + noise[1], 4),
                     "neither": round(-(donor + acceptor) / 2 + noise[2], 4)})
    pd.DataFrame(rows).to_csv(HERE / "demo_pairs.csv", index=False)


def write_genome(rng):
    contigs = {"chrA": random_dna(rng, 5000), "chrB": random_dna(rng, 5000)}
    with open(HERE / "demo_genome.fa", "w") as fh:
        for name, seq in contigs.items():
            fh.write(f">{name}\n" + "".join(seq[i: i + 60] + "\n" for i in range(0, len(seq), 60)))
    lines = ["##fileformat=VCFv4.2", '##INFO=<ID=SCORE,Number=1,Type=Float,Description="demo">',
             *[f"##contig=<ID={n},length={len(s)}>" for n, s in contigs.items()],
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for k in range(24):
        name = "chrA" if k < 12 else "chrB"
        pos = int(rng.integers(300, 4700))
        ref = contigs[name][pos - 1]
        alt = rng.choice([b for b in "ACGT" if b != ref])
        lines.append(f"{name}\t{pos}\tvar{k:02d}\t{ref}\t{alt}\t.\tPASS\tSCORE={rng.normal():.3f}")
    (HERE / "demo_variants.vcf").write_text("\n".join(lines) + "\n")


def main():
    rng = np.random.default_rng(20261204)
    write_demo(rng)
    write_reads(rng)
    write_pairs(rng)
    write_genome(rng)


if __name__ == "__main__":
    main()
