"""HyenaDNA in plain PyTorch: everything the forward pass needs, in one module.

Module and parameter names follow the released checkpoints (`backbone.layers.{i}.mixer...`), so
the loaders only strip prefixes. The maths is that of the Hugging Face port
(`HyenaDNAForCausalLM`); the fast path (default) changes only how it is computed, which leaves
results unchanged up to float rounding:

* a frozen model computes each layer's implicit filter and its FFT once per FFT size and reuses
  it (the filter depends on positions only, never on the input);
* FFT sizes are padded to powers of two, which are fast everywhere and the only sizes cuFFT
  accepts in half precision;
* the operator works channel-major, (channels, batch, length): the input projection is one GEMM
  with the weight on the left, so the depthwise conv and the FFT get contiguous rows without a
  transposing copy, and the projection's bias is folded into the conv;
* dense layers go through `cpu.linear`, which uses oneDNN (GELU fused) for CPU inference
  (see `hyena_embed/cpu.py` for why, and for the malloc setting the CLI applies).

`set_fast_path(False)` restores the port's operations one for one: the benchmark's baseline.

Under fp16/bf16 autocast the positional features, the implicit-filter MLP, the FFT convolution
and the residual stream stay float32; only the dense projections run in low precision. A
float32 run on CUDA does the FFT convolution in float64 (`precision.fft_dtype`).
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from . import cpu, cuda_path
from .config import HyenaConfig
from .precision import fft_dtype


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())



class Sin(nn.Module):
    """The implicit filter's periodic activation; one instance is shared by all its layers."""

    def __init__(self, dim: int, w: float, trainable: bool = True):
        super().__init__()
        freq = w * torch.ones(1, dim)
        self.freq = nn.Parameter(freq) if trainable else freq

    def forward(self, x):
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """Positional features z = [t, cos(f w), -sin(f w)] for every position up to l_max."""

    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        if emb_dim % 2 == 0 or emb_dim < 3:
            raise ValueError("emb_dim must be odd and at least 3")
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        self.register_buffer("z", torch.cat([t, z.real, z.imag], dim=-1))
        self.register_buffer("t", t)

    def forward(self, length: int):
        return self.z[:, :length], self.t[:, :length]


class ExponentialModulation(nn.Module):
    """Multiplies the filter by a per-channel decaying window (plus `shift`)."""

    def __init__(self, d_model: int, shift: float, modulate: bool = True,
                 fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2):
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None])

    def forward(self, t, x):
        if not self.modulate:
            return x
        return x * (torch.exp(-t * self.deltas.abs()) + self.shift)


class HyenaFilter(nn.Module):
    """The long implicit filter h(t) = MLP(z(t)) * window(t), and the FFT convolution with it."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.l_max = config.l_max
        self.bias = nn.Parameter(torch.randn(config.d_model))  # the skip term D in y = h*u + D u
        self.pos_emb = PositionalEmbedding(config.emb_dim, config.l_max)
        act = Sin(config.filter_order, config.activation_freq)
        layers = [nn.Linear(config.emb_dim, config.filter_order), act]
        for _ in range(config.num_inner_mlps):
            layers += [nn.Linear(config.filter_order, config.filter_order), act]
        layers.append(nn.Linear(config.filter_order, config.d_model, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(
            config.d_model, shift=config.modulation_shift, modulate=config.modulate
        )
        self.fast = True  # cache the filter spectrum and use power-of-two FFT sizes
        self._spectra: dict[int, torch.Tensor] = {}  # n_fft -> rfft of the filter
        self._spectra64: dict[int, torch.Tensor] = {}  # the same in float64 (fft_dtype)
        self._spectra_state = None

    def filter(self, length: int) -> torch.Tensor:
        """The filter for positions [0, length): shape (d_model, length), float32."""
        z, t = self.pos_emb(length)
        with torch.autocast(z.device.type, enabled=False):
            h = self.implicit_filter(z.float())
            h = self.modulation(t.float(), h)
        return h[0].transpose(0, 1)

    def _trainable(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _spectrum(self, n_fft: int, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """rfft of the filter (with the skip term folded into tap 0) in `dtype`, reused while frozen."""
        if self._trainable():
            return self._compute_spectrum(n_fft, length, dtype)
        # Any input up to n_fft // 2 long shares one spectrum: the filter is cut at
        # n_fft // 2 taps, and with at most that many inputs the circular convolution
        # of size n_fft never wraps around into the outputs we keep.
        taps = min(n_fft // 2, self.l_max)
        # In-place updates (an optimiser step, load_state_dict) bump tensor versions.
        state = (self.bias.device, tuple(t._version for t in self._filter_tensors()))
        if state != self._spectra_state:
            self.clear_cache()
            self._spectra_state = state
        cache = self._spectra64 if dtype == torch.float64 else self._spectra
        spec = cache.get(n_fft)
        if spec is None:
            spec = cache[n_fft] = self._compute_spectrum(n_fft, taps, dtype)
        return spec

    def _filter_tensors(self):
        return [*self.parameters(), *self.buffers()]

    def _compute_spectrum(self, n_fft: int, taps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        k = self.filter(taps)
        # D u is a convolution with D at tap 0: fold it into the filter.
        k = torch.cat([k[:, :1] + self.bias.float()[:, None], k[:, 1:]], dim=1)
        return torch.fft.rfft(k.to(dtype), n=n_fft)

    def clear_cache(self):
        self._spectra.clear()
        self._spectra64.clear()

    def forward(self, u: torch.Tensor, channel_dim: int = -2) -> torch.Tensor:
        """Causal long convolution of u along its last dim, in float32 whatever the autocast state.

        The channels lie on `channel_dim`: (B, d, L) in the port's layout, (d, B, L) channel-major.
        """
        length = u.shape[-1]
        real = fft_dtype(u.device.type)  # read before autocast is switched off below
        with torch.autocast(u.device.type, enabled=False):
            u = u.float()
            if not self.fast:
                return self._naive_fftconv(u, channel_dim)
            n_fft = next_power_of_two(2 * length)
            spec = _per_channel(self._spectrum(n_fft, length, real), u.dim(), channel_dim)
            y = torch.fft.irfft(torch.fft.rfft(u.to(real), n=n_fft) * spec, n=n_fft)
            return y[..., :length].float()

    def _naive_fftconv(self, u: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The reference port's path: filter recomputed each call, FFT size 2L."""
        length = u.shape[-1]
        n_fft = 2 * length
        k = self.filter(length)
        k_f = _per_channel(torch.fft.rfft(k, n=n_fft) / n_fft, u.dim(), channel_dim)
        u_f = torch.fft.rfft(u, n=n_fft)
        y = torch.fft.irfft(u_f * k_f, n=n_fft, norm="forward")[..., :length]
        return y + u * _per_channel(self.bias.float()[:, None], u.dim(), channel_dim)


def _per_channel(t: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """View a (channels, K) tensor so it broadcasts over an ndim tensor with channels on channel_dim."""
    shape = [1] * ndim
    shape[channel_dim] = t.shape[0]
    shape[-1] = t.shape[-1]
    return t.view(shape)


def causal_depthwise_conv(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          input_bias: torch.Tensor) -> torch.Tensor:
    """Conv1d(groups=C, padding=K-1)[..., :L] of (z + input_bias) for channel-major z (C, B, L).

    Written as K shifted multiply-adds in float32 (about twice as fast as the padded conv on
    CPU for K = 3). The input projection's bias is folded in rather than added in a pass of
    its own: every tap sees it, except the taps that fall before the start of the sequence,
    which the port's zero padding leaves out; those are taken back at the first K-1 positions.
    """
    z = z.float()
    k = weight.shape[-1]
    w = weight.float().view(-1, k)
    b_in = input_bias.float()
    y = torch.addcmul((bias.float() + b_in * w.sum(1))[:, None, None], z, w[:, k - 1, None, None])
    length = z.shape[-1]
    for lag in range(1, min(k, length)):
        y[..., lag:].addcmul_(z[..., :-lag], w[:, k - 1 - lag, None, None])
    for t in range(min(k - 1, length)):
        y[..., t] -= (b_in * w[:, :k - 1 - t].sum(1))[:, None]
    return y


class HyenaOperator(nn.Module):
    """Order-2 Hyena: project to (x0, x1, v), short causal conv, v = h * (v x1), y = v x0."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        d = config.d_model
        self.d_model = d
        width = d * (config.hyena_order + 1)
        self.in_proj = nn.Linear(d, width)
        self.out_proj = nn.Linear(d, d)
        self.short_filter = nn.Conv1d(width, width, config.short_filter_order,
                                      padding=config.short_filter_order - 1, groups=width)
        self.filter_fn = HyenaFilter(config)
        self.dropout = nn.Dropout(config.hyena_dropout)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L, d)."""
        if not self.filter_fn.fast:
            return self._forward_reference(u)
        x0, v = self.gates(u)
        v = self.filter_fn(v, channel_dim=0)  # the FFT convolution: float32, never compiled
        return self.output(v, x0, u.shape)

    def gates(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense and elementwise work before the long convolution: (x0, v * x1), channel-major.
        `compiling.compile_dense_parts` may replace it (per instance) with a compiled version."""
        batch, length, d = u.shape
        # W @ u^T is (3d, B*L): channel-major straight out of the GEMM.
        z = cpu.linear(self.in_proj.weight, u.reshape(-1, d)).view(3 * d, batch, length)
        # float32 from here on: the gates and the long convolution are precision-sensitive
        z = causal_depthwise_conv(z, self.short_filter.weight, self.short_filter.bias,
                                  self.in_proj.bias)
        x0, x1, v = z.split(d, dim=0)
        return x0, self.dropout(v * x1)

    def output(self, v: torch.Tensor, x0: torch.Tensor, shape) -> torch.Tensor:
        """The gate by x0 and the output projection, back to (B, L, d)."""
        batch, length, d = shape
        y = (v * x0).view(d, -1).t()  # (B*L, d), a transposed view the GEMM reads as it is
        return cpu.linear(y, self.out_proj.weight, self.out_proj.bias).view(batch, length, d)

    def _forward_reference(self, u: torch.Tensor) -> torch.Tensor:
        """The reference port's operator, op for op (the benchmark's baseline)."""
        length = u.shape[1]
        u = self.in_proj(u).transpose(1, 2)
        u = self.short_filter(u)[..., :length]  # keep the causal part of the padded conv
        x0, x1, v = u.split(self.d_model, dim=1)
        v = self.dropout(v.float() * x1.float())
        v = self.filter_fn(v)
        y = (v * x0.float()).transpose(1, 2)
        return self.out_proj(y)


class Mlp(nn.Module):
    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_inner)
        self.fc2 = nn.Linear(config.d_inner, config.d_model)
        self.fast = True  # GELU fused into fc1 (oneDNN on CPU); off = the port's ops

    def forward(self, x):
        if not self.fast:
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
        hidden = cpu.linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return cpu.linear(hidden, self.fc2.weight, self.fc2.bias)


class Block(nn.Module):
    """Pre-norm residual block; the residual stream stays float32 under autocast."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.mixer = HyenaOperator(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.mlp = Mlp(config)
        self.dropout1 = nn.Dropout(config.resid_dropout)
        self.dropout2 = nn.Dropout(config.resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.mixer(self.norm1(x))).float()
        return x + self.dropout2(self.mlp(self.norm2(x))).float()


class Embeddings(nn.Module):
    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.d_model)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class Backbone(nn.Module):
    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.dropout = nn.Dropout(config.embed_dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)


class HyenaDNA(nn.Module):
    """The HyenaDNA backbone with an (optionally tied) language-model head.

    Hidden states are indexed as in the reference port: 0 is the token embedding, 1..n_layer
    each block's output (the residual stream), n_layer + 1 the final normalised output.
    """

    def __init__(self, config: HyenaConfig, tie_lm_head: bool = True):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if tie_lm_head:
            self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
        self.apply(self._init_weights)
        self.kernels = True  # frozen CUDA inference through cuda_path's fused kernels

    @property
    def n_hidden_states(self) -> int:
        return self.config.n_layer + 2

    @staticmethod
    def _init_weights(module):
        # GPT-style initialisation, as in the released training code; only used for the
        # randomly initialised models that smoke tests ask for explicitly.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def resolve_layer(self, layer: int | None) -> int:
        """Map a user's layer index (None or negative counts from the end) to 0..n_layer+1."""
        n = self.n_hidden_states
        if layer is None:
            return n - 1
        index = layer + n if layer < 0 else layer
        if not 0 <= index < n:
            raise ValueError(f"layer {layer} out of range: this model has hidden states "
                             f"0..{n - 1} (0 = embeddings, {n - 1} = final output) or -1..-{n}")
        return index

    def forward(self, input_ids: torch.Tensor, layer: int | None = None,
                output_hidden_states: bool = False):
        """Hidden state `layer` (default: final output), shape (B, L, d_model), float32.

        With `output_hidden_states`, the list of all hidden states instead. Inputs must be
        right-padded: the model is causal, so padding after a sequence leaves it unchanged.
        """
        length = input_ids.shape[1]
        if length > self.config.l_max:
            raise ValueError(f"input of {length} tokens exceeds this model's l_max "
                             f"{self.config.l_max}; truncate it first")
        target = self.n_hidden_states - 1 if output_hidden_states else self.resolve_layer(layer)
        if not output_hidden_states and cuda_path.applies(self, input_ids):
            return cuda_path.forward(self, input_ids, target)
        bb = self.backbone
        x = bb.dropout(bb.embeddings(input_ids)).float()
        states = [x]
        for block in bb.layers[:target]:
            x = block(x)
            states.append(x)
        if target == self.n_hidden_states - 1:
            states.append(bb.ln_f(x).float())
        return states if output_hidden_states else states[target]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def set_fast_path(self, enabled: bool):
        """Toggle the fast path described in the module docstring (off = the reference port's ops)."""
        self.kernels = enabled
        for block in self.backbone.layers:
            block.mixer.filter_fn.fast = enabled
            block.mixer.filter_fn.clear_cache()
            block.mlp.fast = enabled
        return self

    def set_kernels(self, enabled: bool):
        """Toggle `cuda_path`'s fused kernels for frozen CUDA inference (the benchmark compares)."""
        self.kernels = enabled
        return self

    def filters(self):
        return [block.mixer.filter_fn for block in self.backbone.layers]
