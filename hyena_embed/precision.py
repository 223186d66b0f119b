"""One home for `--precision`: what each value means on each device, resolved once.

- "auto": fp16 autocast on CUDA, float32 on CPU;
- "float16" / "bfloat16": autocast of the dense layers to that dtype (the filter, FFT
  convolution and residual stream stay float32 in the backbone either way);
- "float32": float32 everywhere, and on CUDA that is the exact mode: TF32 matrix units are off
  while the model runs (the caller's setting is restored after) and the long FFT convolution
  runs in float64 (`backbone.fft_dtype`), so CUDA results meet the CPU's tolerances.
Training in float16 needs a grad scaler (its gradients underflow otherwise); bfloat16 does not.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "float32", "float16", "bfloat16")
_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    name: str  # float32 | float16 | bfloat16: "auto" already resolved for the device
    device_type: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype of the dense layers under autocast; None for plain float32."""
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        return self.autocast_dtype is not None

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "float16"

    def context(self):
        """The context a forward runs in: autocast, or exact float32 (TF32 off on CUDA)."""
        if self.reduced:
            return torch.autocast(self.device_type, dtype=self.autocast_dtype)
        return exact_float32() if self.device_type == "cuda" else nullcontext()


def resolve(precision: str, device: torch.device) -> Precision:
    """`--precision` for a device; a ValueError lists the allowed values."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        precision = "float16" if device.type == "cuda" else "float32"
    return Precision(precision, device.type)


@contextmanager
def exact_float32():
    """TF32 off for CUDA matrix products and convolutions inside, the previous setting after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fft_dtype(device_type: str) -> torch.dtype:
    """The real dtype of the long FFT convolution: float32, except in a float32 run (no
    autocast) on CUDA, where it is float64. cuFFT's float32 rounding is not the CPU's, and
    a float32 run on a GPU is the exact mode, asked to give the CPU's numbers (the reference
    fixtures at the CPU tolerance); under fp16/bf16 autocast the FFT stays float32."""
    if device_type == "cuda" and not torch.is_autocast_enabled("cuda"):
        return torch.float64
    return torch.float32
