"""The throughput machinery changes no value: deferred host copies, the split of a batch that
runs out of memory, the memory-sized token budget, power-of-two FFT sizes and --compile."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache.store import Cache
from cli import main
from hyena_embed.backbone import HyenaDNA, next_power_of_two
from hyena_embed.config import HyenaConfig
from hyena_embed.batching import (BYTES_PER_TOKEN_CHANNEL, CPU_BATCH_TOKENS, GPU_BATCH_TOKENS,
                                  GPU_TOKEN_CHANNELS, budget_from_free_memory, default_batch_tokens)
from hyena_embed.embedder import Embedder
from hyena_embed.inputs import Record
from hyena_embed.loading import random_model
from hyena_embed.runner import EmbedOptions, embed_chunk, make_plan
from hyena_embed.tokenizer import Tokenizer, padded_width
from hyena_embed.variants import VariantPair, pair_records
from tests.helpers import assert_close_to_reference, random_dna


def _chunk_inputs(loaded, options, n=23, seed=0, pairs=False):
    rng = np.random.default_rng(seed)
    if pairs:
        records = []
        for i in range(n):
            ref = random_dna(rng, int(rng.integers(30, 300)))
            site = len(ref) // 2
            alt = ref[:site] + ("A" if ref[site] != "A" else "C") + ref[site + 1:]
            records.append(VariantPair(f"p{i}", ref, alt, site, site, ref[site], alt[site]))
        records = list(pair_records(records))
    else:
        records = [Record(f"r{i}", [random_dna(rng, int(rng.integers(20, 700)))], {}) for i in range(n)]
    tokenizer = Tokenizer(loaded.config.l_max)
    plan = make_plan(lambda: iter(records), tokenizer, options, [])
    from hyena_embed.inputs import plan_rows

    rows = list(plan_rows(iter(records), tokenizer.max_body, None))
    m = plan.meta
    return tokenizer, rows, m.position_first, m.position_length, m.sites


@pytest.mark.parametrize("kind", ["per-position", "pairs"])
def test_deferred_host_copies_and_out_of_memory_splits_give_the_same_arrays(monkeypatch, kind):
    loaded = random_model("tiny-1k", seed=3)
    options = EmbedOptions(pools=("mean", "last"), per_position=kind == "per-position",
                           site_window=3 if kind == "pairs" else None)
    tokenizer, rows, firsts, lengths, sites = _chunk_inputs(loaded, options, pairs=kind == "pairs")
    embedder = Embedder(loaded.model, "cpu", "float32")
    args = (embedder, tokenizer, rows, options, 4096, firsts, lengths, sites)
    plain = embed_chunk(*args, deferred=False)
    deferred = embed_chunk(*args, deferred=True)  # the CUDA order: read after the next batch

    real_hidden, calls = embedder.hidden, []

    def short_of_memory(token_rows):  # a device that fits at most 3 rows at a time
        calls.append(len(token_rows))
        if len(token_rows) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_hidden(token_rows)

    monkeypatch.setattr(embedder, "hidden", short_of_memory)
    split = embed_chunk(*args)
    assert max(calls) > 3 and any(c <= 3 for c in calls)  # it failed, split and went on
    for other in (deferred, split):
        for name, values in plain[0].items():
            # other batch shapes mean other FFT sizes: rounding on the scale of the values
            assert_close_to_reference(torch.as_tensor(other[0][name]), torch.as_tensor(values), name)
        if kind == "per-position":
            np.testing.assert_allclose(other[1]["values"], plain[1]["values"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(deferred[0]["mean"], plain[0]["mean"])  # same batches: exact


def test_an_out_of_memory_single_row_is_not_retried_forever(monkeypatch):
    loaded = random_model("tiny-1k", seed=3)
    options = EmbedOptions()
    tokenizer, rows, *_ = _chunk_inputs(loaded, options, n=3)
    embedder = Embedder(loaded.model, "cpu", "float32")

    def never_fits(token_rows):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(embedder, "hidden", never_fits)
    with pytest.raises(torch.OutOfMemoryError):
        embed_chunk(embedder, tokenizer, rows, options, 4096)


def test_the_token_budget_is_the_rate_plateau_unless_free_gpu_memory_is_short(monkeypatch):
    assert default_batch_tokens(torch.device("cpu"), 256) == CPU_BATCH_TOKENS
    free = {"bytes": 80 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * 2**30))
    plateau = default_batch_tokens(torch.device("cuda"), 256)
    assert plateau == GPU_TOKEN_CHANNELS // 256 == 2 ** 20  # not half of 80 GiB
    assert default_batch_tokens(torch.device("cuda"), 128) == 2 * plateau
    free["bytes"] = 4 * 2**30  # another job holds most of the GPU: the budget shrinks with it
    short = default_batch_tokens(torch.device("cuda"), 256)
    assert short == int(0.5 * free["bytes"] / (BYTES_PER_TOKEN_CHANNEL * 256)) < plateau
    assert budget_from_free_memory(2**20, 256) == GPU_BATCH_TOKENS[0]
    assert budget_from_free_memory(2**45, 128) == GPU_BATCH_TOKENS[1]
    # a wider model gets fewer tokens for the same memory
    assert budget_from_free_memory(2**34, 512) < budget_from_free_memory(2**34, 128)


def test_every_bucket_width_has_a_power_of_two_fft_and_the_spectra_stay_on_the_device():
    l_max = 32770
    widths = {padded_width(n, l_max) for n in range(1, l_max + 1)}
    assert len(widths) < 120  # few shapes, so few FFT plans and spectra
    for w in widths:
        n_fft = next_power_of_two(2 * w)
        assert n_fft & (n_fft - 1) == 0 and 2 * w <= n_fft < 4 * w
    loaded = random_model("tiny-1k", seed=1)
    embedder = Embedder(loaded.model, "cpu", "float32")
    rng = np.random.default_rng(0)
    tok = Tokenizer(loaded.config.l_max)
    for n in (10, 37, 90, 200, 513, 1000):
        embedder.pooled([tok(random_dna(rng, n))], ["mean"])
    for block in loaded.model.backbone.layers:
        spectra = block.mixer.filter_fn._spectra
        assert spectra and all(k & (k - 1) == 0 for k in spectra)
        assert all(s.device == next(loaded.model.parameters()).device for s in spectra.values())


def _small_model():
    torch.manual_seed(0)
    return HyenaDNA(HyenaConfig(d_model=32, n_layer=1, d_inner=64, l_max=1026)).eval()


def test_compile_gives_the_same_embeddings_on_cpu(monkeypatch, tmp_path):
    # a cache of its own: kernels cached under another CPU capability can compute NaN here
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = _small_model()
    rng = np.random.default_rng(1)
    tok = Tokenizer(1026)
    rows = [tok(random_dna(rng, n)) for n in (50, 63, 40)]
    eager = Embedder(model, "cpu", "float32").pooled(rows, ["mean", "last"])
    messages = []
    compiled = Embedder(model, "cpu", "float32", compile=True, say=messages.append)
    assert compiled.compiled, messages  # this machine has a C compiler: it must compile
    got = compiled.pooled(rows, ["mean", "last"])
    for name in eager:
        np.testing.assert_allclose(got[name], eager[name], rtol=1e-4, atol=1e-5)


def test_a_compiled_model_that_computes_other_numbers_is_not_used(monkeypatch):
    """Seen here: an inductor cache written under another CPU capability gave NaN. The probe
    batch is checked against the eager model, and a mismatch falls back with a message."""
    from hyena_embed import compiling

    def wrong(model):
        for block in model.backbone.layers:
            gates = block.mixer.gates
            block.mixer.gates = lambda u, _gates=gates: tuple(t * float("nan") for t in _gates(u))

    monkeypatch.setattr(compiling, "compile_dense_parts", wrong)
    model = _small_model()
    messages = []
    embedder = Embedder(model, "cpu", "float32", compile=True, say=messages.append)
    assert not embedder.compiled
    assert messages == ["--compile: the compiled model gives NaN or inf where the eager one "
                        "does not; running without it"]
    rows = [Tokenizer(1026)(random_dna(np.random.default_rng(2), 50))]
    assert np.isfinite(embedder.pooled(rows, ["mean"])["mean"]).all()


def test_compile_falls_back_with_a_message_where_it_cannot_compile(monkeypatch, tmp_path):
    from hyena_embed import compiling

    def broken(model):
        for block in model.backbone.layers:
            def fail(*_args, **_kwargs):
                raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
            block.mixer.gates = fail

    monkeypatch.setattr(compiling, "compile_dense_parts", broken)
    model = _small_model()
    messages = []
    embedder = Embedder(model, "cpu", "float32", compile=True, say=messages.append)
    assert not embedder.compiled
    assert "--compile: torch.compile does not work here (RuntimeError: InductorError: no working " \
           "C++ compiler found); running without it" == messages[0]
    assert "gates" not in model.backbone.layers[0].mixer.__dict__  # undone: eager again
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nACGTACGTAAAC\n>b\nGGGTTTAC\n")
    result = CliRunner().invoke(main, ["embed", "--model", "tiny-1k", "--random-init", "--input",
                                       str(fasta), "--compile", "--quiet", "--out", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0, result.output
    assert "running without it" in result.output
    assert Cache.open(tmp_path / "c.zarr").complete
