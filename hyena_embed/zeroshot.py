"""Zero-shot variant scores from the language model itself, no training (`score-variants`).

For each wild-type/mutant pair, on each strand asked for:
- `site_llr`: log p(alt base) - log p(ref base) at the variant, given the bases to its left
  (the model is causal, so this is the next-token distribution at the position before the
  site; the normaliser cancels). SNVs only: NaN for indels, and where the site has no left
  context (the first token).
- `window_llr`: sum over the window of log p(alt window) - log p(ref window), each token
  scored given the tokens before it. Positions before the variant see identical contexts, so
  they cancel: the sum is the variant's own term plus its effect on everything downstream.
- `cosine_mean`, `l2_mean`: cosine distance (1 - cos) and Euclidean distance between the
  mean-pooled final hidden states of the two alleles; `cosine_site`, `l2_site` the same for
  the hidden state at the site.
`strands="both"` (the default, as GPN scores) averages each score over the windows as given and
their reverse complements (the site moves to the mirrored position).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .batching import default_batch_tokens, token_budget_batches
from .embedder import Embedder
from .loading import LoadedModel
from .tokenizer import SPECIAL_POLICIES, VOCAB, Tokenizer
from .variants import VariantPair

SCORES = ("site_llr", "window_llr", "cosine_mean", "l2_mean", "cosine_site", "l2_site")
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def _views(pair: VariantPair, strand: str):
    """(ref seq, alt seq, ref site, alt site, ref base, alt base) on one strand; bases are
    None for an indel (no site LLR)."""
    snv = len(pair.ref_allele) == 1 and len(pair.alt_allele) == 1 and "-" not in (pair.ref_allele + pair.alt_allele)
    ref_base, alt_base = (pair.ref_allele, pair.alt_allele) if snv else (None, None)
    if strand == "+":
        return pair.ref_seq, pair.alt_seq, pair.ref_site, pair.alt_site, ref_base, alt_base
    ref, alt = reverse_complement(pair.ref_seq), reverse_complement(pair.alt_seq)
    if snv:
        return (ref, alt, len(ref) - 1 - pair.ref_site, len(alt) - 1 - pair.alt_site,
                reverse_complement(ref_base), reverse_complement(alt_base))
    return ref, alt, None, None, None, None


def score_pairs(loaded: LoadedModel, pairs: Sequence[VariantPair], strands: str = "both",
                device: str = "auto", precision: str = "auto", special_tokens: str = "sep",
                batch_tokens: int | None = None,
                on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Every score for every pair, averaged over the strands asked for: {score: (P,) array}."""
    if strands not in ("both", "+"):
        raise ValueError("strands must be 'both' or '+'")
    tokenizer = Tokenizer(loaded.config.l_max, special_tokens, "error")
    prefix = len(SPECIAL_POLICIES[special_tokens][0])
    embedder = Embedder(loaded.model, device, precision)
    budget = batch_tokens or default_batch_tokens(embedder.device, loaded.config.d_model)
    per_strand = []
    for strand in ("+", "-") if strands == "both" else ("+",):
        views = [_views(p, strand) for p in pairs]
        rows = [tokenizer(v[k], record=f"{p.id}/{'ref' if k == 0 else 'alt'}")
                for p, v in zip(pairs, views) for k in (0, 1)]
        sites = [v[k] for v in views for k in (2, 3)]
        stats = _row_statistics(embedder, rows, sites, prefix, budget, on_batch)
        out = {name: np.full(len(pairs), np.nan) for name in SCORES}
        for i, v in enumerate(views):
            ref, alt = stats[2 * i], stats[2 * i + 1]
            out["window_llr"][i] = alt["loglik"] - ref["loglik"]
            if v[4] is not None and ref["site_logp"] is not None:
                # the same left context in both windows: either allele's distribution will do
                logp = ref["site_logp"]
                out["site_llr"][i] = logp[VOCAB[v[5]]] - logp[VOCAB[v[4]]]
            out["cosine_mean"][i], out["l2_mean"][i] = _distances(ref["mean"], alt["mean"])
            if ref["site"] is not None and alt["site"] is not None:
                out["cosine_site"][i], out["l2_site"][i] = _distances(ref["site"], alt["site"])
        per_strand.append(out)
    return {name: np.mean([s[name] for s in per_strand], axis=0) for name in SCORES}


def _distances(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return 1.0 - cos, float(np.linalg.norm(a - b))


@torch.inference_mode()
def _row_statistics(embedder: Embedder, rows, sites, prefix: int, budget: int, on_batch):
    """Per token row: log-likelihood of its bases (each given the tokens before it), the
    next-token log-probabilities at the position before the site, the mean hidden state and
    the hidden state at the site."""
    model = embedder.model
    stats: list[dict | None] = [None] * len(rows)
    for batch in token_budget_batches([len(r) for r in rows], budget):
        hidden, lengths = embedder.hidden([rows[i] for i in batch])
        logp = torch.log_softmax(model.logits(hidden).float(), dim=-1)
        for j, i in enumerate(batch):
            n = int(lengths[j])
            ids = torch.as_tensor(rows[i], device=logp.device)
            # token t is predicted at position t - 1; score every token after the first
            token_logp = logp[j, : n - 1].gather(1, ids[1:n, None])[:, 0]
            site = sites[i]
            t = None if site is None else prefix + site
            stats[i] = {
                "loglik": float(token_logp.sum()),
                "site_logp": None if t is None or t == 0 else logp[j, t - 1].cpu().numpy(),
                "mean": hidden[j, :n].mean(0).cpu().numpy().astype(np.float64),
                "site": None if t is None else hidden[j, t].cpu().numpy().astype(np.float64)}
        if on_batch is not None:
            on_batch(len(batch))
    return stats
