"""Turning what the user typed after `--model` into a loaded, frozen HyenaDNA.

Accepted: a registry name (`small-32k`), a hub repo id (`LongSafari/...-hf`), a local `-hf`
directory, an original-checkpoint directory, or a path to its `weights.ckpt`. Downloads go
through huggingface_hub's cache and honour HF_HUB_OFFLINE. Random weights only when asked for,
and the result says so; there is no silent fallback to another model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cache.errors import UserError
from .backbone import HyenaDNA
from .checkpoints import CheckpointError, build_from_directory
from .config import HyenaConfig
from .registry import REGISTRY, get_spec

log = logging.getLogger(__name__)
HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin"]


class ModelLoadError(UserError, RuntimeError):
    """The model asked for cannot be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: HyenaDNA
    name: str  # what the user asked for, as written in caches and head configs
    source: str  # local path, hub snapshot path, or "random-init"
    weights_sha256: str  # "random-init:seed=N" for random weights
    random_init: bool = False
    facts: dict = field(default_factory=dict)

    @property
    def config(self) -> HyenaConfig:
        return self.model.config

    def describe(self) -> dict:
        return {"model": self.name, "source": self.source, "weights_sha256": self.weights_sha256,
                "random_init": self.random_init, **self.config.to_dict()}


def random_model(name: str, seed: int = 0, shift: float | None = None) -> LoadedModel:
    """A randomly initialised model of a registry architecture, for smoke tests only."""
    config = get_spec(name).config
    if shift is not None:
        config = config.replace(modulation_shift=shift)
    torch.manual_seed(seed)
    model = HyenaDNA(config).eval()
    log.info("model %s: RANDOM weights (seed %d), not the released checkpoint", name, seed)
    return LoadedModel(model, name, "random-init", f"random-init:seed={seed}", random_init=True)


def _download(hub_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"cannot fetch {hub_id}: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE=1) "
            "and it is not in the local cache. Download it on a connected machine "
            f"(`hf download {hub_id}`) and pass --model /path/to/that/folder, or "
            "point HF_HOME at a cache that holds it."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"cannot fetch {hub_id} from the hub: {exc}. Pass --model with a "
                             "local -hf folder or weights.ckpt instead.") from exc
    except ValueError as exc:  # HFValidationError: not a valid repo id (a mistyped path?)
        raise ModelLoadError(f"--model {hub_id!r} is not an existing path, and not a valid hub "
                             f"repo id ({exc}); check the path") from exc


def load_model(spec: str, *, random_init: bool = False, seed: int = 0,
               shift: float | None = None, revision: str | None = None,
               trust_checkpoint: bool = False) -> LoadedModel:
    """Resolve and load a model; raises ModelLoadError with a hint on failure."""
    if random_init:
        if spec not in REGISTRY:
            raise ModelLoadError("--random-init takes a registry name for the architecture "
                                 f"({', '.join(REGISTRY)}), not {spec!r}")
        return random_model(spec, seed, shift)
    path = Path(spec).expanduser()
    if path.exists():
        directory = path.parent if path.is_file() else path
        if path.is_file() and path.name != "weights.ckpt":
            raise ModelLoadError(f"{path}: give the checkpoint folder, or its weights.ckpt")
        source = str(path.resolve())
    elif spec in REGISTRY or spec.count("/") == 1:
        hub_id = REGISTRY[spec].hub_id if spec in REGISTRY else spec
        directory = _download(hub_id, revision)
        source = f"hf://{hub_id}"
    else:
        raise ModelLoadError(f"--model {spec!r} is neither a registry name "
                             f"({', '.join(REGISTRY)}), a hub repo id, nor an existing path")
    try:
        model, facts = build_from_directory(directory, shift=shift, trust_pickle=trust_checkpoint)
    except (CheckpointError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {spec}: {exc}") from exc
    except Exception as exc:  # a truncated or foreign weights file: safetensors, torch, pickle
        raise ModelLoadError(f"cannot load {spec}: its weights file is damaged or not a "
                             f"HyenaDNA checkpoint ({type(exc).__name__}: {exc}); download it "
                             "again") from exc
    return LoadedModel(model, spec, source, facts["weights_sha256"], facts=facts)
