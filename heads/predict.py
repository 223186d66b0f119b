"""Applying a fitted head to another cache, or a fine-tuned model to raw sequences."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cache.errors import UserError
from cache.safe_io import read_json
from cache.store import Cache
from hyena_embed.batching import token_budget_batches
from hyena_embed.inputs import InputError, plan_rows
from hyena_embed.tokenizer import InvalidSequenceError, Tokenizer, pad_batch_to_grid
from .data import MAX_KMER_K, DataError, features, units
from .evaluation import group_mean
from .saving import input_width, load_head


def read_head_config(head_dir: str) -> dict:
    directory = Path(head_dir)
    if not (directory / "config.json").exists():
        raise DataError(f"{head_dir} has no config.json: point --head-dir at one head's folder "
                        "(OUT/<features>/<head>)")
    path = directory / "config.json"
    try:
        config = read_json(path)
    except UserError as exc:
        raise DataError(f"{exc}; fit the head again") from None
    missing = [k for k in ("task", "labels", "features") if k not in config]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: not a head written by "
                        "hyena-embed, or damaged; fit the head again")
    wrong = [k for k, ok in (
        ("task", config["task"] in ("regression", "classification")),
        ("labels", _names(config["labels"])),
        ("features", _names(config["features"]) and all(FEATURE_NAME.fullmatch(f)
                                                         for f in config["features"])),
        ("kmer_max_k", config.get("kmer_max_k", 6) in range(1, MAX_KMER_K + 1)),
        ("model_file", isinstance(config.get("model_file", ""), str))) if not ok]
    if wrong:
        raise DataError(f"{path}: {', '.join(wrong)} not as fit-head writes them (damaged or "
                        "crafted); fit the head again")
    return config


MAX_L_MAX = 1 << 21  # longer than any HyenaDNA model's context (1M + 2)
# feature and run names: letters, digits, '_', '-', '+', '.', never a path ('/', '..')
FEATURE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_+.\-]*")


def _names(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _prediction_table(ids, groups, pred, config) -> pd.DataFrame:
    """One row per input row, or per sample (averaged over its packs) when rows are packs."""
    table = pd.DataFrame({"id": ids, "group": groups})
    if config["task"] == "regression":
        pred = np.asarray(pred, float).reshape(len(ids), -1)
        for t, name in enumerate(config["labels"]):
            table[f"pred_{name}"] = pred[:, t]
        if np.any(ids != groups):
            samples, means = group_mean(groups, pred)
            table = pd.DataFrame({"id": samples, **{f"pred_{n}": means[:, t]
                                                    for t, n in enumerate(config["labels"])}})
    else:
        table[f"pred_{config['labels'][0]}"] = pred
    return table


def predict_cache(head_dir: str, cache_path: str, trust_pickle: bool = False) -> pd.DataFrame:
    config = read_head_config(head_dir)
    if config.get("kind") == "finetune":
        raise DataError(f"{head_dir} is a fine-tuned model: it reads raw sequences, give --input")
    cache = Cache.open(cache_path)
    cache.require_complete()
    attrs = cache.attrs
    differ = [f"{k}={attrs.get(k)!r} (the head's cache: {config.get(k)!r})"
              for k in ("weights_sha256", "layer", "d_model") if attrs.get(k) != config.get(k)]
    if any(f != "kmer" for f in config["features"]):  # embeddings: every value-changing setting
        ours, theirs = cache.settings, config.get("cache_settings", {})
        differ += [f"{k}={ours.get(k)!r} (the head's cache: {theirs[k]!r})" for k in theirs
                   if ours.get(k) != theirs[k] and k not in ("weights_sha256", "layer")]
        if attrs.get("tokenizer") != config.get("tokenizer") and "tokenizer" not in theirs:
            differ.append("another tokenizer policy")
    if differ:
        raise DataError(f"{cache_path} was made with other settings than the cache the head was "
                        f"fitted on: {'; '.join(differ)}. Embed the new sequences with the same "
                        "model and settings first")
    head = load_head(head_dir, config.get("model_file"), trust_pickle)
    X = features(cache, config["features"], config.get("kmer_max_k", 6))
    width = input_width(head)
    if width is not None and X.ndim == 2 and X.shape[1] != width:
        raise DataError(f"{head_dir}: the head takes {width} features, but {'+'.join(config['features'])} "
                        f"of {cache_path} has {X.shape[1]}: the head folder is damaged or was "
                        "fitted on another model; fit the head again")
    ids, groups, _ = units(cache)
    pred = np.asarray(head.predict(X))
    if config["task"] == "regression" and pred.size != len(X) * len(config["labels"]):
        raise DataError(f"{head_dir}: the head gives {pred.size // max(len(X), 1)} outputs per row "
                        f"but its config names {len(config['labels'])} labels; fit the head again")
    return _prediction_table(ids, groups, pred, config)


def load_finetuned(head_dir: str, device: str = "cpu"):
    """The fine-tuned model and its spec, from best_model.pt alone."""
    from .checkpoint import FORMAT, load_model_state
    from .seqmodel import SequencePredictor

    path = Path(head_dir) / "best_model.pt"
    if not path.exists():
        raise DataError(f"{head_dir} has no best_model.pt")
    if path.is_symlink():
        raise DataError(f"{path} is a symbolic link; refusing to follow it")
    try:  # weights_only: tensors and plain containers, never code
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise DataError(f"{path} is not a fine-tuned model written by hyena-embed")
        spec, state = saved["spec"], saved["state_dict"]
        if not 0 < int(spec["backbone"]["l_max"]) <= MAX_L_MAX:
            raise DataError(f"{path}: its model's l_max is not one of a HyenaDNA model")
        # built without memory first: a crafted spec (a billion-wide layer) is refused, not allocated
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in SequencePredictor.from_spec(spec).state_dict().items()}
        if any(tuple(getattr(v, "shape", ())) != shapes.get(k) for k, v in state.items()):
            raise DataError(f"{path}: its weights do not fit the model it describes")
        model = SequencePredictor.from_spec(spec)
        load_model_state(model, state)
    except DataError:
        raise
    except Exception as exc:  # a cut-off file, a refused object, an edited spec
        raise DataError(f"{path} cannot be loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); it is damaged or "
                        "not a model finetune wrote: fine-tune again") from None
    return model.to(device).eval(), spec


def is_pair_model(config: dict) -> bool:
    """Whether a head's config (`read_head_config`) is a fine-tuned model of variant pairs."""
    return config.get("kind") == "finetune" and bool(config.get("options", {}).get("features"))


def _outputs_to_predictions(model, spec, outputs: np.ndarray, device):
    if spec["task"] == "regression":
        return model.to_values(torch.as_tensor(outputs, device=device)).cpu().numpy()
    return np.array(spec["classes"], dtype=object)[outputs.argmax(axis=1)]


def predict_pairs(head_dir: str, pairs, device: str = "cpu", batch_tokens: int = 16_384) -> pd.DataFrame:
    """A pair model's predictions: one row per pair, a column per output."""
    from .pairdata import PairBatchMaker, PairSet, tokenise_pairs, variant_codes
    from .data import variant_onehot
    from .seqdata import category_codes, numeric_inputs

    model, spec = _load_finetuned_for(head_dir, device)
    if "pair" not in spec:
        raise DataError(f"{head_dir} was fine-tuned on single sequences: give --input with --seq-col")
    tokenizer = _tokenizer_of(spec)
    refs, alts, sites = tokenise_pairs(pairs, tokenizer)
    codes, _ = category_codes(pairs, spec["category_cols"], vocabularies=spec["vocabularies"])
    rows = PairSet(None, refs, alts, sites,
                   variant_onehot([p.ref_allele for p in pairs], [p.alt_allele for p in pairs]),
                   variant_codes(pairs), numeric_inputs(pairs, spec["numeric_cols"]), codes)
    batches = PairBatchMaker(rows, tokenizer, 1, spec["pair"]["variant_embedding"])
    outputs = np.zeros((len(pairs), spec["n_out"]), np.float32)
    with torch.no_grad():
        for batch in token_budget_batches(rows.lengths.tolist(), batch_tokens):
            inputs = {k: v.to(device) for k, v in batches.inputs(np.asarray(batch)).items()}
            outputs[batch] = model(**inputs).float().cpu().numpy()
    ids = np.array([p.id for p in pairs], dtype=object)
    return _prediction_table(ids, ids, _outputs_to_predictions(model, spec, outputs, device),
                             {"task": spec["task"], "labels": spec["labels"]})


def _load_finetuned_for(head_dir: str, device: str):
    config = read_head_config(head_dir)
    if config.get("kind") != "finetune":
        raise DataError(f"{head_dir} is a head fitted on cached embeddings: give --cache "
                        "(embed the sequences with the same model first)")
    return load_finetuned(head_dir, device)


def _tokenizer_of(spec: dict) -> Tokenizer:
    tok = spec["tokenizer"]
    return Tokenizer(tok["max_length"], tok["special_tokens"], tok["truncation"])


def predict_sequences(head_dir: str, records, device: str = "cpu",
                      batch_tokens: int = 16_384) -> pd.DataFrame:
    """Predictions of a fine-tuned model on raw sequences (same tokenizer, packs and extras)."""
    from .seqdata import category_codes, numeric_inputs

    model, spec = _load_finetuned_for(head_dir, device)
    if "pair" in spec:
        raise DataError(f"{head_dir} was fine-tuned on variant pairs: give the pairs as at "
                        "training (--ref-col/--alt-col, or --genome)")
    tokenizer = _tokenizer_of(spec)
    rows = list(plan_rows(records(), tokenizer.max_body, spec["packs"]))
    if not rows:
        raise InputError("no sequences: the input is empty")
    try:
        tokens = [tokenizer(r.parts, record=r.id) for r in rows]
    except InvalidSequenceError as exc:
        raise InputError(str(exc)) from exc
    numeric = numeric_inputs(rows, spec["numeric_cols"])
    codes, _ = category_codes(rows, spec["category_cols"], vocabularies=spec["vocabularies"])
    outputs = np.zeros((len(rows), spec["n_out"]), np.float32)
    with torch.no_grad():
        for batch in token_budget_batches([len(t) for t in tokens], batch_tokens):
            ids, lengths = pad_batch_to_grid([tokens[i] for i in batch], tokenizer.max_length)
            out = model(ids.to(device), lengths.to(device), torch.as_tensor(numeric[batch]).to(device),
                        torch.as_tensor(codes[batch]).to(device))
            outputs[batch] = out.float().cpu().numpy()
    pred = _outputs_to_predictions(model, spec, outputs, device)
    ids = np.array([r.id for r in rows], dtype=object)
    groups = np.array([r.group for r in rows], dtype=object)
    return _prediction_table(ids, groups, pred, {"task": spec["task"], "labels": spec["labels"]})

