"""What makes frozen inference fast on a CPU: oneDNN dense layers and a malloc that keeps memory.

Two things dominated the profile of a forward pass on this project's reference machine (2-core
AMD EPYC, torch 2.13 CPU wheel), ahead of any arithmetic we could remove:

* `F.linear` in float32 goes to MKL's sgemm, which runs at about half the speed of oneDNN's matmul
  on AMD CPUs; oneDNN also fuses the MLP's GELU into the matmul. `linear` below uses oneDNN
  through the op that torch's own compiler (inductor) emits, when that op exists and nothing
  needs gradients; otherwise it is plain `F.linear`.
* glibc serves every tensor over 32 MiB with a fresh mmap and unmaps it on free, so each new
  activation costs a page fault per 4 KiB: about 180,000 in one small-32k forward over 16k
  tokens, which halves its speed. `keep_freed_memory` makes malloc keep and reuse freed memory;
  the CLI applies it unless HYENA_EMBED_DEFAULT_MALLOC=1 is set.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch
import torch.nn.functional as F

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
RETAINED_BYTES = 1 << 30  # freed memory kept for reuse before malloc returns any to the OS


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed memory instead of unmapping it; True when applied.

    Process-wide and idempotent; a no-op (False) where the C library is not glibc, or when the
    environment sets HYENA_EMBED_DEFAULT_MALLOC=1. The cost: freed memory stays in the process
    (up to RETAINED_BYTES at the top of the heap) instead of going back to the OS.
    """
    if os.environ.get("HYENA_EMBED_DEFAULT_MALLOC") == "1":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # No mmap for large blocks (they come from the heap and are reused), and no trimming of the
    # heap top until a gigabyte is free.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, RETAINED_BYTES))


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether torch exposes oneDNN's fused linear op and it agrees with F.linear here."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((5, 8), (3, 8), (3,)))
        with torch.no_grad():
            got = op(x, w, b, "gelu", [], "tanh")
            want = F.gelu(F.linear(x, w, b), approximate="tanh")
    except RuntimeError:
        return False
    return bool(torch.allclose(got, want, atol=1e-5, rtol=1e-5))


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _onednn_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype oneDNN should compute in, or None when `linear` must use F.linear."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None  # under torch.compile, inductor picks its own kernels for F.linear
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype == torch.bfloat16 and not native_bf16():
        return None
    if dtype not in (torch.float32, torch.bfloat16) or not onednn_linear_available():
        return None
    return dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """x @ weight.T + bias, then the tanh GELU when asked; the same maths as F.linear (+ F.gelu).

    On CPU without autograd it runs in oneDNN, in the autocast dtype when autocast is on (as
    F.linear would), with the GELU fused into the matmul.
    """
    dtype = _onednn_dtype(x)
    if dtype is None:
        y = F.linear(x, weight, bias)
        return F.gelu(y, approximate="tanh") if gelu else y
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    bias = None if bias is None else bias.to(dtype)
    y = torch.ops.mkldnn._linear_pointwise(flat, weight.to(dtype), bias,
                                           "gelu" if gelu else "none", [], "tanh" if gelu else "")
    return y.view(*x.shape[:-1], weight.shape[0])
