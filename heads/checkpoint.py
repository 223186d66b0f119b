"""What a fine-tuning run keeps on disk: the self-describing best model (`predict` needs
nothing else) and the per-epoch checkpoint a killed run resumes from, each written atomically
(a temporary file, then a rename)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from cache.safe_io import write_bytes

from .errors import FinetuneError

FORMAT = "hyena-embed-finetuned/1"


def atomic_save(obj, path: Path):
    buffer = io.BytesIO()  # written whole, then renamed into place (never through a link)
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def model_state(model: torch.nn.Module) -> dict:
    # the language-model head is unused (and tied to the embeddings in released models)
    return {k: v for k, v in model.state_dict().items() if k != "encoder.lm_head.weight"}


def load_model_state(model: torch.nn.Module, state: dict):
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"encoder.lm_head.weight"}:
        raise FinetuneError(f"checkpoint does not fit the model: missing {missing}, "
                            f"unexpected {unexpected}")


def resume_state(path: Path, run_config: dict, overwrite: bool, say) -> dict | None:
    """The checkpoint to resume from, None to start afresh (none there, or --overwrite, which
    deletes it); a checkpoint of a run with other settings is refused, naming them."""
    if not path.exists():
        return None
    if overwrite:
        say(f"--overwrite: starting {path.parent} again")
        path.unlink()
        return None
    try:
        state = torch.load(path, weights_only=True)
        recorded = state["config"]
        if not isinstance(recorded, dict):
            raise TypeError("config is not a table")
    except Exception as exc:  # cut off by a full disk, or edited
        raise FinetuneError(f"{path} is damaged ({type(exc).__name__}); start again with "
                            "--overwrite (it deletes only this run's checkpoint)") from None
    if state["config"] != run_config:
        diff = sorted(k for k in set(state["config"]) | set(run_config)
                      if state["config"].get(k) != run_config.get(k))
        if "options" in diff:
            old, new = state["config"]["options"], run_config["options"]
            diff = [f"options.{k}" for k in sorted(new) if old.get(k) != new.get(k)] + \
                   [d for d in diff if d != "options"]
        raise FinetuneError(f"{path.parent} holds a run with other settings ({', '.join(diff)}); "
                            "use another --out, or --overwrite to start again")
    return state
