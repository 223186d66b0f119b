"""Rank and world size under torchrun; one process otherwise (every call is then a no-op).

`embed` splits chunks over ranks; `finetune` splits every batch's rows over ranks and
averages gradients with DistributedDataParallel. Rank 0 holds the output folder's lock and is
the only one that writes.
"""
from __future__ import annotations

import os

import numpy as np
import torch


class Distributed:
    def __init__(self, device_type: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            if device_type == "cuda":  # collectives of Python objects go through this device
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.active:
            torch.distributed.barrier()

    def close(self):
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def my_part(self, n: int) -> np.ndarray:
        """This rank's contiguous share of n items (the first ranks get one more)."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def gather_rows(self, mine: np.ndarray) -> np.ndarray:
        """Every rank's `my_part` rows, concatenated in rank order (on every rank)."""
        if not self.active:
            return mine
        parts = [None] * self.world
        torch.distributed.all_gather_object(parts, mine)
        return np.concatenate(parts, axis=0)

    def sum(self, value: float, device: torch.device) -> float:
        """A scalar summed over ranks (the same on every rank)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def launched_rank() -> int:
    """This process's rank under torchrun (0 when not launched by it), before any setup."""
    return int(os.environ.get("RANK", "0"))
