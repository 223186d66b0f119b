"""Token-budget batches, the budget itself, and results on their way back to the host."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .tokenizer import padded_width


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


CPU_BATCH_TOKENS = 16_384
# Peak device bytes per token and channel of one inference forward on the fast path: the
# float32 gates (3 x 4 B in, 3 x 4 B after the short conv), the rfft of a row padded to a
# power of two at least twice its length (up to 2 x 8 B complex per token) times the filter
# spectrum, the irfft (up to 4 x 4 B) and the float32 residual stream: about 90 B, rounded up.
BYTES_PER_TOKEN_CHANNEL = 96
GPU_MEMORY_FRACTION = 0.5  # of the free memory; the rest is headroom for the allocator
GPU_BATCH_TOKENS = (65_536, 8_388_608)  # bounds of the memory-sized budget
# Tokens x channels per batch where the frozen forward's rate stops growing: on an H200,
# small-32k (d=256) at 1 kb ran 12.7 M tok/s at 2^18 tokens, 13.3 M at 2^20 and 14.0 M at 2^22
# (peak 2.6, 10.2 and 57 GiB; benchmarks/cuda_forward.py). 2^28 / d = 2^20 tokens there:
# the plateau, leaving the rest of the GPU to its other users.
GPU_TOKEN_CHANNELS = 2 ** 28


def budget_from_free_memory(free_bytes: int, d_model: int) -> int:
    """Tokens per batch that fit in half the free device memory, within GPU_BATCH_TOKENS."""
    tokens = GPU_MEMORY_FRACTION * free_bytes / (BYTES_PER_TOKEN_CHANNEL * d_model)
    return int(min(max(tokens, GPU_BATCH_TOKENS[0]), GPU_BATCH_TOKENS[1]))


def default_batch_tokens(device: torch.device, d_model: int) -> int:
    """16k tokens on CPU; on CUDA where the rate plateaus (GPU_TOKEN_CHANNELS / d_model), less
    when the device's free memory is short (several GPUs or another job on this one)."""
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _total = torch.cuda.mem_get_info(device)
    return min(GPU_TOKEN_CHANNELS // d_model, budget_from_free_memory(free, d_model))


class HostCopies:
    """Results on their way from the device to host arrays, without a wait per batch.

    On CUDA each result is copied into pinned host memory with a non-blocking copy, and an
    event marks when it has landed; the host reads it (`deliver`) only after the next batch
    has been queued, so the copy overlaps that batch's compute. On CPU results are delivered
    at once, unless `deferred` (tests run the deferred order on CPU to show it changes
    nothing).
    """

    def __init__(self, device: torch.device, deferred: bool | None = None):
        self.cuda = device.type == "cuda"
        self.deferred = self.cuda if deferred is None else deferred
        self.pending: list[tuple[object, torch.Tensor, Callable[[np.ndarray], None]]] = []

    def put(self, tensor: torch.Tensor, deliver: Callable[[np.ndarray], None]):
        if not self.deferred:
            deliver(tensor.cpu().numpy())
            return
        if self.cuda:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = tensor.clone(), None
        self.pending.append((event, host, deliver))

    def mark(self) -> int:
        """How many results are pending now (`flush(mark)` delivers those and no later ones)."""
        return len(self.pending)

    def flush(self, upto: int | None = None):
        upto = len(self.pending) if upto is None else upto
        for event, host, deliver in self.pending[:upto]:
            if event is not None:
                event.synchronize()
            deliver(host.numpy())
        del self.pending[:upto]
