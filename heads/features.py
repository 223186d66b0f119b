"""The feature grammar of fit-head and finetune, in one place.

`--features` takes feature sets: names joined with '+' are concatenated into one set;
fit-head compares several sets (repeat --features, or separate sets with ','), finetune
trains on one. Names:
- on a cache of single sequences: a pooled array (mean, last, ...) or kmer;
- on variant pairs: `<op>-<pool>`, op one of delta (alt - ref), ref, alt, concat ([ref, alt]),
  pool a pooled array, site (the state at the variant) or sitewin (the mean around it), e.g.
  delta-mean, concat-site; `variant` (the alleles' one-hot plus an indel flag); `kmer`
  (k-mer counts of alt - ref and of ref) or `kmer-delta` (alt - ref alone).
  A name written pool-first (site-delta, as older versions did) is read as the same feature
  and written op-first.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from cache.errors import UserError
from hyena_embed.plan import SITE_POOLS

PAIR_OPS = ("delta", "ref", "alt", "concat")
PAIR_EXTRAS = ("variant", "kmer", "kmer-delta")  # pair features that are not <op>-<pool>


class FeatureError(UserError, ValueError):
    """A feature name or set that the grammar does not allow; the message shows the grammar."""


def parse_sets(texts: Iterable[str]) -> list[list[str]]:
    """['mean+last,kmer', 'mean'] -> [['mean', 'last'], ['kmer'], ['mean']]."""
    return [text.split("+") for item in texts for text in item.split(",") if text]


def split_pair_feature(name: str, pools: Sequence[str] | None = None) -> tuple[str, str]:
    """'delta-mean' or 'mean-delta' -> ('delta', 'mean'); a DataError names the grammar.
    `pools`: the pooled arrays on offer (site and sitewin are always allowed), None for any."""
    parts = name.split("-")
    ops = [p for p in parts if p in PAIR_OPS]
    pool = "-".join(p for p in parts if p not in PAIR_OPS)
    allowed = None if pools is None else (*pools, *SITE_POOLS)
    if len(ops) != 1 or not pool or (allowed is not None and pool not in allowed):
        offered = f" and pool in {', '.join(allowed)}" if allowed is not None else ""
        raise FeatureError(f"pair feature {name!r}: use <op>-<pool> with op in {', '.join(PAIR_OPS)}"
                        f"{offered} (e.g. delta-mean, delta-site), or {' or '.join(PAIR_EXTRAS)}; "
                        "join several with '+'")
    return ops[0], pool


def canonical_pair_set(names: str | Sequence[str], pools: Sequence[str] | None = None,
                       extras: Sequence[str] = PAIR_EXTRAS) -> list[str]:
    """One set of pair features, each checked and written op-first ('site-delta+variant' ->
    ['delta-site', 'variant']). At least one embedding part."""
    names = names.split("+") if isinstance(names, str) else list(names)
    out = [name if name in extras else "-".join(split_pair_feature(name, pools)) for name in names]
    if not out or all(name in extras for name in out):
        raise FeatureError("pair features need at least one embedding part, e.g. delta-mean")
    return out


def one_set(texts: Iterable[str]) -> list[str] | None:
    """finetune trains on one set: the --features values as one list, None when none given."""
    sets = parse_sets(texts)
    if len(sets) > 1:
        raise FeatureError("finetune trains on one feature set: join names with '+' "
                        "(fit-head compares several sets)")
    return sets[0] if sets else None
