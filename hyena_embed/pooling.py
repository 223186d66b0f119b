"""Pooling hidden states over real tokens only (never over right padding)."""
from __future__ import annotations

import torch

from .precision import exact_float32

POOLINGS = ("mean", "max", "first", "last", "sum")


def real_token_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool: True on the first `lengths[b]` positions of each row."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def pool(hidden: torch.Tensor, lengths: torch.Tensor, method: str) -> torch.Tensor:
    """Pool (B, L, d) hidden states over each row's real tokens; returns (B, d) float32.

    Every token the tokenizer produced counts as real, special tokens included ([SEP] at the
    end is what `last` returns: under the causal model it is the one position that has read
    the whole sequence).
    """
    hidden = hidden.float()
    lengths = lengths.to(hidden.device)
    if method == "first":
        return hidden[:, 0]
    if method == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if hidden.is_cuda and method in ("mean", "sum"):
        # one read of the states (a (1, L) x (L, d) product per row) instead of a masked copy
        weights = real_token_mask(lengths, hidden.shape[1]).to(hidden.dtype)[:, None, :]
        with exact_float32():
            total = torch.bmm(weights, hidden)[:, 0]
        return total / lengths[:, None].to(hidden.dtype) if method == "mean" else total
    mask = real_token_mask(lengths, hidden.shape[1])[..., None]
    if method == "max":
        return hidden.masked_fill(~mask, float("-inf")).amax(dim=1)
    total = (hidden * mask).sum(dim=1)
    if method == "sum":
        return total
    if method == "mean":
        return total / lengths[:, None].to(hidden.dtype)
    raise ValueError(f"unknown pooling {method!r}; choose from {', '.join(POOLINGS)}")


def site_features(hidden: torch.Tensor, lengths: torch.Tensor, sites: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden state at each row's site, and the mean over sites-k .. site+k (real tokens)."""
    sites = sites.to(hidden.device)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    at = hidden[rows, sites].float()
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    mask = ((positions >= sites[:, None] - k) & (positions <= sites[:, None] + k)
            & (positions < lengths.to(hidden.device)[:, None]))
    around = (hidden.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return at, around
