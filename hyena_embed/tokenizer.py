"""The HyenaDNA character tokenizer: the released vocabulary, no transformers needed.

Special-token policy (`special_tokens`):
- "sep" (default, as the `-hf` tokenizer does): sequence + [SEP];
- "cls-sep" (as the original training code did): [CLS] + sequence + [SEP];
- "none": the bare sequence.
Several sequences of one sample are joined with [SEP] between them, and the policy's tokens go
around the whole: "sep" gives  A [SEP] B [SEP].
Truncation keeps the end of the sequence by default: the model is causal, so the last positions
are the ones that have read the most.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from cache.errors import UserError

CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = 0, 1, 2, 3, 4, 5, 6
VOCAB = {"[CLS]": CLS, "[SEP]": SEP, "[BOS]": BOS, "[MASK]": MASK, "[PAD]": PAD,
         "[RESERVED]": RESERVED, "[UNK]": UNK, "A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
SPECIAL_POLICIES = {"sep": ([], [SEP]), "cls-sep": ([CLS], [SEP]), "none": ([], [])}

# byte -> token id, -1 where the character is not allowed
_LOOKUP = np.full(256, -1, dtype=np.int64)
for _base in "ACGTN":
    _LOOKUP[ord(_base)] = _LOOKUP[ord(_base.lower())] = VOCAB[_base]
for _code in IUPAC_AMBIGUOUS:
    _LOOKUP[ord(_code)] = _LOOKUP[ord(_code.lower())] = VOCAB["N"]


class InvalidSequenceError(UserError, ValueError):
    """A sequence holds a character that is neither a nucleotide nor an IUPAC code."""


@dataclass(frozen=True)
class Tokenizer:
    max_length: int  # l_max of the model, special tokens included
    special_tokens: str = "sep"
    truncation: str = "keep-end"  # keep-end | keep-start | error

    def __post_init__(self):
        if self.special_tokens not in SPECIAL_POLICIES:
            raise ValueError(f"special_tokens must be one of {sorted(SPECIAL_POLICIES)}")
        if self.truncation not in ("keep-end", "keep-start", "error"):
            raise ValueError("truncation must be 'keep-end', 'keep-start' or 'error'")
        prefix, suffix = SPECIAL_POLICIES[self.special_tokens]
        if self.max_length <= len(prefix) + len(suffix):
            raise ValueError("max_length leaves no room for the sequence")

    @property
    def n_special(self) -> int:
        prefix, suffix = SPECIAL_POLICIES[self.special_tokens]
        return len(prefix) + len(suffix)

    @property
    def max_body(self) -> int:
        """Room left for nucleotides (and inner [SEP]s) after the special tokens."""
        return self.max_length - self.n_special

    def describe(self) -> dict:
        return {"special_tokens": self.special_tokens, "truncation": self.truncation,
                "max_length": self.max_length, "uppercase": True, "iupac_to_n": True}

    @staticmethod
    def to_ids(sequence: str, record: str | None = None) -> np.ndarray:
        """Nucleotides to token ids: case-insensitive, IUPAC ambiguity codes become N."""
        raw = np.frombuffer(sequence.encode("latin-1", errors="replace"), dtype=np.uint8)
        ids = _LOOKUP[raw]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            pos = int(bad[0])
            where = f"record {record!r}" if record is not None else "sequence"
            raise InvalidSequenceError(
                f"{where}: invalid character {sequence[pos]!r} at position {pos + 1} "
                f"({bad.size} invalid in all); allowed: A C G T N and IUPAC codes "
                f"{IUPAC_AMBIGUOUS}, any case"
            )
        return ids

    def encode(self, sequence: str | Sequence[str], record: str | None = None) -> tuple[np.ndarray, int]:
        """Token ids with the special-token policy applied, and the number of tokens cut.

        A list of sequences is one sample: its parts are joined with [SEP].
        """
        parts = [sequence] if isinstance(sequence, str) else list(sequence)
        if not parts or not any(parts):
            raise InvalidSequenceError(f"record {record!r}: empty sequence")
        pieces = []
        for i, part in enumerate(parts):
            if i:
                pieces.append(np.array([SEP], dtype=np.int64))
            pieces.append(self.to_ids(part, record))
        body = np.concatenate(pieces)
        cut = max(0, len(body) - self.max_body)
        if cut:
            if self.truncation == "error":
                raise InvalidSequenceError(
                    f"record {record!r}: {len(body)} tokens exceed the model's limit of "
                    f"{self.max_body} (l_max {self.max_length} less special tokens)"
                )
            body = body[cut:] if self.truncation == "keep-end" else body[: self.max_body]
        prefix, suffix = SPECIAL_POLICIES[self.special_tokens]
        ids = np.concatenate([np.array(prefix, np.int64), body, np.array(suffix, np.int64)])
        return ids, cut

    def truncate_text(self, text: str) -> str:
        """The same cut as `encode` applied to text whose characters map 1:1 to body tokens
        (reads joined by a one-character separator standing for [SEP])."""
        if len(text) <= self.max_body:
            return text
        return text[-self.max_body:] if self.truncation == "keep-end" else text[: self.max_body]

    def __call__(self, sequence, record=None) -> np.ndarray:
        return self.encode(sequence, record)[0]

    def site_token(self, site: int, n_cut: int, record: str) -> int:
        """Token index of a variant at nucleotide `site`, after the special prefix and the
        `n_cut` tokens that truncation removed."""
        prefix = len(SPECIAL_POLICIES[self.special_tokens][0])
        site = site - (n_cut if self.truncation == "keep-end" else 0)
        if not 0 <= site < self.max_body:
            raise InvalidSequenceError(f"record {record!r}: the variant was cut off by truncation "
                                       "to l_max; use a shorter --window or a model with a longer "
                                       "context")
        return prefix + site


def pad_batch(token_lists: Iterable[np.ndarray], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with [PAD]; returns (input_ids (B, L), lengths (B,)).

    Right padding only: the model is causal and has no attention mask, so padding placed
    after a sequence never reaches its real positions, while left padding would change them all.
    """
    token_lists = list(token_lists)
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    width = max(int(lengths.max()), pad_to or 0)
    batch = np.full((len(token_lists), width), PAD, dtype=np.int64)
    # one scatter of all rows: row r's tokens go to columns 0 .. len_r - 1 of line r
    real = np.arange(width)[None, :] < lengths[:, None]
    batch[real] = np.concatenate(token_lists)
    return torch.from_numpy(batch), torch.from_numpy(lengths)


def padded_width(length: int, l_max: int | None = None) -> int:
    """The width a batch whose longest row has `length` tokens is padded to.

    Rounded up to one of 8 steps per power of two (less than 1/8 padding), capped at l_max.
    Few distinct batch shapes let malloc reuse its blocks and oneDNN its kernels: with a
    shape per length, a CPU run over lengths 100-4,000 kept growing to several GB.
    """
    step = 1 << max(0, length.bit_length() - 4)
    width = -(-length // step) * step
    return min(width, l_max) if l_max else width


def pad_batch_to_grid(token_rows: Sequence[np.ndarray], l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_batch`, right-padded to the `padded_width` of the longest row."""
    return pad_batch(token_rows, pad_to=padded_width(max(len(t) for t in token_rows), l_max))


COMPLEMENT_IDS = {7: 10, 8: 9, 9: 8, 10: 7}  # A<->T, C<->G; N and specials map to themselves
_COMPLEMENT_LOOKUP = np.arange(16)
for _a, _b in COMPLEMENT_IDS.items():
    _COMPLEMENT_LOOKUP[_a] = _b


def reverse_complement_ids(ids: np.ndarray, n_prefix: int, n_suffix: int) -> np.ndarray:
    """Reverse-complement the body of a token row, leaving the special tokens in place."""
    body = ids[n_prefix: len(ids) - n_suffix]
    return np.concatenate([ids[:n_prefix], _COMPLEMENT_LOOKUP[body[::-1]], ids[len(ids) - n_suffix:]])
