"""Our backbone and loaders against the reference port's outputs (../shared fixtures)."""
import pytest
import torch
from safetensors.torch import load_file

from hyena_embed.checkpoints import build_from_directory

from helpers import assert_close_to_reference

CASES = [(name, fmt) for name in ("tiny-1k", "tiny-1k-d256-ckpt") for fmt in ("hf", "lightning")]


def sequences(expected):
    i = 0
    while f"seq{i}.input_ids" in expected:
        yield i, expected[f"seq{i}.input_ids"]
        i += 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("name,fmt", CASES)
def test_every_hidden_state_matches_reference(fixtures_dir, name, fmt, fast):
    expected = load_file(fixtures_dir / name / "expected.safetensors")
    model, facts = build_from_directory(fixtures_dir / name / fmt)
    model.set_fast_path(fast)
    assert facts["format"] == fmt
    n_checked = 0
    for i, ids in sequences(expected):
        with torch.no_grad():
            states = model(ids[None], output_hidden_states=True)
        assert len(states) == model.config.n_layer + 2
        for j, state in enumerate(states):
            ref = expected[f"seq{i}.hidden_states.{j}"]
            assert_close_to_reference(state[0], ref)
            n_checked += 1
        assert_close_to_reference(states[-1][0], expected[f"seq{i}.last_hidden_state"])
        if fmt == "hf":  # the hf file carries its own, untied lm_head
            logits = model.logits(states[-1])[0]
            assert_close_to_reference(logits, expected[f"seq{i}.lm_logits"])
    assert n_checked >= 3 * 4


@pytest.mark.parametrize("name", ["tiny-1k", "tiny-1k-d256-ckpt"])
def test_both_formats_give_the_same_backbone(fixtures_dir, name):
    hf, hf_facts = build_from_directory(fixtures_dir / name / "hf")
    pl, pl_facts = build_from_directory(fixtures_dir / name / "lightning")
    assert not hf_facts["lm_head_tied"] and pl_facts["lm_head_tied"]
    hf_state, pl_state = hf.state_dict(), pl.state_dict()
    for key in hf_state:
        if key != "lm_head.weight":
            assert torch.equal(hf_state[key], pl_state[key]), key
    # tied: the Lightning model's head *is* its embedding table
    assert pl.lm_head.weight is pl.backbone.embeddings.word_embeddings.weight


def test_layer_selection_returns_that_hidden_state(fixtures_dir):
    expected = load_file(fixtures_dir / "tiny-1k" / "expected.safetensors")
    model, _ = build_from_directory(fixtures_dir / "tiny-1k" / "hf")
    ids = expected["seq3.input_ids"][None]
    with torch.no_grad():
        for j in range(model.config.n_layer + 2):
            assert_close_to_reference(model(ids, layer=j)[0], expected[f"seq3.hidden_states.{j}"])
        assert_close_to_reference(model(ids, layer=-2)[0], expected["seq3.hidden_states.2"])
    with pytest.raises(ValueError, match="out of range"):
        model(ids, layer=4)
