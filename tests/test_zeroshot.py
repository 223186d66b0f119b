"""Zero-shot variant scores (issue 12, item 2) against a computation by hand from the logits of
the fixture model (the -hf file carries its own lm_head)."""
import numpy as np
import pytest
import torch

from hyena_embed.checkpoints import build_from_directory
from hyena_embed.loading import LoadedModel
from hyena_embed.tokenizer import VOCAB, Tokenizer
from hyena_embed.variants import VariantPair
from hyena_embed.zeroshot import reverse_complement, score_pairs

from helpers import random_dna


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir_module):
    model, facts = build_from_directory(fixtures_dir_module / "tiny-1k" / "hf")
    return LoadedModel(model.eval(), "tiny-1k-fixture", "fixture", facts["weights_sha256"])


@pytest.fixture(scope="module")
def fixtures_dir_module():
    from conftest import FIXTURES

    if not FIXTURES.exists():
        pytest.skip("reference fixtures not found")
    return FIXTURES


def snv(pid, ref, site, base):
    alt = ref[:site] + base + ref[site + 1:]
    return VariantPair(pid, ref, alt, site, site, ref[site], base)


def by_hand(model, seq, tokenizer):
    ids = torch.as_tensor(tokenizer(seq))[None]
    with torch.no_grad():
        hidden = model(ids)[0]
        logp = torch.log_softmax(model.logits(hidden), dim=-1)
    loglik = sum(float(logp[t - 1, ids[0, t]]) for t in range(1, ids.shape[1]))
    return logp.numpy(), loglik, hidden.numpy().astype(np.float64)


def test_scores_equal_a_hand_computation_on_both_strands(fixture_model):
    rng = np.random.default_rng(0)
    ref = random_dna(rng, 80)
    pairs = [snv("a", ref, 37, "A" if ref[37] != "A" else "C"),
             snv("b", random_dna(rng, 50), 12, "G" if ref[12] != "G" else "T")]
    if pairs[1].ref_allele == pairs[1].alt_allele:
        pairs[1] = snv("b", pairs[1].ref_seq, 12, "T" if pairs[1].ref_allele != "T" else "A")
    got = score_pairs(fixture_model, pairs, strands="both", device="cpu")
    model, tok = fixture_model.model, Tokenizer(fixture_model.config.l_max)
    for i, p in enumerate(pairs):
        expected = {k: [] for k in got}
        for strand in "+-":
            r, a = (p.ref_seq, p.alt_seq) if strand == "+" else (reverse_complement(p.ref_seq),
                                                                reverse_complement(p.alt_seq))
            site = p.ref_site if strand == "+" else len(r) - 1 - p.ref_site
            rb, ab = r[site], a[site]
            lr, llr, hr = by_hand(model, r, tok)
            la, lla, ha = by_hand(model, a, tok)
            expected["window_llr"].append(lla - llr)
            expected["site_llr"].append(lr[site - 1, VOCAB[ab]] - lr[site - 1, VOCAB[rb]])
            mr, ma = hr.mean(0), ha.mean(0)
            expected["cosine_mean"].append(1 - mr @ ma / np.linalg.norm(mr) / np.linalg.norm(ma))
            expected["l2_mean"].append(np.linalg.norm(mr - ma))
            sr, sa = hr[site], ha[site]
            expected["cosine_site"].append(1 - sr @ sa / np.linalg.norm(sr) / np.linalg.norm(sa))
            expected["l2_site"].append(np.linalg.norm(sr - sa))
        for name, values in expected.items():
            assert got[name][i] == pytest.approx(np.mean(values), rel=1e-4, abs=1e-5), (name, i)
    assert np.isfinite(got["site_llr"]).all() and (got["l2_mean"] > 0).all()


def test_positions_before_the_variant_cancel_in_the_window_llr(fixture_model):
    rng = np.random.default_rng(1)
    ref = random_dna(rng, 120)
    pair = snv("x", ref, 90, "A" if ref[90] != "A" else "G")
    model, tok = fixture_model.model, Tokenizer(fixture_model.config.l_max)
    lr, _, _ = by_hand(model, pair.ref_seq, tok)
    la, _, _ = by_hand(model, pair.alt_seq, tok)
    ids_r, ids_a = tok(pair.ref_seq), tok(pair.alt_seq)
    per_token = [la[t - 1, ids_a[t]] - lr[t - 1, ids_r[t]] for t in range(1, len(ids_r))]
    assert np.abs(per_token[:89]).max() < 1e-4  # identical left contexts: nothing before the site
    got = score_pairs(fixture_model, [pair], strands="+", device="cpu")
    assert got["window_llr"][0] == pytest.approx(sum(per_token[89:]), abs=1e-3)


def test_indels_get_the_window_llr_only(fixture_model):
    rng = np.random.default_rng(2)
    ref = random_dna(rng, 60)
    alt = ref[:30] + "GGG" + ref[31:]
    pair = VariantPair("ins", ref, alt, 30, 30, ref[30], "GGG")
    got = score_pairs(fixture_model, [pair], device="cpu")
    assert np.isnan(got["site_llr"][0]) and np.isfinite(got["window_llr"][0])
    assert np.isfinite(got["l2_mean"][0])


def test_zero_shot_rows_join_fit_heads_board_on_the_same_split_only(tmp_path):
    import shutil

    import pandas as pd
    from click.testing import CliRunner

    import cli
    from conftest import REPO

    pairs = tmp_path / "pairs.csv"
    shutil.copy(REPO / "examples" / "demo_pairs.csv", pairs)
    runner = CliRunner()
    tiny = ["--model", "tiny-1k", "--random-init"]
    source = ["--input", str(pairs), "--ref-col", "REF_SEQ", "--alt-col", "ALT_SEQ", "--id-col", "ID",
              "--label", "donor"]
    assert runner.invoke(cli.main, ["embed", *tiny, *source, "--quiet",
                                    "--out", str(tmp_path / "p.zarr")]).exit_code == 0
    assert runner.invoke(cli.main, ["fit-head", "--cache", str(tmp_path / "p.zarr"), "--label", "donor",
                                    "--head", "ridge", "--no-plots",
                                    "--out", str(tmp_path / "board")]).exit_code == 0
    result = runner.invoke(cli.main, ["score-variants", *tiny, *source, "--quiet", "--threshold", "0.5",
                                      "--board", str(tmp_path / "board"), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv", dtype={"split": str})
    assert board["split"].nunique() == 1
    zero = board[board.features == "zero-shot"]
    assert set(zero["head"]) == {"site_llr", "window_llr", "cosine_mean", "l2_mean", "cosine_site", "l2_site"}
    # each row's test score is its (signed) score's Pearson r on the test pairs, by hand
    scores = pd.read_csv(tmp_path / "s.csv").set_index("id")
    row = zero.set_index("head").loc["window_llr"]
    table = pd.read_csv(tmp_path / "board" / "zero-shot" / "window_llr" / "test_predictions.csv")
    sign = -1.0 if '"sign": -1.0' in row["chosen"] else 1.0
    np.testing.assert_allclose(table.pred_donor, sign * scores.loc[table.id, "window_llr"], rtol=1e-6)
    assert row["test_pearson"] == pytest.approx(np.corrcoef(table.pred_donor, table.true_donor)[0, 1])
    other = runner.invoke(cli.main, ["score-variants", *tiny, *source, "--quiet", "--seed", "7",
                                     "--board", str(tmp_path / "board"), "--out", str(tmp_path / "t.csv")])
    assert other.exit_code != 0 and "another split" in other.output
