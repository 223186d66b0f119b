"""Loader strictness: every released key layout maps, anything else is an error."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyena_embed.checkpoints import CheckpointError, build_from_directory, normalise_keys
from hyena_embed.loading import ModelLoadError, load_model


def copy_hf(fixtures_dir, tmp_path):
    target = tmp_path / "hf"
    shutil.copytree(fixtures_dir / "tiny-1k" / "hf", target)
    return target


def test_key_normalisation_handles_prefixes_and_checkpoint_infix():
    raw = {"model.backbone.layers.0.mixer.layer.in_proj.weight": 1,
           "model.backbone.layers.0.mlp.layer.fc1.bias": 2,
           "hyena.backbone.ln_f.weight": 3, "lm_head.weight": 4}
    assert normalise_keys(raw) == {"backbone.layers.0.mixer.in_proj.weight": 1,
                                   "backbone.layers.0.mlp.fc1.bias": 2,
                                   "backbone.ln_f.weight": 3, "lm_head.weight": 4}


def test_shared_sin_frequency_stored_once_is_tied(fixtures_dir):
    state = load_file(fixtures_dir / "tiny-1k" / "hf" / "model.safetensors")
    assert not any(".implicit_filter.3.freq" in k for k in state)  # stored once in the file
    model, _ = build_from_directory(fixtures_dir / "tiny-1k" / "hf")
    filt = model.backbone.layers[0].mixer.filter_fn.implicit_filter
    assert filt[1] is filt[3] is filt[5]
    key = "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.1.freq"
    assert torch.equal(filt[1].freq.detach(), state[key])


def test_missing_key_is_an_error(fixtures_dir, tmp_path):
    target = copy_hf(fixtures_dir, tmp_path)
    state = load_file(target / "model.safetensors")
    del state["hyena.backbone.layers.1.mlp.fc2.bias"]
    save_file(state, target / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing 1 keys: backbone.layers.1.mlp.fc2.bias"):
        build_from_directory(target)


def test_unexpected_key_is_an_error(fixtures_dir, tmp_path):
    target = copy_hf(fixtures_dir, tmp_path)
    state = load_file(target / "model.safetensors")
    state["hyena.backbone.layers.2.norm1.weight"] = torch.ones(128)
    save_file(state, target / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected 1 keys"):
        build_from_directory(target)


def test_wrong_config_is_a_shape_error(fixtures_dir, tmp_path):
    target = copy_hf(fixtures_dir, tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["d_inner"] = 256
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong config.json"):
        build_from_directory(target)


def test_disagreeing_sin_copies_are_refused(fixtures_dir, tmp_path):
    ckpt = torch.load(fixtures_dir / "tiny-1k-d256-ckpt" / "lightning" / "weights.ckpt",
                      weights_only=True)
    key = "model.backbone.layers.0.mixer.layer.filter_fn.implicit_filter.3.freq"
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1
    target = tmp_path / "pl"
    target.mkdir()
    shutil.copy(fixtures_dir / "tiny-1k-d256-ckpt" / "lightning" / "config.json", target)
    torch.save(ckpt, target / "weights.ckpt")
    with pytest.raises(CheckpointError, match="shared"):
        build_from_directory(target)


def test_pickled_objects_need_explicit_trust(fixtures_dir, tmp_path):
    ckpt = torch.load(fixtures_dir / "tiny-1k" / "lightning" / "weights.ckpt", weights_only=True)
    ckpt["hyper_parameters"] = {"opaque": shutil.Error("not a tensor")}
    target = tmp_path / "pl"
    target.mkdir()
    shutil.copy(fixtures_dir / "tiny-1k" / "lightning" / "config.json", target)
    torch.save(ckpt, target / "weights.ckpt")
    with pytest.raises(ModelLoadError, match="--trust-checkpoint"):
        load_model(str(target / "weights.ckpt"))
    loaded = load_model(str(target / "weights.ckpt"), trust_checkpoint=True)
    assert loaded.config.d_model == 128


def test_model_spec_resolution(fixtures_dir):
    by_dir = load_model(str(fixtures_dir / "tiny-1k" / "hf"))
    by_ckpt = load_model(str(fixtures_dir / "tiny-1k" / "lightning" / "weights.ckpt"))
    assert by_dir.facts["format"] == "hf" and by_ckpt.facts["format"] == "lightning"
    assert len(by_dir.weights_sha256) == 64 and by_dir.weights_sha256 != by_ckpt.weights_sha256
    assert not by_dir.random_init


def test_hub_unreachable_says_what_to_do():
    with pytest.raises(ModelLoadError, match="--model /path/to/that/folder"):
        load_model("small-32k")
    with pytest.raises(ModelLoadError, match="neither a registry name"):
        load_model("no-such-model")


def test_random_weights_only_when_asked_and_labelled():
    loaded = load_model("small-32k", random_init=True, seed=3)
    assert loaded.random_init and loaded.weights_sha256 == "random-init:seed=3"
    assert loaded.config.l_max == 32770 and loaded.config.n_layer == 4
    again = load_model("small-32k", random_init=True, seed=3)
    assert torch.equal(loaded.model.backbone.ln_f.weight, again.model.backbone.ln_f.weight)
    with pytest.raises(ModelLoadError, match="registry name"):
        load_model("some/hub-id", random_init=True)


def test_shift_is_configurable_and_changes_outputs(fixtures_dir):
    base = load_model(str(fixtures_dir / "tiny-1k" / "hf"))
    zero = load_model(str(fixtures_dir / "tiny-1k" / "hf"), shift=0.0)
    assert base.config.modulation_shift == 0.05 and zero.config.modulation_shift == 0.0
    ids = torch.randint(7, 11, (1, 50))
    with torch.no_grad():
        assert not torch.allclose(base.model(ids), zero.model(ids), atol=1e-3)
