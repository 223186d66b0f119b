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


class Embedder:
    """A frozen model on a device, turning token rows into hidden states and pooled vectors."""

    def __init__(self, model: HyenaDNA, device: str | torch.device = "auto",
                 precision: str = "auto", layer: int | None = None, compile: bool = False,
                 say: Callable[[str], None] = print):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.precision = precisions.resolve(precision, self.device)
        self.layer = model.resolve_layer(layer)
        self.compiled = compile and self.try_compile(say)

    def try_compile(self, say: Callable[[str], None]) -> bool:
        from .compiling import try_compile

        return try_compile(self, say)

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
