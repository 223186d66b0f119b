"""Variant pairs: windows from a genome, pairs from a table, the pair cache, delta features."""
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cache.store import Cache
from cli import main
from hyena_embed.inputs import InputError
from hyena_embed.loading import random_model
from hyena_embed.tokenizer import Tokenizer
from hyena_embed.variants import (PairReport, first_difference, pairs_from_genome,
                                  pairs_from_table, reverse_complement)
from tests.helpers import random_dna

CHR1 = "ACGTTGCAAGGCTTAACCGGTTAACCGGATATCGCGATCG"  # 40 nt
CHR2 = "GGGGCCCCAA"


@pytest.fixture
def genome(tmp_path):
    path = tmp_path / "genome.fa"
    path.write_text(f">chr1 test\n{CHR1[:25]}\n{CHR1[25:]}\n>chr2\n{CHR2}\n")
    return path


def write_tsv(path, rows):
    pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt", "strand", "score"]).to_csv(path, sep="\t", index=False)
    return path


def window(start, end, seq=CHR1):
    """seq[start:end] with N beyond either end, by hand."""
    return "".join(seq[i] if 0 <= i < len(seq) else "N" for i in range(start, end))


def test_genome_windows_snv_strand_edge_indels_multiallelic(tmp_path, genome):
    rows = [("chr1", 20, CHR1[19], "A", "+", 1.0),     # SNV, centre of an 11-nt window
            ("chr1", 20, CHR1[19], "A", "-", 2.0),     # the same on the minus strand
            ("chr1", 2, CHR1[1], "T", "+", 3.0),       # runs off the contig start
            ("chr1", 10, CHR1[9:12], CHR1[9], "+", 4.0),  # deletion of 2 nt
            ("chr1", 30, CHR1[29], CHR1[29] + "TT", "+", 5.0),  # insertion of 2 nt
            ("chr2", 5, "C", "A,T", "+", 6.0),         # multi-allelic, near the contig end
            ("chr1", 15, "G" if CHR1[14] != "G" else "C", "A", "+", 7.0)]  # wrong reference
    variants = write_tsv(tmp_path / "v.tsv", rows)
    report = PairReport()
    pairs = list(pairs_from_genome(str(variants), str(genome), window=11, label_cols=["score"],
                                   strand_col="strand", report=report))
    assert report.pairs == 7 and report.mismatches_skipped == 1 and report.multiallelic_split == 1
    snv, minus, edge, deletion, insertion, multi_a, multi_t = pairs
    assert snv.ref_seq == window(14, 25) and snv.alt_seq == window(14, 19) + "A" + window(20, 25)
    assert snv.ref_site == snv.alt_site == 5 and snv.ref_seq[5] == CHR1[19] and not snv.edge
    assert minus.ref_seq == reverse_complement(window(14, 25))
    assert minus.alt_seq == reverse_complement(snv.alt_seq) and minus.ref_site == 5
    assert edge.ref_seq == "NNNN" + CHR1[:7] and edge.edge and edge.ref_site == 5
    assert deletion.ref_seq == window(4, 15)
    assert deletion.alt_seq == window(4, 10) + window(12, 17) and len(deletion.alt_seq) == 11
    assert (deletion.ref_allele, deletion.alt_allele) == (CHR1[9:12], CHR1[9])
    assert insertion.alt_seq == window(24, 30) + "TT" + window(30, 33)
    assert len(insertion.alt_seq) == 11 and insertion.alt_site == 5
    assert [multi_a.alt_seq[5], multi_t.alt_seq[5]] == ["A", "T"]
    assert multi_a.ref_seq == window(-1, 10, CHR2) and multi_a.edge  # one N before the start
    assert multi_a.id != multi_t.id and multi_a.labels == {"score": "6.0"}
    with pytest.raises(InputError, match="does not match the genome"):
        list(pairs_from_genome(str(variants), str(genome), window=11, on_mismatch="error",
                               strand_col="strand"))


def test_minus_strand_indel_site_and_vcf_input(tmp_path, genome):
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"chr1\t20\trs1\t{CHR1[19]}\tA,C\t.\t.\t.\n"
                   f"chr1\t38\t.\t{CHR1[37]}\tG\t.\t.\t.\n")
    pairs = list(pairs_from_genome(str(vcf), str(genome), window=11))
    assert [p.id for p in pairs] == ["rs1:A", "rs1:C", f"chr1:38:{CHR1[37]}>G"]
    assert pairs[2].edge and pairs[2].ref_seq == CHR1[32:40] + "NNN"
    table = write_tsv(tmp_path / "m.tsv", [("chr1", 10, CHR1[9:12], CHR1[9], "-", 0.0)])
    (deletion,) = pairs_from_genome(str(table), str(genome), window=11, strand_col="strand")
    # the 3-nt reference allele sits at 5..7 forward, so at 11-5-3 = 3..5 on the minus strand
    assert deletion.ref_site == 3
    assert deletion.ref_seq[3:6] == reverse_complement(CHR1[9:12])
    assert deletion.alt_seq[deletion.alt_site] == reverse_complement(CHR1[9])


def test_pairs_from_table_find_the_site(tmp_path):
    path = tmp_path / "pairs.txt"  # comma-separated despite the suffix, as MaPSy's
    pd.DataFrame({"ID": ["a", "b", "c"], "WT": ["ACGTACGT", "AAAA", "ACGT"],
                  "MUT": ["ACGAACGT", "AAAA", "ACGGGT"], "y": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    report = PairReport()
    pairs = list(pairs_from_table(str(path), "WT", "MUT", "ID", ["y"], report=report))
    assert [p.id for p in pairs] == ["a", "c"] and report.identical_skipped == 1
    assert pairs[0].ref_site == 3 and (pairs[0].ref_allele, pairs[0].alt_allele) == ("T", "A")
    assert (pairs[1].ref_allele, pairs[1].alt_allele) == ("-", "GG")  # insertion after ACG
    assert first_difference("ACGT", "ACGTT") == 4
    with pytest.raises(InputError, match="MUT_SEQ not found"):
        list(pairs_from_table(str(path), "WT", "MUT_SEQ", "ID"))


def test_pair_cache_rows_and_site_features_match_hand_computed(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        wt = random_dna(rng, int(rng.integers(30, 50)))
        site = int(rng.integers(3, len(wt) - 3))
        mut = wt[:site] + ("A" if wt[site] != "A" else "C") + wt[site + 1:]
        rows.append({"ID": f"v{i}", "WT": wt, "MUT": mut, "y": float(i)})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    result = CliRunner().invoke(main, ["embed", "--model", "tiny-1k", "--random-init",
                                       "--input", str(tmp_path / "pairs.csv"), "--ref-col", "WT",
                                       "--alt-col", "MUT", "--id-col", "ID", "--label", "y",
                                       "--site-window", "2", "--dtype", "float32", "--quiet",
                                       "--out", str(tmp_path / "p.zarr")])
    assert result.exit_code == 0, result.output
    cache = Cache.open(tmp_path / "p.zarr")
    pairs, ids = cache.pairs(), cache.ids
    assert list(pairs["id"]) == [r["ID"] for r in rows]
    assert [ids[i] for i in pairs["ref_row"]] == [f"{r['ID']}/ref" for r in rows]
    assert [ids[i] for i in pairs["alt_row"]] == [f"{r['ID']}/alt" for r in rows]
    model = random_model("tiny-1k").model.eval()
    tok = Tokenizer(model.config.l_max)
    for k in (0, 7):
        row = rows[k]
        site = first_difference(row["WT"], row["MUT"])
        assert pairs["ref_site"][k] == site
        for allele, r in (("WT", pairs["ref_row"][k]), ("MUT", pairs["alt_row"][k])):
            with torch.no_grad():
                hidden = model(torch.as_tensor(tok(row[allele]))[None])[0].numpy()
            np.testing.assert_allclose(cache.pooled("site")[r], hidden[site], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(cache.pooled("sitewin")[r], hidden[site - 2: site + 3].mean(0),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(cache.pooled("mean")[r], hidden.mean(0), rtol=1e-4, atol=1e-5)
    # the variant's own state differs between alleles; states before it do not (causal model)
    with torch.no_grad():
        ref_h, alt_h = (model(torch.as_tensor(tok(rows[0][c]))[None])[0] for c in ("WT", "MUT"))
    site0 = pairs["ref_site"][0]
    torch.testing.assert_close(ref_h[:site0], alt_h[:site0], rtol=1e-5, atol=1e-5)  # FFT rounding only
    assert (ref_h[site0] - alt_h[site0]).abs().max() > 1e-2
    from heads.data import features

    delta = features(cache, ["delta-mean"])
    np.testing.assert_allclose(delta[0], cache.pooled("mean")[pairs["alt_row"][0]]
                               - cache.pooled("mean")[pairs["ref_row"][0]])
    assert features(cache, ["concat-site"]).shape == (12, 256)
    onehot = features(cache, ["variant"])
    wt0, mut0 = rows[0]["WT"][site0], rows[0]["MUT"][site0]
    assert onehot[0, "ACGT".index(wt0)] == 1 and onehot[0, 4 + "ACGT".index(mut0)] == 1
    assert onehot[0].sum() == 2


def test_three_output_head_on_pair_deltas(tmp_path):
    """donor/acceptor/neither deltas from variant one-hot + delta features, one model."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(240):
        wt = random_dna(rng, 40)
        site = int(rng.integers(5, 35))
        alt_base = rng.choice([b for b in "ACGT" if b != wt[site]])
        mut = wt[:site] + alt_base + wt[site + 1:]
        donor = float(alt_base == "G") - float(wt[site] == "G") + rng.normal(0, 0.05)
        acceptor = float(alt_base == "A") + rng.normal(0, 0.05)
        rows.append({"ID": f"v{i}", "WT": wt, "MUT": mut, "donor": donor, "acceptor": acceptor,
                     "neither": -donor - acceptor})
    rows[3]["donor"] = np.inf  # a log-ratio of a zero count: dropped and counted
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(main, ["embed", "--model", "tiny-1k", "--random-init", "--input",
                                  str(tmp_path / "pairs.csv"), "--ref-col", "WT", "--alt-col", "MUT",
                                  "--id-col", "ID", "--label", "donor", "--label", "acceptor",
                                  "--label", "neither", "--quiet", "--out", str(tmp_path / "p.zarr")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["fit-head", "--cache", str(tmp_path / "p.zarr"), "--label", "donor",
                                  "--label", "acceptor", "--label", "neither",
                                  "--features", "delta-mean+variant", "--head", "mlp3",
                                  "--head", "ridge", "--head", "lightgbm", "--no-plots",
                                  "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "(1 without a finite label dropped)" in result.output
    run = tmp_path / "runs" / "delta-mean+variant" / "mlp3"
    preds = pd.read_csv(run / "test_predictions.csv")
    assert {"pred_donor", "pred_acceptor", "pred_neither", "true_neither"} <= set(preds.columns)
    assert preds["id"].str.startswith("v").all() and len(preds) == 24  # one row per pair
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    for target in ("donor", "acceptor", "neither"):
        assert metrics["per_target"][target]["pearson"] > 0.8, metrics
    result = runner.invoke(main, ["predict", "--head-dir", str(run), "--cache", str(tmp_path / "p.zarr")])
    assert result.exit_code == 0
    table = pd.read_csv(io.StringIO(result.stdout))
    assert len(table) == 240 and list(table.columns[2:]) == ["pred_donor", "pred_acceptor", "pred_neither"]
    result = runner.invoke(main, ["fit-head", "--cache", str(tmp_path / "p.zarr"), "--label", "donor",
                                  "--features", "mean", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "holds variant pairs" in result.output
