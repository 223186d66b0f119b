"""Running a frozen backbone over tokenised sequences: batching, precision, pooling."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

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


CPU_BATCH_TOKENS = 16_384
# Peak device bytes per token and channel of one inference forward on the fast path: the
# float32 gates (3 x 4 B in, 3 x 4 B after the short conv), the rfft of a row padded to a
# power of two at least twice its length (up to 2 x 8 B complex per token) times the filter
# spectrum, the irfft (up to 4 x 4 B) and the float32 residual stream: about 90 B, rounded up.
BYTES_PER_TOKEN_CHANNEL = 96
GPU_MEMORY_FRACTION = 0.5  # of the free memory; the rest is headroom for the allocator
GPU_BATCH_TOKENS = (65_536, 8_388_608)  # bounds of the memory-sized budget


def budget_from_free_memory(free_bytes: int, d_model: int) -> int:
    """Tokens per batch that fit in half the free device memory, within GPU_BATCH_TOKENS."""
    tokens = GPU_MEMORY_FRACTION * free_bytes / (BYTES_PER_TOKEN_CHANNEL * d_model)
    return int(min(max(tokens, GPU_BATCH_TOKENS[0]), GPU_BATCH_TOKENS[1]))


def default_batch_tokens(device: torch.device, d_model: int) -> int:
    """16k tokens on CPU; on CUDA sized from the device's free memory (several GPUs or another
    job on this one leave less, and the budget follows)."""
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _total = torch.cuda.mem_get_info(device)
    return budget_from_free_memory(free, d_model)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device without blocking the host: through pinned memory on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


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
                 precision: str = "auto", layer: int | None = None, compile: bool = False,
                 say: Callable[[str], None] = print):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.autocast_dtype = resolve_precision(precision, self.device)
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
            out = self.model(to_device(input_ids, self.device), layer=self.layer)
        return out.float(), to_device(lengths, self.device)

    @torch.inference_mode()
    def pooled(self, token_rows: Sequence[np.ndarray], methods: Sequence[str]) -> dict[str, np.ndarray]:
        hidden, lengths = self.hidden(token_rows)
        return {m: pool(hidden, lengths, m).cpu().numpy() for m in methods}
