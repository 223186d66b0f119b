"""Running a frozen backbone over tokenised sequences: batching, precision, pooling."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch

from .backbone import HyenaDNA
from .pooling import pool
from .tokenizer import pad_batch_to_grid, padded_width

COMPLEMENT_IDS = {7: 10, 8: 9, 9: 8, 10: 7}  # A<->T, C<->G; N and specials map to themselves
PRECISIONS = ("auto", "float32", "float16", "bfloat16")


def token_budget_batches(lengths: Sequence[int], batch_tokens: int,
                         max_batch: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length whose padded size stays within budget.

    Sorted by length (longest first, so a budget problem shows at once); a batch of B rows
    padded to `padded_width` of the longest costs B * width tokens. A sequence longer than
    the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, width = [], [], 0
    for i in order:
        new_width = max(width, padded_width(lengths[i]))
        full = max_batch is not None and len(current) >= max_batch
        if current and (new_width * (len(current) + 1) > batch_tokens or full):
            batches.append(current)
            current, new_width = [], padded_width(lengths[i])
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


def reverse_complement_ids(ids: np.ndarray, n_prefix: int, n_suffix: int) -> np.ndarray:
    """Reverse-complement the body of a token row, leaving the special tokens in place."""
    body = ids[n_prefix: len(ids) - n_suffix]
    lookup = np.arange(16)
    for a, b in COMPLEMENT_IDS.items():
        lookup[a] = b
    rc = lookup[body[::-1]]
    return np.concatenate([ids[:n_prefix], rc, ids[len(ids) - n_suffix:]])


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """'auto' is the GPU of this rank when CUDA is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here: "
                         "use 'auto' or 'cpu'")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the dense layers, or None for plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[precision]


class Embedder:
    """A frozen model on a device, turning token rows into hidden states and pooled vectors."""

    def __init__(self, model: HyenaDNA, device: str | torch.device = "auto",
                 precision: str = "auto", layer: int | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.layer = model.resolve_layer(layer)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def hidden(self, token_rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded batch through the model: (hidden (B, W, d) float32, lengths (B,)).

        W is `padded_width` of the longest row; positions past a row's length are padding.
        """
        input_ids, lengths = pad_batch_to_grid(token_rows, self.model.config.l_max)
        with self._autocast():
            out = self.model(input_ids.to(self.device, non_blocking=True), layer=self.layer)
        return out.float(), lengths.to(self.device)

    @torch.inference_mode()
    def pooled(self, token_rows: Sequence[np.ndarray], methods: Sequence[str]) -> dict[str, np.ndarray]:
        hidden, lengths = self.hidden(token_rows)
        return {m: pool(hidden, lengths, m).cpu().numpy() for m in methods}
