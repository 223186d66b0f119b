"""Which device a run uses, and moving tensors onto it.

`--device auto` (the default everywhere) is the GPU of this rank when CUDA is available, else
the CPU. HYENA_EMBED_DEVICE, when set, is what "auto" means instead: e.g. `cpu` on a GPU
workstation to keep a run off the GPU (the test suite pins its CPU tests so).
"""
from __future__ import annotations

import os

import torch

DEVICE_ENV = "HYENA_EMBED_DEVICE"


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto" and os.environ.get(DEVICE_ENV, "auto") != "auto":
        device = os.environ[DEVICE_ENV]
        if device == "cuda" and local_rank:
            device = f"cuda:{local_rank}"
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here: "
                         "use 'auto' or 'cpu'")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device without blocking the host: through pinned memory on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
