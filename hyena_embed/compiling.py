"""`--compile`: torch.compile the dense and elementwise parts of every block, checked against
the eager model before it is trusted. On CUDA the fused kernels (`cuda_path`) run a frozen
forward instead, and --compile says so and stands aside: compiling measured 2-3.4x slower
than eager there on 16-20 M-token runs (its warm-up per batch shape dominates), and the
kernels run at twice the eager rate.

The norms, the MLP and the operator's gates and output projection are compiled per instance
(their `forward`, or the operator's `gates` / `output`, replaced by a compiled version as an
instance attribute); the FFT convolution and its filter stay eager, in float32. Undoing it
removes those attributes again, so the class's own methods serve.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import cuda_path
from .backbone import HyenaDNA, HyenaOperator


def compile_dense_parts(model: HyenaDNA) -> None:
    """Compile in place; compilation happens at the first forward of each shape."""
    for block in model.backbone.layers:
        for module in (block.norm1, block.norm2, block.mlp):
            module.forward = torch.compile(type(module).forward.__get__(module), dynamic=None)
        mixer = block.mixer
        mixer.gates = torch.compile(HyenaOperator.gates.__get__(mixer), dynamic=None)
        mixer.output = torch.compile(HyenaOperator.output.__get__(mixer), dynamic=None)


def undo_compile(model: HyenaDNA) -> None:
    for block in model.backbone.layers:
        for module in (block.norm1, block.norm2, block.mlp):
            module.__dict__.pop("forward", None)
        for name in ("gates", "output"):
            block.mixer.__dict__.pop(name, None)


def compiled_mismatch(eager: torch.Tensor, compiled: torch.Tensor, reduced: bool) -> str | None:
    """Why a compiled model's output cannot stand in for the eager one's, or None. Rounding
    differs (fused kernels), so the bound is on the scale of the output: 1e-3 of its largest
    value in float32, 2e-2 under fp16/bf16 autocast."""
    if not torch.isfinite(compiled).all():
        return "the compiled model gives NaN or inf where the eager one does not"
    scale = float(eager.abs().max())
    worst = float((compiled - eager).abs().max())
    bound = (2e-2 if reduced else 1e-3) * scale + 1e-6
    if worst > bound:
        return f"the compiled model differs from the eager one by {worst:.2g} (allowed {bound:.2g})"
    return None


def try_compile(embedder, say: Callable[[str], None]) -> bool:
    """Compile the embedder's model and run one small batch, checked against the eager model.
    Where compiling fails (no C compiler, an unsupported backend, ...) or gives other numbers
    (seen with an inductor cache written under another CPU capability: NaN), undo it, say why,
    and go on uncompiled."""
    if embedder.device.type == "cuda" and cuda_path.available() and embedder.model.kernels:
        # measured on an H200: compiling made embed 2-3.4x slower than eager (warm-up included),
        # and the fused kernels are twice the eager rate; compiling would only add the wait
        say("--compile: the fused CUDA kernels already run this forward; running without "
            "torch.compile")
        return False
    rng = np.random.default_rng(0)
    probe = [rng.integers(7, 11, n) for n in (64, 40)]
    eager, _ = embedder.hidden(probe)
    compile_dense_parts(embedder.model)
    try:
        compiled, _ = embedder.hidden(probe)
        problem = compiled_mismatch(eager, compiled, embedder.precision.reduced)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        problem = f"torch.compile does not work here ({type(exc).__name__}: {first_line})"
    if problem:
        undo_compile(embedder.model)
        say(f"--compile: {problem}; running without it")
        return False
    return True
