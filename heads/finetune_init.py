"""Where a fine-tuning head starts: the frozen backbone's feature statistics on the training
rows, or a torch head fitted by fit-head on a cache of the same model (a linear probe first)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hyena_embed.batching import token_budget_batches
from hyena_embed.loading import LoadedModel
from hyena_embed.tokenizer import Tokenizer
from .errors import FinetuneError
from .seqmodel import SequencePredictor
from .trainer import Trainer


def initial_statistics(trainer: Trainer, model: SequencePredictor, rows):
    """Standardise the head's inputs by the frozen backbone's features on the training rows
    (attention pooling starts as a plain mean, which is what it computes at this point)."""
    train = np.flatnonzero(rows.data.mask("train"))
    mine = train[trainer.dist.my_part(len(train))]  # each rank its share; all get the whole
    feats = np.zeros((len(mine), len(model.feature_mean)), np.float32)
    model.eval()
    with torch.no_grad():
        for block in trainer.scoring_blocks(mine):
            for batch in token_budget_batches(rows.lengths[mine[block]].tolist(), trainer.eval_batch_tokens):
                with trainer.autocast():
                    feats[block[batch]] = model.raw_features(
                        **trainer.inputs(mine[block[batch]])).float().cpu().numpy()
    feats = trainer.dist.gather_rows(feats)
    model.feature_mean.copy_(torch.as_tensor(feats.mean(axis=0)))
    model.feature_std.copy_(torch.as_tensor(feats.std(axis=0) + 1e-6))
    if rows.numeric.shape[1]:
        model.numeric_mean.copy_(torch.as_tensor(rows.numeric[train].mean(axis=0)))
        model.numeric_std.copy_(torch.as_tensor(rows.numeric[train].std(axis=0) + 1e-6))


def init_from_head(model: SequencePredictor, directory: str, loaded: LoadedModel, options,
                    tokenizer: Tokenizer):
    """Start from a torch head fitted by fit-head on a cache of the same model (linear probe
    first, then fine-tune): its weights and its input and target standardisation."""
    from .saving import load_head

    path = Path(directory)
    if not (path / "config.json").exists():
        raise FinetuneError(f"--init-head {directory}: no config.json; point it at one head's "
                            "folder written by fit-head (OUT/<features>/<head>)")
    config = json.loads((path / "config.json").read_text())
    problems = []
    if config.get("head") != options.head:
        problems.append(f"it is a {config.get('head')} head and --head is {options.head}")
    wanted = options.features or [options.pooling]
    theirs = config.get("features", [])
    if options.features:  # pair names may be written pool-first (site-delta) by fit-head
        from .finetune_options import parse_pair_features

        try:
            theirs = parse_pair_features(theirs)
        except ValueError:
            pass
    if theirs != wanted:
        problems.append(f"it was fitted on features {'+'.join(config.get('features', []))}, "
                        f"and this run's are {'+'.join(wanted)}")
    site_window = config.get("cache_settings", {}).get("site_window")
    if options.features and any("site" in f for f in wanted) and site_window not in (None, options.site_window):
        problems.append(f"its cache has --site-window {site_window}, this run {options.site_window}")
    if config.get("weights_sha256") != loaded.weights_sha256:
        problems.append("its cache was embedded with other weights")
    if config.get("layer") != loaded.model.resolve_layer(None):
        problems.append(f"its cache holds layer {config.get('layer')}, not the final output")
    if config.get("tokenizer", {}).get("special_tokens") != tokenizer.special_tokens:
        problems.append("its cache used another special-token policy")
    if config.get("labels") != list(options.labels):
        problems.append(f"it predicts {config.get('labels')}, not {list(options.labels)}")
    if problems:
        raise FinetuneError(f"--init-head {directory} does not fit this run: " + "; ".join(problems))
    head = load_head(path, config.get("model_file"), options.trust_head)
    if not hasattr(head, "model_"):
        raise FinetuneError(f"--init-head {directory} is a {config.get('head')} head; fine-tuning "
                            "starts from torch heads only (linear, mlp2, mlp3, mlp2_ln)")
    if tuple(head.x_mean_.shape) != tuple(model.feature_mean.shape):
        raise FinetuneError(f"--init-head {directory} takes {head.x_mean_.shape[0]} inputs, this "
                            f"run's features have {model.feature_mean.shape[0]}")
    model.head.mlp.load_state_dict(head.model_.state_dict())
    model.feature_mean.copy_(torch.as_tensor(head.x_mean_))
    model.feature_std.copy_(torch.as_tensor(head.x_std_))
    if head.task == "regression":
        model.target_mean.copy_(torch.as_tensor(head.y_mean_))
        model.target_std.copy_(torch.as_tensor(head.y_std_))
    return getattr(head, "classes_", None)
