import numpy as np
import pytest

from hyena_embed.tokenizer import PAD, SEP, CLS, InvalidSequenceError, Tokenizer, pad_batch


def test_vocabulary_and_case():
    tok = Tokenizer(max_length=100)
    assert list(tok("ACGTN")) == [7, 8, 9, 10, 11, SEP]
    assert list(tok("acgtn")) == [7, 8, 9, 10, 11, SEP]  # uppercased, never [UNK]


def test_iupac_codes_become_n():
    tok = Tokenizer(max_length=100, special_tokens="none")
    assert list(tok("RYSWKMBDHVryswkmbdhv")) == [11] * 20


@pytest.mark.parametrize("seq,pos,char", [("ACGU", 4, "U"), ("AC-GT", 3, "-"), ("ACG T", 4, " "),
                                          ("ACGTé", 5, "é")])
def test_invalid_character_names_record_and_position(seq, pos, char):
    with pytest.raises(InvalidSequenceError, match=rf"record 'r1': invalid character {char!r} at position {pos}"):
        Tokenizer(max_length=100)(seq, record="r1")


def test_empty_sequence_is_an_error():
    with pytest.raises(InvalidSequenceError, match="empty"):
        Tokenizer(max_length=10)("", record="x")


def test_special_token_policies():
    assert list(Tokenizer(10, "cls-sep")("AC")) == [CLS, 7, 8, SEP]
    assert list(Tokenizer(10, "none")("AC")) == [7, 8]
    with pytest.raises(ValueError, match="special_tokens"):
        Tokenizer(10, "bos")


def test_join_with_sep():
    ids = Tokenizer(100)(["AC", "GT", "N"])
    assert list(ids) == [7, 8, SEP, 9, 10, SEP, 11, SEP]


def test_truncation_keeps_the_end_by_default_and_counts():
    tok = Tokenizer(max_length=5)  # 4 nucleotides + [SEP]
    ids, cut = tok.encode("AACCGGT")
    assert len(ids) == 5 and cut == 3 and list(ids) == [8, 9, 9, 10, SEP]
    ids, cut = Tokenizer(5, truncation="keep-start").encode("AACCGGT")
    assert list(ids) == [7, 7, 8, 8, SEP] and cut == 3
    with pytest.raises(InvalidSequenceError, match="exceed"):
        Tokenizer(5, truncation="error").encode("AACCGGT", record="long")


def test_right_padding():
    batch, lengths = pad_batch([np.array([7, 8, 1]), np.array([9, 1])])
    assert batch.tolist() == [[7, 8, 1], [9, 1, PAD]]
    assert lengths.tolist() == [3, 2]
