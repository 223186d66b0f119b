"""Fitted heads on disk without pickle: a head folder can be handed around and never runs code.

Per head kind, in the head's folder:
- torch MLP: `head.safetensors` (the network's weights and the standardisation arrays) and its
  parameters in `head.json`;
- LightGBM: LightGBM's own text model per booster (`lightgbm_<t>.txt`) and `head.json`;
- scikit-learn: the fitted pipeline in skops format (`head.skops`), loaded with an explicit
  allow-list of the estimator types fit-head builds (anything else is refused), and `head.json`.
`head.json` names the kind and the files; every name is a plain file name inside the folder.
A pickled `head.joblib` (written before this format) loads only with `trust_pickle=True`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache.errors import UserError
from cache.safe_io import read_json, read_text, write_json
from .lightgbm_text import checked_model_text
from .sklearn_checks import check_pipeline

HEAD_FILE = "head.json"
FORMAT = "hyena-embed-head"
# the scikit-learn types fit-head builds and skops does not trust by default
SKOPS_ALLOWED = {
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree", "sklearn.tree._tree.Tree",
}


# the attributes a head's state may restore (anything else could shadow a method)
STATE_NAMES = {"n_outputs_", "best_epoch_", "n_columns_", "length_", "classes_", "multi_output_"}
MODEL_LIMIT = 1 << 30  # a LightGBM text model larger than 1 GiB is not one fit-head wrote


class HeadLoadError(UserError, ValueError):
    """A head folder that cannot be loaded safely; the message says why and what to do."""


def inside(directory: Path, name: str) -> Path:
    """`directory/name`, refusing names that leave the folder (absolute, '..', links out)."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise HeadLoadError(f"{directory}: file name {name!r} in the head's config is not a plain "
                            "file name inside the folder; refusing it")
    path = directory / name
    if path.is_symlink() or not path.resolve().is_relative_to(directory.resolve()):
        raise HeadLoadError(f"{path} points outside {directory}; refusing it")
    return path


def save_head(head, directory: Path) -> str:
    """Write the fitted head into `directory`; returns the name of its description file."""
    from .registry import LightGBMHead, SklearnHead, _booster
    from .torch_mlp import TorchMLPHead

    directory = Path(directory)
    if isinstance(head, TorchMLPHead):
        arrays = {f"model.{k}": v.detach().cpu().contiguous() for k, v in head.model_.state_dict().items()}
        for name in ("x_mean_", "x_std_", "y_mean_", "y_std_"):
            if hasattr(head, name):
                arrays[name] = torch.as_tensor(np.asarray(getattr(head, name), dtype=np.float64))
        from safetensors.torch import save_file

        save_file(arrays, str(directory / "head.safetensors"))
        state = {"n_outputs_": head.n_outputs_, "best_epoch_": getattr(head, "best_epoch_", None)}
        for name in ("n_columns_", "length_"):  # the CNN's input layout
            if hasattr(head, name):
                state[name] = int(getattr(head, name))
        files = ["head.safetensors"]
        kind = "cnn" if head.arch == "cnn" else "torch_mlp"
    elif isinstance(head, LightGBMHead):
        files = []
        for t, booster in enumerate(head.boosters_):
            files.append(f"lightgbm_{t}.txt")
            _booster(booster).save_model(str(directory / files[-1]))
        state = {"multi_output_": head.multi_output_}
        kind = "lightgbm"
    elif isinstance(head, SklearnHead):
        import skops.io

        skops.io.dump(head.pipeline_, directory / "head.skops")
        files, state, kind = ["head.skops"], {}, "sklearn"
    else:
        raise TypeError(f"cannot save a {type(head).__name__}")
    if hasattr(head, "classes_"):
        state["classes_"] = [c.item() if hasattr(c, "item") else c for c in head.classes_]
    params = {k: v for k, v in head.get_params(deep=False).items() if k != "estimator"}
    description = {"format": FORMAT, "kind": kind, "params": params, "state": state, "files": files}
    write_json(directory / HEAD_FILE, description)
    return HEAD_FILE


def load_head(directory: str | Path, model_file: str, trust_pickle: bool = False):
    """The fitted head of a folder written by fit-head, loaded without running its files."""
    directory = Path(directory)
    path = inside(directory, model_file)
    if not path.exists():
        raise HeadLoadError(f"{directory} lacks {model_file}, which its config.json names: the "
                            "folder is incomplete; fit the head again")
    if path.suffix == ".joblib":
        if not trust_pickle:
            raise HeadLoadError(
                f"{path} is a pickle: loading it can run any code its author put in it. Refit the "
                "head with this version (fit-head writes pickle-free folders), or, only if you "
                "made this folder yourself, pass --trust-head")
        import joblib

        return joblib.load(path)
    try:
        description = read_json(path)
    except UserError as exc:
        raise HeadLoadError(f"{exc}; fit the head again") from None
    if description.get("format") != FORMAT:
        raise HeadLoadError(f"{path} is not a head written by hyena-embed")
    shapes = {"kind": str, "params": dict, "state": dict, "files": list}
    wrong = [k for k, t in shapes.items() if not isinstance(description.get(k), t)]
    if wrong or description["kind"] not in _LOADERS or not description["files"] \
            or set(description["state"]) - STATE_NAMES:
        raise HeadLoadError(f"{path} is damaged or crafted ({', '.join(wrong) or 'kind, files or state'} "
                            "not as fit-head writes them); fit the head again")
    files = [inside(directory, name) for name in description["files"]]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise HeadLoadError(f"{directory} lacks {', '.join(missing)}: fit the head again")
    try:
        return _LOADERS[description["kind"]](description, files)
    except HeadLoadError:
        raise
    except Exception as exc:  # a truncated or edited model file
        raise HeadLoadError(f"{directory}: cannot load the {description.get('kind')} head "
                            f"({type(exc).__name__}: {exc}); fit the head again") from None


def _classes(state):
    return np.asarray(state["classes_"], dtype=object) if "classes_" in state else None


def _load_torch(description, files):
    from safetensors.torch import load_file

    from .cnn import MAX_LENGTH, CNNHead
    from .torch_mlp import TorchMLPHead

    head = (CNNHead if description["kind"] == "cnn" else TorchMLPHead)(**description["params"])
    state, arrays = description["state"], load_file(str(files[0]))
    for name in ("x_mean_", "x_std_", "y_mean_", "y_std_"):
        if name in arrays:
            value = arrays[name].numpy()
            setattr(head, name, value.astype(np.float32) if name.startswith("x") else value)
    for name, value in state.items():
        setattr(head, name, value)
    if not (isinstance(state.get("n_outputs_"), int) and 0 < state["n_outputs_"] <= 10_000) or \
            (description["kind"] == "cnn" and not (0 < int(state.get("length_", 0)) <= MAX_LENGTH
                                                     and 0 < int(state.get("n_columns_", 0)) <= 4)):
        raise HeadLoadError(f"{files[0].parent}: the head's state is not as fit-head writes it")
    weights = {k[6:]: v for k, v in arrays.items() if k.startswith("model.")}
    # the layout restored above sizes the network: build it without memory first, so that a
    # crafted layout (a billion-wide layer) is refused rather than allocated
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in head._network(state["n_outputs_"]).state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in weights.items()}:
        raise HeadLoadError(f"{files[0]}: the network's weights do not fit its layout in "
                            f"{HEAD_FILE}; fit the head again")
    head.model_ = head._network(state["n_outputs_"])
    head.model_.load_state_dict(weights)
    head.model_.eval()
    if _classes(state) is not None:
        head.classes_ = _classes(state)
    return head


def _load_lightgbm(description, files):
    import lightgbm as lgb

    from .registry import LightGBMHead

    head = LightGBMHead(**description["params"])
    head.boosters_ = [lgb.Booster(model_str=checked_model_text(read_text(f, MODEL_LIMIT), str(f)))
                      for f in files]
    head.multi_output_ = description["state"]["multi_output_"]
    if _classes(description["state"]) is not None:
        head.classes_ = _classes(description["state"])
    return head


def _load_sklearn(description, files):
    import skops.io

    from .registry import SklearnHead

    untrusted = set(skops.io.get_untrusted_types(file=files[0]))
    unexpected = untrusted - SKOPS_ALLOWED
    if unexpected:
        raise HeadLoadError(f"{files[0]} holds types fit-head never writes "
                            f"({', '.join(sorted(unexpected))}); refusing to load it")
    head = SklearnHead()
    head.pipeline_ = skops.io.load(files[0], trusted=sorted(untrusted))
    check_pipeline(head.pipeline_, str(files[0]))
    if hasattr(head.pipeline_, "classes_"):
        head.classes_ = head.pipeline_.classes_
    return head


_LOADERS = {"torch_mlp": _load_torch, "cnn": _load_torch, "lightgbm": _load_lightgbm,
            "sklearn": _load_sklearn}


def input_width(head) -> int | None:
    """How many feature columns a loaded head takes (None for the CNN, which reads sequences)."""
    from .registry import LightGBMHead, SklearnHead, _booster
    from .torch_mlp import TorchMLPHead

    if isinstance(head, LightGBMHead):
        return int(_booster(head.boosters_[0]).num_feature())
    if isinstance(head, SklearnHead):
        return int(head.pipeline_.n_features_in_)
    if isinstance(head, TorchMLPHead) and head.arch != "cnn":
        return len(head.x_mean_)
    return None
