"""HyenaDNA's tokenizer as a Hugging Face `transformers` tokenizer, for users' own pipelines.

It gives the same ids as `hyena_embed.tokenizer.Tokenizer` (the released vocabulary;
lowercase read as uppercase, IUPAC ambiguity codes as N, the special-token policy "sep" or
"cls-sep", truncation keeping the end), with everything transformers adds around a tokenizer:
batches, right padding with [PAD] and an attention mask, `save_pretrained` /
`from_pretrained`. One difference: a character outside the alphabet becomes [UNK] here (as
transformers tokenizers do), where the toolkit's tokenizer refuses the sequence.

    >>> from hyena_embed.hf_tokenizer import HyenaDNATokenizer
    >>> tok = HyenaDNATokenizer(model_max_length=1026)
    >>> tok(["ACGT", "acgtn"], padding=True)["input_ids"]
    [[7, 8, 9, 10, 1, 4], [7, 8, 9, 10, 11, 1]]

Padding is on the right, always: the model is causal and has no attention mask, so padding
after a sequence never reaches it, while padding before it would change every embedding.
"""
from __future__ import annotations

import json
import os

from transformers import PreTrainedTokenizer

from .tokenizer import CLS, IUPAC_AMBIGUOUS, SEP, SPECIAL_POLICIES, VOCAB

_IDS_TO_TOKENS = {i: t for t, i in VOCAB.items()}


class HyenaDNATokenizer(PreTrainedTokenizer):
    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names = {"vocab_file": "vocab.json"}

    def __init__(self, model_max_length: int = 32770, special_tokens: str = "sep", **kwargs):
        if special_tokens not in ("sep", "cls-sep"):
            raise ValueError("special_tokens must be 'sep' or 'cls-sep'")
        self.special_tokens = special_tokens
        kwargs.pop("vocab_file", None)  # the vocabulary is the released one, never read
        kwargs.setdefault("padding_side", "right")
        kwargs.setdefault("truncation_side", "left")  # keep the end, as the toolkit's keep-end
        if kwargs["padding_side"] != "right":
            raise ValueError("HyenaDNA is causal: padding goes on the right only")
        for name, token in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("bos_token", "[BOS]"),
                            ("mask_token", "[MASK]"), ("pad_token", "[PAD]"), ("unk_token", "[UNK]")):
            kwargs.setdefault(name, token)  # a saved config names them again
        super().__init__(model_max_length=model_max_length, special_tokens=special_tokens, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def get_vocab(self) -> dict[str, int]:
        return dict(VOCAB)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return ["N" if c in IUPAC_AMBIGUOUS else c for c in text.upper()]

    def _convert_token_to_id(self, token: str) -> int:
        return VOCAB.get(token, VOCAB["[UNK]"])

    def _convert_id_to_token(self, index: int) -> str:
        return _IDS_TO_TOKENS.get(index, "[UNK]")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(t for t in tokens if t in "ACGTN")

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        prefix, suffix = SPECIAL_POLICIES[self.special_tokens]
        ids = list(prefix) + list(token_ids_0) + list(suffix)
        if token_ids_1 is not None:  # a second sequence joins as the toolkit joins reads
            ids = ids + list(token_ids_1) + [SEP]
        return ids

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return [int(i in (CLS, SEP)) for i in token_ids_0]
        ids = self.build_inputs_with_special_tokens([7] * len(token_ids_0),
                                                    None if token_ids_1 is None else [7] * len(token_ids_1))
        return [int(i != 7) for i in ids]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w") as fh:
            json.dump(VOCAB, fh)
        return (path,)
