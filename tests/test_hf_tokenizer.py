"""The transformers tokenizer gives the toolkit tokenizer's ids, pads on the right, keeps the
end when truncating, and survives save_pretrained / from_pretrained."""
import numpy as np
import pytest

from hyena_embed.tokenizer import PAD, Tokenizer

from helpers import random_dna

pytest.importorskip("transformers")
from hyena_embed.hf_tokenizer import HyenaDNATokenizer  # noqa: E402


@pytest.mark.parametrize("policy", ["sep", "cls-sep"])
def test_the_same_ids_as_the_toolkit_tokenizer(policy):
    rng = np.random.default_rng(0)
    ours, theirs = Tokenizer(1026, policy), HyenaDNATokenizer(model_max_length=1026, special_tokens=policy)
    for n in (1, 7, 300):
        seq = random_dna(rng, n)
        mixed = "".join(c.lower() if i % 3 else c for i, c in enumerate(seq)) + "NRY"
        assert theirs(mixed)["input_ids"] == ours(mixed).tolist()


def test_batches_pad_on_the_right_with_a_mask_and_truncation_keeps_the_end(tmp_path):
    tok = HyenaDNATokenizer(model_max_length=10)
    batch = tok(["ACG", "ACGTAC"], padding=True)
    assert batch["input_ids"][0] == [7, 8, 9, 1, PAD, PAD, PAD]
    assert batch["attention_mask"][0] == [1, 1, 1, 1, 0, 0, 0]
    long = "A" * 20 + "CGT"
    ids = tok(long, truncation=True)["input_ids"]
    assert ids == Tokenizer(10)(long).tolist() and ids[-4:] == [8, 9, 10, 1]
    tok.save_pretrained(tmp_path)
    again = HyenaDNATokenizer.from_pretrained(tmp_path)
    assert again("ACGT")["input_ids"] == tok("ACGT")["input_ids"] and again.model_max_length == 10
    with pytest.raises(ValueError, match="right only"):
        HyenaDNATokenizer(padding_side="left")
