"""finetune: the backbone's last N blocks + pooling + a torch head, trained end to end.

The loop reads top to bottom: options -> rows -> model -> (resume) -> epochs -> outputs.
Every epoch ends with an atomic checkpoint (model, optimiser, schedule, scaler, RNG states,
epoch, best score, history, run config), so the same command after a kill resumes where the
last finished epoch left off. A loss that is not finite stops the run, keeps the last good
checkpoint and says what to try.

Single sequences (records, packs of reads) or variant pairs (one forward over the B reference
and B alternative windows of a batch, fit-head's pair features). Under torchrun every rank
runs the same loop on its share of each batch's rows, with DDP averaging the gradients; one
epoch's work is `heads.trainer.Trainer`.

Outputs, as fit-head's, in OUT/finetune-<pool>-u<N>/<head>/: best_model.pt (self-describing:
`predict --input` needs nothing else), config.json, metrics.json, training_log.csv,
test_predictions.csv (per sample for packs), plots; a row in OUT/leaderboard.csv.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from cache.errors import UserError
from hyena_embed.distributed import Distributed
from hyena_embed.loading import LoadedModel
from hyena_embed.batching import token_budget_batches
from hyena_embed.devices import resolve_device
from hyena_embed.precision import PRECISIONS, resolve as resolve_precision
from hyena_embed.tokenizer import Tokenizer
from .fit import FixedPredictions, evaluate, update_leaderboard
from .freezing import apply_unfreeze_, describe_groups, parameter_groups, parse_unfreeze
from .seqdata import BatchMaker, load_sequences
from .seqmodel import FINETUNE_POOLINGS, PairPredictor, SequencePredictor
from .torch_mlp import ARCHS
from .trainer import Diverged, Trainer, WarmupSchedule

FORMAT = "hyena-embed-finetuned/1"


class FinetuneError(UserError, RuntimeError):
    """The run cannot go on (diverged, or options that contradict each other)."""


@dataclass
class FinetuneOptions:
    labels: list[str]
    head: str = "mlp3"  # linear, mlp2, mlp3, mlp2_ln
    pooling: str = "mean"  # mean, last, first, max, attention
    unfreeze: str = "2"  # 0..n_layer or "all"
    lr: float = 1e-3  # the head's learning rate
    encoder_lr_mult: float = 0.1  # the encoder learns at lr * this
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 16  # rows per forward pass
    grad_accum: int = 1  # forward passes per optimiser step
    clip_grad: float = 1.0  # max gradient norm; 0 = no clipping
    schedule: str = "cosine"  # cosine or plateau, after a linear warmup
    warmup: float = 0.05  # fraction of optimiser steps
    patience: int = 5  # epochs without a better validation loss before stopping
    loss: str = "smoothl1"  # regression: smoothl1 or mse; classification: cross-entropy
    dropout: float = 0.1
    precision: str = "auto"  # auto: fp16 + grad scaler on CUDA, float32 on CPU
    grad_checkpoint: bool = False  # recompute trainable blocks in backward: less memory
    rc_augment: bool = False  # reverse-complement training rows with probability 1/2
    shuffle_reads: bool = False  # permute the joined reads of multi-read rows each time
    features: list[str] | None = None  # variant pairs: fit-head's pair feature names
    site_window: int = 5  # variant pairs: sitewin is the mean over the site +- this many tokens
    variant_embedding: bool = False  # variant pairs: learned embedding of the ref and alt base
    group_col: str | None = None  # variant pairs: split by this column (e.g. gene), not by pair
    init_head: str | None = None  # a fit-head torch head folder to start from
    trust_head: bool = False  # allow a pickled head.joblib in init_head (old folders)
    numeric_cols: list[str] = field(default_factory=list)  # extra numeric inputs
    category_cols: list[str] = field(default_factory=list)  # extra categorical inputs
    task: str | None = None
    labels_file: str | None = None
    labels_id_col: str = "id"
    test_ids: str | None = None
    split_col: str | None = None
    packs: int | None = None
    special_tokens: str = "sep"
    truncation: str = "keep-end"
    seed: int = 42
    device: str = "auto"
    eval_batch_tokens: int | None = None
    plots: bool = True

    def validate(self, n_layer: int, device: torch.device, pairs: bool = False):
        """Contradictions fail here, before any data is read."""
        self.unfreeze = str(parse_unfreeze(self.unfreeze, n_layer))
        if pairs:
            from .pairdata import parse_pair_features

            self.features = parse_pair_features(self.features or [f"delta-{self.pooling}"],
                                                FINETUNE_POOLINGS)
        pair_only = [flag for flag, used in (("--features", self.features),
                                             ("--variant-embedding", self.variant_embedding),
                                             ("--group-col", self.group_col)) if used]
        single_only = [flag for flag, used in (("--packs", self.packs),
                                               ("--shuffle-reads", self.shuffle_reads),
                                               ("--rc-augment", self.rc_augment)) if used]
        checks = [
            (not pairs and bool(pair_only),
             f"{', '.join(pair_only)} take variant pairs (--ref-col/--alt-col or --genome)"),
            (pairs and bool(single_only),
             f"{', '.join(single_only)} cannot be used with variant pairs"),
            (pairs and self.split_col is not None and self.group_col is not None,
             "give --split-col or --group-col, not both"),
            (self.head not in ARCHS, f"--head must be a torch head: {', '.join(ARCHS)}"),
            (self.pooling not in FINETUNE_POOLINGS,
             f"--pool must be one of {', '.join(FINETUNE_POOLINGS)}"),
            (self.schedule not in ("cosine", "plateau"), "--schedule must be cosine or plateau"),
            (self.loss not in ("smoothl1", "mse"), "--loss must be smoothl1 or mse"),
            (self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1,
             "--epochs, --batch-size and --grad-accum must be at least 1"),
            (not 0 <= self.warmup < 1, "--warmup is a fraction of the steps, in [0, 1)"),
            (self.lr <= 0 or self.encoder_lr_mult < 0, "--lr must be > 0 and --encoder-lr-mult >= 0"),
            (self.unfreeze == "0" and self.grad_checkpoint,
             "--grad-checkpoint saves memory in trainable blocks, and --unfreeze 0 has none"),
            (self.unfreeze == "0" and self.encoder_lr_mult != 0.1,
             "--encoder-lr-mult has no effect with --unfreeze 0 (the encoder is frozen)"),
            (self.unfreeze != "0" and self.encoder_lr_mult == 0,
             "--encoder-lr-mult 0 freezes the encoder: say --unfreeze 0 instead"),
            (self.init_head is not None and self.pooling == "attention",
             "--init-head takes a head fitted on pooled features; attention pooling has none"),
            (self.init_head is not None and bool(self.numeric_cols or self.category_cols
                                                 or self.variant_embedding),
             "--init-head cannot be combined with extra inputs (the head's input width differs)"),
            (device.type == "cpu" and self.precision == "float16",
             "--precision float16 needs CUDA; on CPU use float32 (default) or bfloat16"),
            (self.precision not in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
        ]
        for failed, message in checks:
            if failed:
                raise FinetuneError(message)

    @property
    def run_name(self) -> str:
        what = "+".join(self.features) if self.features else self.pooling
        return f"finetune-{what}-u{self.unfreeze}"


def _atomic_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _model_state(model: SequencePredictor) -> dict:
    # the language-model head is unused (and tied to the embeddings in released models)
    return {k: v for k, v in model.state_dict().items() if k != "encoder.lm_head.weight"}


def load_model_state(model: SequencePredictor, state: dict):
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"encoder.lm_head.weight"}:
        raise FinetuneError(f"checkpoint does not fit the model: missing {missing}, "
                            f"unexpected {unexpected}")


def _initial_statistics(trainer: Trainer, model: SequencePredictor, rows):
    """Standardise the head's inputs by the frozen backbone's features on the training rows
    (attention pooling starts as a plain mean, which is what it computes at this point)."""
    train = np.flatnonzero(rows.data.mask("train"))
    mine = train[trainer.dist.my_part(len(train))]  # each rank its share; all get the whole
    feats = np.zeros((len(mine), len(model.feature_mean)), np.float32)
    model.eval()
    with torch.no_grad():
        for batch in token_budget_batches(rows.lengths[mine].tolist(), trainer.eval_batch_tokens):
            with trainer.autocast():
                feats[batch] = model.raw_features(**trainer.inputs(mine[batch])).float().cpu().numpy()
    feats = trainer.dist.gather_rows(feats)
    model.feature_mean.copy_(torch.as_tensor(feats.mean(axis=0)))
    model.feature_std.copy_(torch.as_tensor(feats.std(axis=0) + 1e-6))
    if rows.numeric.shape[1]:
        model.numeric_mean.copy_(torch.as_tensor(rows.numeric[train].mean(axis=0)))
        model.numeric_std.copy_(torch.as_tensor(rows.numeric[train].std(axis=0) + 1e-6))


def _init_from_head(model: SequencePredictor, directory: str, loaded: LoadedModel, options,
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
        from .pairdata import parse_pair_features

        try:
            theirs = parse_pair_features(theirs, FINETUNE_POOLINGS)
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


def finetune(loaded: LoadedModel, records, out: str, options: FinetuneOptions,
             overwrite: bool = False, progress: bool = True, say: Callable[[str], None] = print,
             on_epoch_end: Callable | None = None, pairs=None) -> dict:
    """Fine-tune end to end; returns the leaderboard row. `records` yields single sequences,
    or `pairs` (a list of VariantPair, records None) gives variant pairs. `on_epoch_end(epoch,
    model)` runs after each epoch's checkpoint is written (tests use it to interrupt a run).

    Under torchrun every rank runs this with the same arguments: each takes its share of every
    batch's rows, DDP averages the gradients, rank 0 alone writes and speaks."""
    dist = Distributed(resolve_device(options.device).type)
    try:
        if not dist.is_main:
            progress, say = False, (lambda _message: None)
        return _finetune(loaded, records, out, options, overwrite, progress, say, on_epoch_end,
                         pairs, dist)
    finally:
        dist.close()


def _finetune(loaded, records, out, options, overwrite, progress, say, on_epoch_end, pairs,
              dist: Distributed) -> dict:
    device = resolve_device(options.device, dist.local_rank)
    if dist.active and device.type == "cuda" and device.index is None:  # --device cuda: one GPU a rank
        device = torch.device("cuda", dist.local_rank)
    save = _atomic_save if dist.is_main else (lambda *_: None)
    options.validate(loaded.config.n_layer, device, pairs=pairs is not None)
    precision = resolve_precision(options.precision, device)
    tokenizer = Tokenizer(loaded.config.l_max, options.special_tokens, options.truncation)
    common = dict(task=options.task, labels_file=options.labels_file,
                  labels_id_col=options.labels_id_col, test_ids=options.test_ids,
                  split_col=options.split_col, seed=options.seed,
                  numeric_cols=options.numeric_cols, category_cols=options.category_cols)
    if pairs is not None:
        from .pairdata import PairBatchMaker, load_pairs

        rows = load_pairs(pairs, tokenizer, options.labels, group_col=options.group_col, **common)
        unit = "pairs"
    else:
        rows = load_sequences(records, tokenizer, options.labels, packs=options.packs, **common)
        unit = "rows"
    data, r = rows.data, rows.report
    counts = {s: int(data.mask(s).sum()) for s in ("train", "val", "test")}
    say(f"{data.task}: {r['rows']} labelled {unit} ({r['dropped_missing_labels']} without a finite "
        f"label dropped; {r['truncated_rows']} truncated to l_max); train/val/test = "
        f"{counts['train']}/{counts['val']}/{counts['test']} {unit}, {r['samples']} samples")
    if options.shuffle_reads and not any(len(p) > 1 for p in rows.parts):
        raise FinetuneError("--shuffle-reads permutes the reads of multi-read samples, and no "
                            "row here has more than one read")

    run_dir = Path(out) / options.run_name / options.head
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = {"options": asdict(options), "model": loaded.name,
                  "weights_sha256": loaded.weights_sha256, "random_init": loaded.random_init,
                  "tokenizer": tokenizer.describe(), "data_sha256": rows.fingerprint,
                  "precision": precision.name}
    checkpoint_path = run_dir / "checkpoint.pt"
    if overwrite:  # rank 0 removes the old run before anyone could read it
        if dist.is_main:
            _resume(checkpoint_path, run_config, True, say)
        dist.barrier()
        resume = None
    else:
        resume = _resume(checkpoint_path, run_config, False, say)
    if resume is not None and resume.get("finished"):
        say(f"{run_dir} is already finished; nothing to do (pass --overwrite to train again)")
        return resume["result"]

    torch.manual_seed(options.seed)
    regression = data.task == "regression"
    n_out = (1 if np.ndim(data.y) == 1 else data.y.shape[1]) if regression else \
        len(np.unique(data.y[data.mask("train")]))
    encoder = copy.deepcopy(loaded.model)
    category_sizes = [len(v) for v in rows.vocabularies]
    if pairs is not None:
        model = PairPredictor(encoder, options.head, n_out, options.features, options.site_window,
                              options.variant_embedding, options.dropout, rows.numeric.shape[1],
                              category_sizes)
        batches = PairBatchMaker(rows, tokenizer, options.batch_size, options.variant_embedding)
    else:
        model = SequencePredictor(encoder, options.head, n_out, options.pooling, options.dropout,
                                  rows.numeric.shape[1], category_sizes)
        batches = BatchMaker(rows, tokenizer, options.batch_size, options.rc_augment,
                             options.shuffle_reads)
    apply_unfreeze_(model.encoder, parse_unfreeze(options.unfreeze, loaded.config.n_layer))
    model.gradient_checkpointing = options.grad_checkpoint
    model.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    trainer = Trainer(model, rows, batches, options, device, precision, scaler, dist)
    if regression:
        y_train = np.asarray(data.y[data.mask("train")], np.float64).reshape(counts["train"], -1)
        model.target_mean.copy_(torch.as_tensor(y_train.mean(axis=0)))
        model.target_std.copy_(torch.as_tensor(y_train.std(axis=0) + 1e-12))

    groups = parameter_groups(model.head, model.encoder.backbone, options.lr,
                              options.encoder_lr_mult, options.weight_decay)
    trainable = {id(p) for g in groups for p in g.params}
    frozen = sum(p.numel() for p in model.parameters() if id(p) not in trainable)
    say(describe_groups(groups, frozen))
    optimizer = torch.optim.AdamW([{"params": g.params, "lr": g.lr, "base_lr": g.lr,
                                    "weight_decay": g.weight_decay, "name": g.name} for g in groups])
    steps_per_epoch = math.ceil(math.ceil(counts["train"] / options.batch_size) / options.grad_accum)
    total_steps = steps_per_epoch * options.epochs
    schedule = WarmupSchedule(optimizer, total_steps, int(options.warmup * total_steps), options.schedule)
    generator = torch.Generator().manual_seed(options.seed)

    history, best, best_epoch, stale, start_epoch = [], math.inf, 0, 0, 1
    if resume is not None:
        load_model_state(model, resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"]["torch"])
        generator.set_state(resume["rng"]["generator"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        history, best, best_epoch, stale = (resume["history"], resume["best"],
                                            resume["best_epoch"], resume["stale"])
        start_epoch = resume["epoch"] + 1
        say(f"resuming {run_dir} after epoch {resume['epoch']} (best validation loss "
            f"{best:.4f} at epoch {best_epoch})")
    elif options.init_head:
        classes = _init_from_head(model, options.init_head, loaded, options, tokenizer)
        if classes is not None and list(classes) != list(trainer.classes):
            raise FinetuneError(f"--init-head was fitted on classes {list(classes)}, "
                                f"this data has {list(trainer.classes)}")
        say(f"head initialised from {options.init_head}")
    else:
        _initial_statistics(trainer, model, rows)

    val_rows = np.flatnonzero(data.mask("val"))
    model_spec = {**model.spec, "task": data.task, "labels": list(options.labels),
                  "classes": None if regression else [str(c) for c in trainer.classes],
                  "tokenizer": tokenizer.describe(), "packs": options.packs,
                  "numeric_cols": list(options.numeric_cols),
                  "category_cols": list(options.category_cols), "vocabularies": rows.vocabularies,
                  "source_model": loaded.name, "weights_sha256": loaded.weights_sha256,
                  "random_init": loaded.random_init}
    for epoch in range(start_epoch, options.epochs + 1):
        if stale >= options.patience:  # also when resuming a run that had already stopped
            break
        started = time.perf_counter()
        try:
            train_loss = trainer.train_epoch(optimizer, schedule, generator, epoch, progress)
            val_out = trainer.outputs(val_rows)
            val_loss = trainer.loss_on(val_rows, val_out)
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss is {val_loss} after epoch {epoch}")
        except Diverged as exc:
            kept = (f"the last good checkpoint (epoch {history[-1]['epoch']}) is kept in "
                    f"{checkpoint_path}" if history else "no epoch finished, so there is no checkpoint")
            raise FinetuneError(f"{exc}: the run diverged and stopped; {kept}. Try a lower --lr "
                                f"(now {options.lr:g}) or --encoder-lr-mult, a longer --warmup, "
                                "or --precision float32; then rerun with --overwrite") from None
        val_pred, _ = trainer.predictions(val_out)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  **_val_metric(data, val_rows, val_pred),
                  **{f"lr_{g['name'].split()[0]}": g["lr"] for g in optimizer.param_groups},
                  "seconds": round(time.perf_counter() - started, 2)}
        history.append(record)
        schedule.end_epoch(val_loss)
        if val_loss < best - 1e-6:
            best, best_epoch, stale = val_loss, epoch, 0
            save({"format": FORMAT, "spec": model_spec, "epoch": epoch,
                          "state_dict": _model_state(model)}, run_dir / "best_model.pt")
        else:
            stale += 1
        say(f"epoch {epoch:>3}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_") and k != "val_loss")
            + ("  *" if best_epoch == epoch else ""))
        save({"config": run_config, "model": _model_state(model),
                      "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                      "scaler": scaler.state_dict(),
                      "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(),
                              "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                      "epoch": epoch, "best": best, "best_epoch": best_epoch, "stale": stale,
                      "history": history}, checkpoint_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    if stale >= options.patience:
        say(f"early stop: no better validation loss for {options.patience} epochs")

    dist.barrier()  # rank 0 has written the best model
    result = _finish(model, trainer, run_dir, options, loaded, run_config, history, best_epoch,
                     write=dist.is_main)
    if dist.is_main:
        state = torch.load(checkpoint_path, weights_only=True)
        state.update(finished=True, result=result)
        _atomic_save(state, checkpoint_path)
        update_leaderboard(out, [result], data.task, data.split_fingerprint())
    return result


def _val_metric(data, rows, pred) -> dict:
    y = data.y[rows]
    if data.task == "regression":
        return {"val_mae": float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(y, float))))}
    return {"val_accuracy": float(np.mean(pred == y))}


def _resume(path: Path, run_config: dict, overwrite: bool, say) -> dict | None:
    if not path.exists():
        return None
    if overwrite:
        say(f"--overwrite: starting {path.parent} again")
        path.unlink()
        return None
    state = torch.load(path, weights_only=True)
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


def _finish(model, trainer: Trainer, run_dir: Path, options, loaded, run_config, history,
            best_epoch, write: bool = True) -> dict:
    """Best weights back in, every split scored as fit-head scores it, outputs written (by
    rank 0: `write`)."""
    best = torch.load(run_dir / "best_model.pt", weights_only=True)
    load_model_state(model, best["state_dict"])
    data = trainer.rows.data
    everything = np.arange(len(data.ids))
    pred, proba = trainer.predictions(trainer.outputs(everything))
    fixed = FixedPredictions(pred, proba, trainer.classes)
    X = everything[:, None]
    metrics = {}
    for split in ("train", "val", "test"):
        metrics[split], table = evaluate(fixed, X, data, split)
    metrics["best_epoch"] = best_epoch
    metrics["train_seconds"] = round(sum(h["seconds"] for h in history), 2)
    row = {"features": options.run_name, "head": options.head,
           "fit_seconds": metrics["train_seconds"],
           **{f"{split}_{k}": v for split in ("val", "test") for k, v in metrics[split].items()
              if isinstance(v, (int, float))}}
    if not write:
        return row
    table.to_csv(run_dir / "test_predictions.csv", index=False)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    pd.DataFrame(history).to_csv(run_dir / "training_log.csv", index=False)
    config = {"kind": "finetune", "head": options.head, "features": [options.run_name],
              "labels": list(options.labels), "task": data.task, "model_file": "best_model.pt",
              "n": {s: int(data.mask(s).sum()) for s in ("train", "val", "test")},
              **run_config, "layer": loaded.model.resolve_layer(None),
              "d_model": loaded.config.d_model}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if options.plots:
        from .plots import plot_run

        plot_run(run_dir, data.task, data.target_names, history,
                 run=f"{options.run_name} / {options.head}", metrics=metrics["test"],
                 best_epoch=best_epoch)
    return row
