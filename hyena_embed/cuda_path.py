"""The frozen forward pass on CUDA: fewer bytes per token through fused Triton kernels.

On a GPU the forward of a frozen model is bound by memory traffic, not arithmetic (small-32k
does about 10 kFLOP per byte-free token and channel in its GEMMs, far under the H200's
~200 FLOP/byte ridge for the elementwise work around them). So this path keeps the maths of
`backbone.py` and cuts the passes over memory. Bytes moved per token and model channel, one
block, fp16 compute (c = compute dtype bytes, 2; n_fft >= 2L, so "per token" FFT terms double):

    step                          CPU-shaped fast path            this path
    norm1 (+ residual add)        add 4+2+4, LN 4+4, cast 4+2     fused add+LN: 4+2 in, 4+2 out
    in_proj GEMM out (3 ch)       3 x 2                           3 x 2
    short conv + gates            cast 3x(2+4), 3 addcmul passes  one kernel: 3 x 2 in,
                                  ~3x(4+4+4), v*x1 4+4+4          x0 2 + padded v 2 x 4 out
    pad for the FFT               torch pads a copy: 4 + 2 x 4    written by the kernel
    rfft, spectrum product, irfft 8 + 8, 8+8+8, 8 + 8 (+ cuFFT's own passes), the same
    slice, gate by x0, cast       4 + 4 + 4, cast 4 + 2           one pass: 4 + 2 in, 2 out
    norm2 (+ residual add)        as norm1                        as norm1
    fc1 + GELU                    4 x 2 out, GELU 4 x (2 + 2)     GELU in the GEMM epilogue
                                                                  where cuBLASLt matches
    total, about                  ~210 B                          ~110 B

With d = 256 that is ~54 KB -> ~28 KB per token per block. The FFT convolution stays float32
(fp16 FFTs only work at powers of two, and the long filter is precision-sensitive), as do the
residual stream and the positional/filter MLP: only the storage of x0, the GEMM inputs and the
LayerNorm outputs is in the compute dtype, as under the port's own autocast.

Used only for inference (no autograd, module in eval mode) on CUDA tensors with Triton
present; everything else takes `backbone.py`'s path. The kernels are plain Triton, so
`TRITON_INTERPRET=1` runs them on CPU tensors (tests/test_cuda_path.py).
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch on Linux; CPU wheels go without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

DISABLE_ENV = "HYENA_EMBED_NO_KERNELS"  # set to 1 to take backbone.py's path on CUDA too


def available() -> bool:
    return triton is not None and os.environ.get(DISABLE_ENV) != "1"


def applies(model, x: torch.Tensor) -> bool:
    """Whether the fused inference path serves this forward."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    return (available() and (x.is_cuda or interpreting) and not torch.is_grad_enabled()
            and not model.training and getattr(model, "kernels", False)
            and model.backbone.layers[0].mixer.filter_fn.fast)


def compute_dtype(device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


if triton is not None:
    @triton.jit
    def _short_conv_gates_kernel(z_ptr, w_ptr, conv_bias_ptr, in_bias_ptr, x0_ptr, v_ptr,
                                 D, B, L, N_FFT, K: tl.constexpr, BLOCK: tl.constexpr):
        """z (3D, B, L) -> x0 (D, B, L) and v * x1 zero-padded to (D, B, N_FFT), float32.

        Causal depthwise conv of (z + in_bias) with weights w (3D, K), plus conv_bias; taps
        before the sequence start see zeros (the port's padding), not the input bias."""
        c = tl.program_id(0).to(tl.int64)
        b = tl.program_id(1).to(tl.int64)
        t = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        in_seq = t < L
        acc0 = tl.zeros([BLOCK], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        row0 = (c * B + b) * L
        row1 = ((c + D) * B + b) * L
        row2 = ((c + 2 * D) * B + b) * L
        for j in tl.static_range(K):  # lag j uses weight K - 1 - j
            src = t - j
            ok = in_seq & (src >= 0)
            z0 = tl.load(z_ptr + row0 + src, mask=ok, other=0.0).to(tl.float32)
            z1 = tl.load(z_ptr + row1 + src, mask=ok, other=0.0).to(tl.float32)
            z2 = tl.load(z_ptr + row2 + src, mask=ok, other=0.0).to(tl.float32)
            acc0 += tl.where(ok, (z0 + tl.load(in_bias_ptr + c)) * tl.load(w_ptr + c * K + K - 1 - j), 0.0)
            acc1 += tl.where(ok, (z1 + tl.load(in_bias_ptr + c + D))
                             * tl.load(w_ptr + (c + D) * K + K - 1 - j), 0.0)
            acc2 += tl.where(ok, (z2 + tl.load(in_bias_ptr + c + 2 * D))
                             * tl.load(w_ptr + (c + 2 * D) * K + K - 1 - j), 0.0)
        x0 = acc0 + tl.load(conv_bias_ptr + c)
        x1 = acc1 + tl.load(conv_bias_ptr + c + D)
        v = acc2 + tl.load(conv_bias_ptr + c + 2 * D)
        tl.store(x0_ptr + row0 + t, x0.to(x0_ptr.dtype.element_ty), mask=in_seq)
        tl.store(v_ptr + (c * B + b) * N_FFT + t, tl.where(in_seq, v * x1, 0.0), mask=t < N_FFT)

    @triton.jit
    def _add_layernorm_kernel(x_ptr, delta_ptr, x_out_ptr, w_ptr, b_ptr, y_ptr, N, D, eps,
                              HAS_DELTA: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        """x_out = x + delta (float32), y = LayerNorm(x_out) * w + b in y's dtype; ROWS rows each."""
        rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < N) & (cols[None, :] < D)
        offsets = rows[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA:
            x += tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            tl.store(x_out_ptr + offsets, x, mask=mask)
        mean = tl.sum(x, axis=1) / D
        centred = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / D + eps)
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * w[None, :] + bias[None, :]
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


CONV_BLOCK = 1024


def short_conv_gates(z: torch.Tensor, weight: torch.Tensor, conv_bias: torch.Tensor,
                     in_bias: torch.Tensor, n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-major z (3d, B, L) -> (x0 (d, B, L) in z's dtype, v * x1 as (d, B, n_fft) float32,
    zero past L: ready for an rfft without a padding copy)."""
    width, batch, length = z.shape
    d = width // 3
    k = weight.shape[-1]
    x0 = torch.empty((d, batch, length), dtype=z.dtype, device=z.device)
    v = torch.empty((d, batch, n_fft), dtype=torch.float32, device=z.device)
    grid = (d, batch, triton.cdiv(n_fft, CONV_BLOCK))
    _short_conv_gates_kernel[grid](z.contiguous(), weight.float().reshape(width, k).contiguous(),
                                   conv_bias.float().contiguous(), in_bias.float().contiguous(),
                                   x0, v, d, batch, length, n_fft, K=k, BLOCK=CONV_BLOCK)
    return x0, v


def add_layernorm(x: torch.Tensor, delta: torch.Tensor | None, norm: torch.nn.LayerNorm,
                  out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta as a new float32 tensor, LayerNorm of it in out_dtype); delta None: no add."""
    d = x.shape[-1]
    flat = x.reshape(-1, d)
    n = flat.shape[0]
    x_out = flat if delta is None else torch.empty_like(flat, dtype=torch.float32)
    y = torch.empty((n, d), dtype=out_dtype, device=x.device)
    block_d = triton.next_power_of_2(d)
    rows = max(1, min(16, 4096 // block_d))
    delta_flat = flat if delta is None else delta.reshape(-1, d).contiguous()
    _add_layernorm_kernel[(triton.cdiv(n, rows),)](
        flat.contiguous(), delta_flat, x_out, norm.weight.float().contiguous(),
        norm.bias.float().contiguous(), y, n, d, norm.eps,
        HAS_DELTA=delta is not None, ROWS=rows, BLOCK_D=block_d)
    return x_out.view(x.shape), y.view(x.shape)


@functools.lru_cache(maxsize=None)
def _gemm_gelu_is_tanh(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._addmm_activation's fused GELU is the tanh approximation here (cuBLASLt's
    epilogue is; CPU and fallback kernels may use the exact GELU, which HyenaDNA does not)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen).to(device, dtype) for s in ((64, 32), (48, 32), (48,)))
    fused = torch._addmm_activation(b, x, w.t(), use_gelu=True).float()
    plain = F.linear(x.float(), w.float(), b.float())
    tanh, exact = F.gelu(plain, approximate="tanh"), F.gelu(plain)
    return bool((fused - tanh).abs().max() < (fused - exact).abs().max() / 4)


def linear(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
           gelu: bool = False) -> torch.Tensor:
    """x2d @ weight.T + bias in `dtype` (then tanh GELU), fused into the GEMM where that is exact."""
    w = weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    if gelu and b is not None and _gemm_gelu_is_tanh(x2d.device, dtype):
        return torch._addmm_activation(b, x2d.to(dtype), w.t(), use_gelu=True)
    y = F.linear(x2d.to(dtype), w, b)
    return F.gelu(y, approximate="tanh") if gelu else y


def mixer(op, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """HyenaOperator.forward for a normalised (B, L, d) input in `dtype`: (B*L, d) in `dtype`."""
    from .backbone import next_power_of_two
    from .precision import fft_dtype

    batch, length, d = h.shape
    # W @ h^T is (3d, B*L): channel-major straight out of the GEMM, no bias (the kernel adds it)
    z = torch.mm(op.in_proj.weight.to(dtype), h.reshape(-1, d).t()).view(3 * d, batch, length)
    n_fft = next_power_of_two(2 * length)
    x0, v = short_conv_gates(z, op.short_filter.weight, op.short_filter.bias, op.in_proj.bias, n_fft)
    del z
    real = fft_dtype(h.device.type)  # float32, or float64 in a float32 run (exact mode)
    with torch.autocast(h.device.type, enabled=False):  # the long convolution stays float32
        spectrum = op.filter_fn._spectrum(n_fft, length, real)  # skip term folded in, cached
        freq = torch.fft.rfft(v.to(real))
        del v
        freq.mul_(spectrum[:, None, :])
        y = torch.fft.irfft(freq, n=n_fft)
        del freq
    gated = torch.empty((d, batch, length), dtype=dtype, device=h.device)
    torch.mul(y[..., :length], x0, out=gated)  # one pass: slice, gate, cast
    del y, x0
    return linear(gated.view(d, -1).t(), op.out_proj.weight, op.out_proj.bias, dtype)


def forward(model, input_ids: torch.Tensor, target: int) -> torch.Tensor:
    """Hidden state `target` (0 = embeddings .. n_layer + 1 = final norm), float32, (B, L, d)."""
    bb = model.backbone
    dtype = compute_dtype(input_ids.device)
    x = bb.embeddings(input_ids).float()
    if target == 0:
        return x
    batch, length, d = x.shape
    layers = bb.layers
    _, h = add_layernorm(x, None, layers[0].norm1, dtype)
    for i, block in enumerate(layers[:min(target, len(layers))]):
        mixed = mixer(block.mixer, h, dtype)
        x, h = add_layernorm(x, mixed.view(batch, length, d), block.norm2, dtype)
        hidden = linear(h.reshape(-1, d), block.mlp.fc1.weight, block.mlp.fc1.bias, dtype, gelu=True)
        out = linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias, dtype).view(batch, length, d)
        del hidden
        last = i + 1 == target
        final = i + 1 == len(layers) and target == len(layers) + 1
        if last:
            return x + out.float()
        if final:
            _, y = add_layernorm(x, out, bb.ln_f, torch.float32)
            return y
        x, h = add_layernorm(x, out, layers[i + 1].norm1, dtype)
    raise AssertionError("unreachable: target within 1..n_layer + 1")
