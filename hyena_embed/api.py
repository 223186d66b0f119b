"""The notebook API: embeddings of a few sequences as NumPy arrays, no cache involved.

For many sequences, or anything worth keeping, use `cli.py embed` (resumable Zarr cache).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .batching import token_budget_batches
from .embedder import Embedder
from .loading import LoadedModel, load_model
from .pooling import POOLINGS, pool as pool_hidden
from .tokenizer import Tokenizer


def embed(sequences: str | Sequence[str] | Sequence[Sequence[str]],
          model: str | LoadedModel = "tiny-1k", pool: str | Sequence[str] = "mean", *,
          per_position: bool = False, layer: int | None = None, device: str = "auto",
          precision: str = "auto", special_tokens: str = "sep", on_long: str = "keep-end",
          batch_tokens: int = 16_384, random_init: bool = False, init_seed: int = 0):
    """Embed sequences with a frozen HyenaDNA backbone.

    `sequences` is one string or a list; an item that is itself a list of reads is joined
    with [SEP] into one row (as `embed --packs` joins a sample's reads). `model` is anything
    `--model` takes (registry name, hub id, local folder, weights.ckpt) or an already loaded
    model (`hyena_embed.load_model(...)`), which saves reloading it on every call.
    `random_init=True` gives random weights of the named architecture, for trying the API
    without downloads; it says so with a warning and is never a fallback.

    Returns an array (n, d_model) for one `pool`, or a dict {method: array} for several;
    with `per_position=True`, a pair (pooled, positions) where positions[i] is row i's
    (n_tokens_i, d_model) hidden states, special tokens included ([SEP] last by default).

    >>> from hyena_embed import embed
    >>> X = embed(["ACGT" * 50, "GATTACA"], model="tiny-1k", random_init=True)
    >>> X.shape
    (2, 128)
    >>> pooled, positions = embed("ACGTN", model="tiny-1k", random_init=True, per_position=True)
    >>> positions[0].shape  # 5 bases + [SEP]
    (6, 128)
    """
    loaded = model if isinstance(model, LoadedModel) else \
        load_model(model, random_init=random_init, seed=init_seed)
    if loaded.random_init:
        import warnings

        warnings.warn(f"{loaded.name} has RANDOM weights ({loaded.weights_sha256}): the "
                      "embeddings say nothing about the pretrained model", stacklevel=2)
    methods = [pool] if isinstance(pool, str) else list(pool)
    unknown = [m for m in methods if m not in POOLINGS]
    if unknown:
        raise ValueError(f"pool takes {', '.join(POOLINGS)} (got {', '.join(unknown)})")
    rows = [sequences] if isinstance(sequences, str) else list(sequences)
    if not rows:
        raise ValueError("no sequences to embed")
    tokenizer = Tokenizer(loaded.config.l_max, special_tokens, on_long)
    tokens = [tokenizer(s, record=str(i)) for i, s in enumerate(rows)]
    embedder = Embedder(loaded.model, device, precision, layer)
    pooled = {m: np.zeros((len(rows), loaded.config.d_model), np.float32) for m in methods}
    positions: list[np.ndarray | None] = [None] * len(rows)
    for batch in token_budget_batches([len(t) for t in tokens], batch_tokens):
        hidden, lengths = embedder.hidden([tokens[i] for i in batch])
        for m in methods:
            pooled[m][batch] = pool_hidden(hidden, lengths, m).cpu().numpy()
        if per_position:
            states = hidden.cpu().numpy()
            for j, i in enumerate(batch):
                positions[i] = states[j, : len(tokens[i])]
    result = pooled[methods[0]] if isinstance(pool, str) else pooled
    return (result, positions) if per_position else result
