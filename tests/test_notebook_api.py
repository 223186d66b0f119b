"""The notebook API (hyena_embed.embed, Cache.to_pandas/to_xarray) and runs you can watch."""
import doctest
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import hyena_embed
import hyena_embed.api
from cache.store import Cache, CacheError
from hyena_embed import load_model
from hyena_embed.embedder import Embedder
from hyena_embed.inputs import record_reader
from hyena_embed.runner import EmbedOptions, embed_chunk, run_embed
from hyena_embed.tokenizer import Tokenizer

from helpers import make_records, random_dna


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-1k", random_init=True, seed=3)


def test_docstring_examples_run():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning
        result = doctest.testmod(hyena_embed.api, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


def test_embed_equals_one_sequence_at_a_time_forward(tiny):
    rng = np.random.default_rng(0)
    seqs = [random_dna(rng, n) for n in (30, 700, 5, 220)]
    pooled, positions = hyena_embed.embed(seqs, model=tiny, pool=["mean", "last"],
                                          per_position=True, device="auto", batch_tokens=2048)
    tok = Tokenizer(tiny.config.l_max)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            hidden = tiny.model(torch.as_tensor(tok(s))[None])[0].numpy()
        assert positions[i].shape == (len(s) + 1, tiny.config.d_model)
        np.testing.assert_allclose(positions[i], hidden, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(pooled["mean"][i], hidden.mean(0), rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(pooled["last"][i], hidden[-1], rtol=1e-5, atol=2e-5)
    single = hyena_embed.embed(seqs[1], model=tiny)
    assert single.shape == (1, tiny.config.d_model)
    np.testing.assert_allclose(single[0], pooled["mean"][1], rtol=1e-5, atol=2e-5)


def test_reads_of_one_item_are_joined_with_sep(tiny):
    joined = hyena_embed.embed([["ACGTT", "GGCA"]], model=tiny)
    tok = Tokenizer(tiny.config.l_max)
    assert list(tok(["ACGTT", "GGCA"])) == [7, 8, 9, 10, 10, 1, 9, 9, 8, 7, 1]
    by_hand = Embedder(tiny.model, "cpu").pooled([tok(["ACGTT", "GGCA"])], ["mean"])["mean"]
    np.testing.assert_allclose(joined, by_hand, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"pool": "median"}, "pool takes"), ({"device": "cuda:7"}, "CUDA is not available"),
    ({"device": "tpu"}, "unknown device")])
def test_bad_arguments_say_what_to_use(tiny, kwargs, message):
    if kwargs.get("device", "").startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=message):
        hyena_embed.embed(["ACGT"], model=tiny, **kwargs)


def test_random_init_says_so_loudly():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        hyena_embed.embed(["ACGT"], model="tiny-1k", random_init=True)


def _small_cache(tiny, tmp_path, n=9, chunk_rows=4):
    recs = make_records(n, lo=20, hi=120)
    table = pd.DataFrame({"id": [r for r, _ in recs], "seq": [s for _, s in recs],
                          "y": np.arange(n) / 2, "kind": ["a", "b", "c"] * (n // 3)})
    table.to_csv(tmp_path / "t.csv", index=False)
    records = record_reader(str(tmp_path / "t.csv"), seq_col="seq", id_col="id", label_cols=["y", "kind"])
    run_embed(tiny, records, str(tmp_path / "c.zarr"),
              EmbedOptions(pools=("mean", "max"), dtype="float32", chunk_rows=chunk_rows),
              ["y", "kind"], progress=False, say=lambda m: None)
    return Cache.open(tmp_path / "c.zarr"), table


def test_cache_to_pandas_and_xarray(tiny, tmp_path):
    cache, table = _small_cache(tiny, tmp_path)
    df = cache.to_pandas(pool="mean")
    assert list(df.index) == list(table.id) and list(df.y) == list(table.y)
    assert list(df.kind) == list(table.kind) and list(df.n_tokens) == [len(s) + 1 for s in table.seq]
    np.testing.assert_array_equal(df.filter(like="mean_").to_numpy(), cache.pooled("mean"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: xarray opens it without a warning
        ds = cache.to_xarray()
        import xarray as xr
        xr.open_zarr(str(cache.path), group="pooled")
    np.testing.assert_array_equal(ds.pooled_max.values, cache.pooled("max"))
    assert list(ds.id.values) == list(table.id) and list(ds.label_kind.values) == list(table.kind)
    np.testing.assert_array_equal(ds.label_y.values, table.y.to_numpy())


def test_incomplete_cache_is_refused_by_the_tables(tiny, tmp_path):
    cache, _ = _small_cache(tiny, tmp_path)
    writable = Cache.open(cache.path, mode="r+")
    writable.group["progress/chunk_done"][1] = False
    writable.group.attrs["complete"] = False
    for read in (lambda c: c.to_pandas(), lambda c: c.to_xarray()):
        with pytest.raises(CacheError, match="incomplete"):
            read(Cache.open(cache.path))


def test_progress_moves_after_every_batch(tiny):
    rows_seen, tokens_seen = [], []
    recs = make_records(12, lo=50, hi=400, seed=2)
    from hyena_embed.inputs import Row
    rows = [Row(id=r, group=r, pack=0, parts=[s], labels={}) for r, s in recs]
    tok = Tokenizer(tiny.config.l_max)
    embed_chunk(Embedder(tiny.model, "cpu"), tok, rows, EmbedOptions(), batch_tokens=1024,
                on_batch=lambda n, t: (rows_seen.append(n), tokens_seen.append(t)))
    assert len(rows_seen) > 3  # several updates within one chunk
    assert sum(rows_seen) == 12 and sum(tokens_seen) == sum(len(s) + 1 for _, s in recs)
