"""The fine-tuning model: backbone -> pooling over real tokens -> [extra inputs] -> MLP head.

Pooled features are standardised with fixed statistics (those of the frozen backbone on the
training rows, or those of a head fitted by fit-head), so a linear probe can start the run and
the head sees the same scale it would see on cached features. Regression targets are
standardised the same way and mapped back by `to_values`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hyena_embed.backbone import HyenaDNA
from hyena_embed.config import HyenaConfig
from hyena_embed.pooling import pool, real_token_mask, site_features
from .features import split_pair_feature
from .freezing import first_trainable_block
from .torch_mlp import build_mlp

FINETUNE_POOLINGS = ("mean", "last", "first", "max", "attention")
VARIANT_BASES = ["<other>", "A", "C", "G", "T"]  # vocabulary of the learned variant embedding
CATEGORY_DIM = 8  # width of the learned embedding of each categorical extra input


class AttentionPooling(nn.Module):
    """A softmax-weighted mean over real tokens, weights from one learned scoring vector.

    The scorer starts at zero, so training starts from plain mean pooling.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Linear(d_model, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()
        scores = self.score(hidden).squeeze(-1).float()
        scores = scores.masked_fill(~real_token_mask(lengths, hidden.shape[1]), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bl,bld->bd", weights, hidden)


class PredictionHead(nn.Module):
    """Everything trained at the head's learning rate: attention pooling, extra-input
    embeddings and the MLP."""

    def __init__(self, d_model: int, arch: str, n_out: int, dropout: float, attention: bool,
                 d_features: int, n_numeric: int, category_sizes: list[int]):
        super().__init__()
        self.attention = AttentionPooling(d_model) if attention else None
        self.categories = nn.ModuleList(nn.Embedding(size, CATEGORY_DIM) for size in category_sizes)
        d_in = d_features + n_numeric + CATEGORY_DIM * len(category_sizes)
        self.mlp = build_mlp(arch, d_in, n_out, dropout)


class SequencePredictor(nn.Module):
    def __init__(self, encoder: HyenaDNA, arch: str = "mlp3", n_out: int = 1,
                 pooling: str = "mean", dropout: float = 0.1, n_numeric: int = 0,
                 category_sizes: list[int] | None = None):
        super().__init__()
        if pooling not in FINETUNE_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(FINETUNE_POOLINGS)}")
        d = encoder.config.d_model
        self.encoder = encoder
        self.pooling = pooling
        self.gradient_checkpointing = False
        self.spec = {"backbone": encoder.config.to_dict(), "arch": arch, "n_out": n_out,
                     "pooling": pooling, "dropout": dropout, "n_numeric": n_numeric,
                     "category_sizes": list(category_sizes or [])}
        d_features = self.feature_width(d)
        self.head = PredictionHead(d, arch, n_out, dropout, self.uses_attention, d_features,
                                   n_numeric, category_sizes or [])
        # fixed standardisation of the head's inputs and of regression targets
        self.register_buffer("feature_mean", torch.zeros(d_features))
        self.register_buffer("feature_std", torch.ones(d_features))
        self.register_buffer("numeric_mean", torch.zeros(n_numeric))
        self.register_buffer("numeric_std", torch.ones(n_numeric))
        self.register_buffer("target_mean", torch.zeros(n_out))
        self.register_buffer("target_std", torch.ones(n_out))

    def feature_width(self, d_model: int) -> int:
        return d_model

    @property
    def uses_attention(self) -> bool:
        return self.pooling == "attention"

    @classmethod
    def from_spec(cls, spec: dict) -> "SequencePredictor":
        encoder = HyenaDNA(HyenaConfig.from_dict(spec["backbone"]))
        if "pair" in spec:
            return PairPredictor(encoder, spec["arch"], spec["n_out"], spec["pair"]["features"],
                                 spec["pair"]["site_window"], spec["pair"]["variant_embedding"],
                                 spec["dropout"], spec["n_numeric"], spec["category_sizes"])
        return cls(encoder, spec["arch"], spec["n_out"], spec["pooling"], spec["dropout"],
                   spec["n_numeric"], spec["category_sizes"])

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout): their features are fixed."""
        super().train(mode)
        if mode:
            bb = self.encoder.backbone
            start = first_trainable_block(self.encoder)
            if not bb.embeddings.word_embeddings.weight.requires_grad:
                bb.dropout.eval()
            for block in bb.layers[:start]:
                block.eval()
        return self

    def hidden(self, input_ids: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states; the frozen prefix of the network runs without autograd, or is
        skipped when `prefix` holds its output (finetune --cache: the states the first
        trainable block reads)."""
        grad = torch.is_grad_enabled()
        bb = self.encoder.backbone
        start = first_trainable_block(self.encoder)
        if prefix is not None:
            x = prefix.float()
        else:
            with torch.set_grad_enabled(grad and bb.embeddings.word_embeddings.weight.requires_grad):
                x = bb.dropout(bb.embeddings(input_ids)).float()
        for i, block in enumerate(bb.layers):
            if prefix is not None and i < start:
                continue
            trainable = grad and i >= start
            with torch.set_grad_enabled(trainable):
                if trainable and self.gradient_checkpointing:
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        with torch.set_grad_enabled(grad and (x.requires_grad or bb.ln_f.weight.requires_grad)):
            return bb.ln_f(x).float()

    def pooled(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.pooling == "attention":
            return self.head.attention(hidden, lengths)
        return pool(hidden, lengths, self.pooling)

    def raw_features(self, input_ids=None, lengths=None, prefix=None, **_) -> torch.Tensor:
        """The head's input before standardisation: the pooled final hidden state."""
        return self.pooled(self.hidden(input_ids, prefix), lengths)

    def forward(self, input_ids=None, lengths=None, numeric=None, categories=None, prefix=None,
                **pair_inputs) -> torch.Tensor:
        """Outputs in standardised units (regression) or logits (classification); token ids,
        or `prefix` states after the frozen blocks (finetune --cache)."""
        features = self.raw_features(input_ids, lengths, prefix=prefix, **pair_inputs)
        parts = [(features - self.feature_mean) / self.feature_std]
        if numeric is not None and numeric.shape[1]:
            parts.append((numeric.float() - self.numeric_mean) / self.numeric_std)
        for k, embedding in enumerate(self.head.categories):
            parts.append(embedding(categories[:, k]))
        return self.head.mlp(torch.cat(parts, dim=1))

    def to_values(self, outputs: torch.Tensor) -> torch.Tensor:
        """Regression outputs in the targets' own units."""
        return outputs * self.target_std + self.target_mean


class PairPredictor(SequencePredictor):
    """Variant pairs: one forward over [B ref windows; B alt windows], pair features from the
    two halves (fit-head's names: delta-mean, concat-mean, delta-site, delta-sitewin, variant,
    ...), then the head. A learned variant embedding (reference and alternative base) is two
    categorical inputs placed before any user ones."""

    def __init__(self, encoder: HyenaDNA, arch: str = "mlp3", n_out: int = 1,
                 features: list[str] | tuple[str, ...] = ("delta-mean",), site_window: int = 5,
                 variant_embedding: bool = False, dropout: float = 0.1, n_numeric: int = 0,
                 category_sizes: list[int] | None = None):
        self.features = list(features)
        self.pools = sorted({split_pair_feature(f)[1] for f in self.features if f != "variant"})
        self.site_window = site_window
        own = [len(VARIANT_BASES)] * 2 if variant_embedding else []
        pooling = next((p for p in self.pools if p in FINETUNE_POOLINGS), "mean")
        super().__init__(encoder, arch, n_out, pooling, dropout, n_numeric,
                         own + list(category_sizes or []))
        self.spec["category_sizes"] = list(category_sizes or [])  # the user's; ours follow "pair"
        self.spec["pair"] = {"features": self.features, "site_window": site_window,
                             "variant_embedding": variant_embedding}

    def feature_width(self, d_model: int) -> int:
        widths = {"delta": d_model, "ref": d_model, "alt": d_model, "concat": 2 * d_model}
        return sum(9 if f == "variant" else widths[split_pair_feature(f)[0]] for f in self.features)

    @property
    def uses_attention(self) -> bool:
        return "attention" in self.pools

    def raw_features(self, input_ids=None, lengths=None, sites=None, variant=None, prefix=None,
                     **_) -> torch.Tensor:
        hidden = self.hidden(input_ids, prefix)
        n = hidden.shape[0] // 2
        states = {}
        for name in self.pools:
            if name in ("site", "sitewin") and "site" not in states:
                states["site"], states["sitewin"] = site_features(hidden, lengths, sites,
                                                                  self.site_window)
            elif name == "attention":
                states[name] = self.head.attention(hidden, lengths)
            elif name not in states:
                states[name] = pool(hidden, lengths, name)
        parts = []
        for name in self.features:
            if name == "variant":
                parts.append(variant.float())
                continue
            op, which = split_pair_feature(name)
            ref, alt = states[which][:n], states[which][n:]
            parts.append({"delta": lambda: alt - ref, "ref": lambda: ref, "alt": lambda: alt,
                          "concat": lambda: torch.cat([ref, alt], dim=1)}[op]())
        return torch.cat(parts, dim=1)
