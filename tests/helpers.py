"""Small inputs the tests write for themselves."""
import gzip

import numpy as np


def random_dna(rng, n):
    return "".join(rng.choice(list("ACGT"), size=n))


def write_fasta(path, records, gz=False):
    text = "".join(f">{rid} some description\n{seq[:60]}\n{seq[60:]}\n" for rid, seq in records)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def make_records(n, lo=20, hi=300, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"seq{i}", random_dna(rng, int(rng.integers(lo, hi)))) for i in range(n)]
