"""Fast path, batch invariance and reduced precision on randomly initialised models."""
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyena_embed import cpu
from hyena_embed.backbone import HyenaDNA, next_power_of_two
from hyena_embed.config import HyenaConfig
from hyena_embed.batching import token_budget_batches
from hyena_embed.embedder import Embedder
from hyena_embed.pooling import POOLINGS, pool
from hyena_embed.tokenizer import PAD, Tokenizer, padded_width


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = HyenaDNA(HyenaConfig(d_model=64, n_layer=2, d_inner=256, l_max=1026)).eval()
    with torch.no_grad():  # GPT-style init zeroes biases; trained ones are not (the fast path folds them)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


def random_seqs(n, lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), size=rng.integers(lo, hi))) for _ in range(n)]


@pytest.mark.parametrize("length", [1, 2, 3, 255, 257, 700, 1026])
def test_fast_path_equals_reference_path(model, length):
    ids = torch.randint(7, 12, (2, length))
    with torch.no_grad():
        fast = model.set_fast_path(True)(ids, output_hidden_states=True)
        ref = model.set_fast_path(False)(ids, output_hidden_states=True)
    model.set_fast_path(True)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_fast_path_gradients_equal_reference_path(model):
    ids = torch.randint(7, 12, (3, 50))
    weights = torch.randn(3, 50, model.config.d_model)
    grads = {}
    for fast in (True, False):
        model.zero_grad()
        (model.set_fast_path(fast)(ids) * weights).sum().backward()
        grads[fast] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.set_fast_path(True)
    model.zero_grad()
    assert grads[True].keys() == grads[False].keys()
    assert any("in_proj.bias" in n for n in grads[True])  # the folded bias gets its gradient
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("gelu", [False, True])
def test_cpu_linear_equals_f_linear(gelu):
    x, w, b = torch.randn(2, 37, 24), torch.randn(40, 24), torch.randn(40)
    want = F.linear(x, w, b)
    want = F.gelu(want, approximate="tanh") if gelu else want
    with torch.no_grad():
        got = cpu.linear(x, w, b, gelu=gelu)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cpu.linear(x, w, b, gelu=gelu)
    assert got.shape == low.shape == (2, 37, 40)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert low.dtype == torch.bfloat16  # follows autocast, as F.linear would
    torch.testing.assert_close(low.float(), want, atol=0.1, rtol=0.05)
    # with autograd it is F.linear, so gradients flow
    w.requires_grad_(True)
    cpu.linear(x, w, b, gelu=gelu).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_keep_freed_memory_applies_on_glibc():
    assert cpu.keep_freed_memory() is True
    assert cpu.keep_freed_memory() is True  # idempotent


def test_filter_spectrum_is_cached_per_fft_size_and_invalidated(model):
    filt = model.filters()[0]
    filt.clear_cache()
    with torch.no_grad():
        model(torch.randint(7, 11, (1, 300)))
        model(torch.randint(7, 11, (1, 400)))  # same power-of-two FFT size: reused
        assert list(filt._spectra) == [next_power_of_two(600)]
        ids = torch.randint(7, 11, (1, 100))
        before = model(ids)
        filt.bias.add_(1.0)  # an in-place update must not leave a stale spectrum behind
        after = model(ids)
        filt.bias.sub_(1.0)
        expected = model.set_fast_path(False)(ids)
        model.set_fast_path(True)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(model(ids), expected, atol=2e-5, rtol=1e-5)


def test_causal_right_padding_leaves_real_positions_unchanged_left_padding_does_not(model):
    ids = torch.randint(7, 11, (1, 40))
    right = torch.cat([ids, torch.full((1, 25), PAD)], dim=1)
    left = torch.cat([torch.full((1, 25), PAD), ids], dim=1)
    with torch.no_grad():
        alone, padded_r, padded_l = model(ids), model(right), model(left)
    torch.testing.assert_close(padded_r[:, :40], alone, atol=1e-5, rtol=1e-5)
    assert (padded_l[:, 25:] - alone).abs().max() > 1e-3


def test_embedding_does_not_depend_on_batch_mates(model):
    tok = Tokenizer(model.config.l_max)
    rows = [tok(s) for s in random_seqs(12, 5, 900)]
    emb = Embedder(model, layer=None)
    alone = [emb.pooled([r], POOLINGS) for r in rows]
    together = emb.pooled(rows, POOLINGS)
    shuffled_order = np.random.default_rng(1).permutation(len(rows))
    shuffled = emb.pooled([rows[i] for i in shuffled_order], POOLINGS)
    for m in POOLINGS:
        solo = np.concatenate([a[m] for a in alone])
        np.testing.assert_allclose(together[m], solo, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(shuffled[m], solo[shuffled_order], rtol=1e-4, atol=1e-4)


def test_pooling_uses_real_tokens_only():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [-5.0], [7.0]]])
    lengths = torch.tensor([2, 3])
    assert pool(hidden, lengths, "mean").squeeze(1).tolist() == pytest.approx([2.0, 4 / 3])
    assert pool(hidden, lengths, "max").squeeze(1).tolist() == [3.0, 7.0]
    assert pool(hidden, lengths, "sum").squeeze(1).tolist() == [4.0, 4.0]
    assert pool(hidden, lengths, "first").squeeze(1).tolist() == [1.0, 2.0]
    assert pool(hidden, lengths, "last").squeeze(1).tolist() == [3.0, 7.0]
    with pytest.raises(ValueError, match="choose from"):
        pool(hidden, lengths, "median")


def test_token_budget_batches_cover_every_row_once_within_budget():
    lengths = [5, 100, 7, 60, 60, 3, 250, 1]
    batches = token_budget_batches(lengths, batch_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or padded_width(max(lengths[i] for i in b)) * len(b) <= 200


def test_padded_width_rounds_to_few_shapes_with_little_padding():
    widths = {n: padded_width(n) for n in range(1, 5000)}
    assert all(n <= w < n * 9 / 8 + 1 for n, w in widths.items())
    assert widths[15] == 15 and widths[100] == 104 and widths[1025] == 1152 and widths[4096] == 4096
    assert len(set(widths.values())) < 110  # instead of 4999 shapes
    assert padded_width(1025, l_max=1026) == 1026


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_keeps_filter_and_residual_float32(model, dtype):
    seen = []
    hook = model.filters()[0].register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    tok = Tokenizer(model.config.l_max)
    rows = [tok(s) for s in random_seqs(6, 100, 1000, seed=2)]
    full = Embedder(model, precision="float32").pooled(rows, ["mean"])["mean"]
    half_emb = Embedder(model, precision={torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype])
    hidden, _ = half_emb.hidden(rows[:1])
    half = half_emb.pooled(rows, ["mean"])["mean"]
    hook.remove()
    assert all(i == torch.float32 and o == torch.float32 for i, o in seen)
    assert hidden.dtype == torch.float32
    rel = np.linalg.norm(half - full, axis=1) / np.linalg.norm(full, axis=1)
    assert rel.max() < 1e-2, rel


def test_the_exact_mode_fft_in_float64_computes_the_same_convolution(model, monkeypatch):
    """A float32 run on CUDA does the long convolution in float64 (backbone.fft_dtype); forced
    here on CPU, it gives the float32 path's states to float32 rounding, from its own cache."""
    from hyena_embed import backbone

    assert backbone.fft_dtype("cpu") == torch.float32
    assert backbone.fft_dtype("cuda") == torch.float64  # no CUDA autocast in force
    ids = torch.randint(7, 11, (2, 300))
    filt = model.filters()[0]
    filt.clear_cache()
    with torch.no_grad():
        single = model(ids)
        monkeypatch.setattr(backbone, "fft_dtype", lambda _device_type: torch.float64)
        double = model(ids)
    assert double.dtype == torch.float32
    torch.testing.assert_close(double, single, rtol=1e-5, atol=2e-5 * float(single.abs().max()))
    assert list(filt._spectra64) == [next_power_of_two(600)]
    assert filt._spectra64[1024].dtype == torch.complex128
