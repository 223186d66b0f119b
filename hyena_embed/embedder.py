"""A frozen backbone on a device: token rows in, hidden states and pooled vectors out."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from . import precision as precisions
from .backbone import HyenaDNA
from .devices import resolve_device, to_device
from .pooling import pool
from .tokenizer import pad_batch_to_grid


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


class Embedder:
    """A frozen model on a device, turning token rows into hidden states and pooled vectors."""

    def __init__(self, model: HyenaDNA, device: str | torch.device = "auto",
                 precision: str = "auto", layer: int | None = None, compile: bool = False,
                 say: Callable[[str], None] = print):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.precision = precisions.resolve(precision, self.device)
        self.autocast_dtype = self.precision.autocast_dtype
        self.layer = model.resolve_layer(layer)
        self.compiled = compile and self.try_compile(say)

    def try_compile(self, say: Callable[[str], None]) -> bool:
        """torch.compile the dense and elementwise parts (the FFT stays eager, in float32) and
        run one small batch through them, checked against the eager model. Where compiling
        fails (no C compiler, an unsupported backend, ...) or gives other numbers (seen with
        an inductor cache written under another CPU capability: NaN), undo it, say why, and
        go on uncompiled."""
        from .backbone import compile_dense_parts, undo_compile

        rng = np.random.default_rng(0)
        probe = [rng.integers(7, 11, n) for n in (64, 40)]
        eager, _ = self.hidden(probe)
        compile_dense_parts(self.model)
        try:
            compiled, _ = self.hidden(probe)
            problem = compiled_mismatch(eager, compiled, self.autocast_dtype is not None)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            problem = f"torch.compile does not work here ({type(exc).__name__}: {first_line})"
        if problem:
            undo_compile(self.model)
            say(f"--compile: {problem}; running without it")
            return False
        return True

    @torch.inference_mode()
    def hidden(self, token_rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded batch through the model: (hidden (B, W, d) float32, lengths (B,)).

        W is `padded_width` of the longest row; positions past a row's length are padding.
        """
        input_ids, lengths = pad_batch_to_grid(token_rows, self.model.config.l_max)
        with self.precision.context():
            out = self.model(to_device(input_ids, self.device), layer=self.layer)
        return out.float(), to_device(lengths, self.device)

    @torch.inference_mode()
    def pooled(self, token_rows: Sequence[np.ndarray], methods: Sequence[str]) -> dict[str, np.ndarray]:
        hidden, lengths = self.hidden(token_rows)
        return {m: pool(hidden, lengths, m).cpu().numpy() for m in methods}
