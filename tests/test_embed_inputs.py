"""`embed` on every input kind, packs and label handling, and what lands in the cache."""
import numpy as np
import pandas as pd
import pytest
import torch

from cache.store import Cache
from hyena_embed.embedder import Embedder
from hyena_embed.inputs import InputError, pack_reads, record_reader
from hyena_embed.loading import load_model
from hyena_embed.runner import EmbedOptions, run_embed
from hyena_embed.tokenizer import Tokenizer

from helpers import make_records, random_dna, write_fasta


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("tiny-1k", random_init=True, seed=1)


def run(tiny, path, out, label_cols=(), **kw):
    reader_kw = {k: kw.pop(k) for k in ("fmt", "seq_col", "id_col", "split") if k in kw}
    records = record_reader(str(path), label_cols=label_cols, **reader_kw)
    return run_embed(tiny, records, str(out), EmbedOptions(**kw), label_cols, progress=False,
                     say=lambda m: None)


def direct_pooled(tiny, seqs, method="mean"):
    emb = Embedder(tiny.model, precision="float32")
    tok = Tokenizer(tiny.config.l_max)
    return np.concatenate([emb.pooled([tok(s)], [method])[method] for s in seqs])


@pytest.mark.parametrize("gz", [False, True])
def test_fasta_cache_matches_direct_embedding(tiny, tmp_path, gz):
    recs = make_records(7)
    path = write_fasta(tmp_path / ("in.fa.gz" if gz else "in.fa"), recs, gz=gz)
    run(tiny, path, tmp_path / "c.zarr", pools=("mean", "max", "last"), dtype="float32",
        chunk_rows=3)
    cache = Cache.open(tmp_path / "c.zarr")
    assert cache.complete and list(cache.ids) == [r for r, _ in recs]
    np.testing.assert_allclose(cache.pooled("mean"), direct_pooled(tiny, [s for _, s in recs]),
                               atol=1e-5, rtol=1e-5)
    assert list(cache.sequences()) == [s for _, s in recs]
    assert list(cache.group["n_tokens"][:]) == [len(s) + 1 for _, s in recs]


def test_csv_tsv_parquet_with_labels(tiny, tmp_path):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"name": [f"r{i}" for i in range(6)],
                       "seq": [random_dna(rng, 50 + i) for i in range(6)],
                       "y": [0.5, 1.5, np.nan, 3.0, 4.0, 5.0], "tissue": list("abcabc")})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    results = {}
    for name in ("t.csv", "t.tsv", "t.parquet"):
        run(tiny, tmp_path / name, tmp_path / f"{name}.zarr", label_cols=("y", "tissue"),
            seq_col="seq", id_col="name", dtype="float32")
        cache = Cache.open(tmp_path / f"{name}.zarr")
        results[name] = cache.pooled("mean")
        assert list(cache.ids) == list(df.name)
        np.testing.assert_array_equal(cache.label("y"), df.y.to_numpy())  # NaN kept by default
        assert list(cache.label("tissue")) == list(df.tissue)
    np.testing.assert_array_equal(results["t.csv"], results["t.parquet"])
    np.testing.assert_array_equal(results["t.csv"], results["t.tsv"])
    summary = run(tiny, tmp_path / "t.csv", tmp_path / "drop.zarr", label_cols=("y",),
                  seq_col="seq", id_col="name", missing_labels="drop")
    assert summary["dropped_missing_labels"] == 1 and summary["rows"] == 5
    assert "r2" not in list(Cache.open(tmp_path / "drop.zarr").ids)


def test_hf_dataset_with_list_column_and_packs(tiny, tmp_path):
    import datasets

    rng = np.random.default_rng(5)
    reads = [[random_dna(rng, 250) for _ in range(9)], [random_dna(rng, 250) for _ in range(2)]]
    data = datasets.Dataset.from_dict({"sample_id": ["s1", "s2"], "pH": [6.5, 7.2], "sequences": reads})
    data.save_to_disk(str(tmp_path / "ds"))
    summary = run(tiny, tmp_path / "ds", tmp_path / "p.zarr", label_cols=("pH",),
                  seq_col="sequences", id_col="sample_id", packs=2, dtype="float32")
    cache = Cache.open(tmp_path / "p.zarr")
    # 1024 tokens of room: 4 reads of 250 + 3 [SEP] fit in a pack; s1 fills 2 packs, 1 read left out
    assert list(cache.ids) == ["s1/pack0", "s1/pack1", "s2/pack0"]
    assert list(cache.groups) == ["s1", "s1", "s2"]
    assert list(cache.group["pack"][:]) == [0, 1, 0]
    assert list(cache.label("pH")) == [6.5, 6.5, 7.2]
    assert summary["reads_left_out"] == 1
    assert cache.group["n_tokens"][0] == 4 * 250 + 4  # 3 inner [SEP] + the final one
    expected = direct_pooled(tiny, [reads[0][4:8]])  # the second pack, joined with [SEP]
    np.testing.assert_allclose(cache.pooled("mean")[1], expected[0], atol=1e-5, rtol=1e-5)
    assert cache.sequences()[1] == "|".join(reads[0][4:8])


def test_pack_reads_greedy_disjoint():
    packs, left = pack_reads(["A" * 4, "C" * 4, "G" * 4, "T" * 9, "A" * 2], budget=9, packs=2)
    assert packs == [["A" * 4, "C" * 4], ["G" * 4]] and left == 2


def test_per_position_window_and_layer(tiny, tmp_path):
    recs = make_records(5, lo=30, hi=90, seed=9)
    path = write_fasta(tmp_path / "w.fa", recs)
    run(tiny, path, tmp_path / "w.zarr", pools=("mean",), per_position=True, center_window=16,
        layer=1, dtype="float32", chunk_rows=2)
    cache = Cache.open(tmp_path / "w.zarr")
    tok = Tokenizer(tiny.config.l_max)
    for i, (_, seq) in enumerate(recs):
        ids = torch.as_tensor(tok(seq))[None]
        with torch.no_grad():
            hidden = tiny.model(ids, layer=1)[0].numpy()
        start = (len(seq) + 1 - 16) // 2
        np.testing.assert_allclose(cache.positions(i), hidden[start: start + 16], atol=1e-5)
        assert cache.group["positions/first_token"][i] == start
    # chunk blocks start on Zarr chunk boundaries so ranks never share a chunk
    starts = cache.group["positions/start"][:]
    assert starts[2] % 4096 == 0 and starts[4] % 4096 == 0 and starts[1] == 16


def test_rc_averaging(tiny, tmp_path):
    path = write_fasta(tmp_path / "rc.fa", [("a", "AACCGGTTAC"), ("b", "GTAACCGGTT")])
    run(tiny, path, tmp_path / "rc.zarr", rc=True, dtype="float32")
    pooled = Cache.open(tmp_path / "rc.zarr").pooled("mean")
    # b is the reverse complement of a: with --rc both see the same two strands
    np.testing.assert_allclose(pooled[0], pooled[1], atol=1e-5)
    plain = direct_pooled(tiny, ["AACCGGTTAC", "GTAACCGGTT"])
    np.testing.assert_allclose(pooled[0], plain.mean(axis=0), atol=1e-5)


def test_truncation_counted_or_refused(tiny, tmp_path):
    path = write_fasta(tmp_path / "long.fa", [("long", "ACGT" * 300), ("short", "ACGT")])
    summary = run(tiny, path, tmp_path / "l.zarr")
    cache = Cache.open(tmp_path / "l.zarr")
    assert summary["truncated_rows"] == 1
    assert list(cache.group["n_truncated"][:]) == [1200 - 1025, 0]
    assert cache.sequences()[0] == ("ACGT" * 300)[-1025:]
    with pytest.raises(InputError, match="exceed"):
        run(tiny, path, tmp_path / "l2.zarr", truncation="error")


@pytest.mark.parametrize("content,message", [
    ("", "empty"),
    (">a\nACGT\n>b\n\n", "empty sequence"),
    (">a\nACGX\n", "invalid character 'X' at position 4"),
    (">a\nACGT\n>a\nACGT\n", "duplicate id 'a'"),
    ("ACGT\n", "before the first '>'"),
])
def test_bad_fasta_inputs(tiny, tmp_path, content, message):
    path = tmp_path / "bad.fa"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        run(tiny, path, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()  # nothing that looks like a cache


def test_missing_column_lists_available(tiny, tmp_path):
    pd.DataFrame({"seq": ["ACGT"], "id": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InputError, match="column.*sequence.*not found; available: seq, id"):
        run(tiny, tmp_path / "t.csv", tmp_path / "o.zarr", seq_col="sequence")
    with pytest.raises(InputError, match="--seq-col"):
        record_reader(str(tmp_path / "t.csv"))
