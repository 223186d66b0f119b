"""Reading the two released checkpoint formats into our module's state dict.

- `-hf`: config.json + model.safetensors (or pytorch_model.bin); keys start with `hyena.`, a
  separate `lm_head.weight`, and the Sin frequency shared by `implicit_filter.1/3/5` stored once.
- original Lightning: config.json (nested `layer` section) + weights.ckpt; keys start with
  `model.`, sometimes with `.mixer.layer.` / `.mlp.layer.` (gradient checkpointing wrappers),
  `lm_head` tied to the word embeddings.
"""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch

from cache.errors import UserError
from .backbone import HyenaDNA
from .config import HyenaConfig

SHARED_FREQ = re.compile(r"^(backbone\.layers\.\d+\.mixer\.filter_fn\.implicit_filter)\.(\d+)\.freq$")
EMBEDDING_KEY = "backbone.embeddings.word_embeddings.weight"


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not match the architecture, or cannot be read."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map either release's key names onto ours (`backbone.…`, `lm_head.weight`)."""
    out = {}
    for key, value in state.items():
        for prefix in ("hyena.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        key = key.replace(".mixer.layer.", ".mixer.").replace(".mlp.layer.", ".mlp.")
        out[key] = value
    return out


def _tie_shared_freq(state: dict, expected_keys: set[str]) -> dict:
    """Give every Sin position (1/3/5) the one stored frequency; refuse disagreeing copies."""
    stored: dict[str, tuple[str, torch.Tensor]] = {}
    for key in sorted(state):
        match = SHARED_FREQ.match(key)
        if not match:
            continue
        prefix = match.group(1)
        if prefix in stored:
            first_key, first = stored[prefix]
            if not torch.equal(first, state[key]):
                raise CheckpointError(f"{key} differs from {first_key}, but the Sin "
                                      "activation is one module shared by the filter MLP")
        else:
            stored[prefix] = (key, state[key])
    for key in expected_keys:
        match = SHARED_FREQ.match(key)
        if match and key not in state and match.group(1) in stored:
            state[key] = stored[match.group(1)][1]
    return state


def load_state_into(model: HyenaDNA, raw_state: dict[str, torch.Tensor]) -> dict:
    """Strictly load released weights; returns facts about the load (tied lm_head, ...).

    Missing or unexpected keys and shape mismatches are errors, never silently skipped.
    """
    state = normalise_keys(raw_state)
    expected = set(model.state_dict())
    state = _tie_shared_freq(state, expected)
    lm = state.pop("lm_head.weight", None)
    tied = lm is None or (EMBEDDING_KEY in state and torch.equal(lm, state[EMBEDDING_KEY]))
    expected.discard("lm_head.weight")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {', '.join(unexpected[:8])}")
        raise CheckpointError("checkpoint does not match a HyenaDNA backbone of this config; "
                              + "; ".join(parts))
    for key, value in state.items():
        target = model.state_dict()[key]
        if target.shape != value.shape:
            raise CheckpointError(f"{key}: checkpoint shape {tuple(value.shape)} != "
                                  f"model shape {tuple(target.shape)} (wrong config.json?)")
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(lm))
        state["lm_head.weight"] = lm
    model.load_state_dict(state, strict=False)
    for f in model.filters():
        f.clear_cache()
    return {"lm_head_tied": tied}


def read_hf_weights(directory: Path) -> tuple[dict, Path]:
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.exists():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file)), safetensors_file
    bin_file = directory / "pytorch_model.bin"
    if bin_file.exists():
        return torch.load(bin_file, map_location="cpu", weights_only=True), bin_file
    raise CheckpointError(f"{directory} has config.json but neither model.safetensors "
                          "nor pytorch_model.bin")


def read_lightning_weights(path: Path, trust_pickle: bool = False) -> dict:
    """The `state_dict` of an original weights.ckpt.

    The released files also pickle omegaconf hyper-parameters and optimizer state, which the
    safe loader refuses; `trust_pickle` allows full unpickling for files the user trusts.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} pickles objects other than tensors (the released files carry omegaconf "
            "hyper-parameters), which the safe loader refuses. If you trust the file, pass "
            "--trust-checkpoint (needs omegaconf installed if the file uses it)."
        ) from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state_dict")
    return state


def build_from_directory(directory: Path, shift: float | None = None,
                         trust_pickle: bool = False) -> tuple[HyenaDNA, dict]:
    """Build a model from an `-hf` directory or an original-checkpoint directory."""
    config_file = directory / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{directory} has no config.json")
    config, fmt = HyenaConfig.from_json_file(config_file)
    if shift is not None:
        config = config.replace(modulation_shift=shift)
    if fmt == "hf":
        state, weights_file = read_hf_weights(directory)
    else:
        weights_file = directory / "weights.ckpt"
        if not weights_file.exists():
            raise CheckpointError(f"{directory}: original config.json but no weights.ckpt")
        state = read_lightning_weights(weights_file, trust_pickle)
    model = HyenaDNA(config)
    facts = load_state_into(model, state)
    facts.update(format=fmt, weights_file=str(weights_file),
                 weights_sha256=file_sha256(weights_file))
    return model.eval(), facts
