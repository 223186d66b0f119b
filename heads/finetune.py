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
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from hyena_embed.devices import resolve_device
from hyena_embed.distributed import Distributed
from hyena_embed.loading import LoadedModel
from hyena_embed.precision import resolve as resolve_precision
from hyena_embed.tokenizer import Tokenizer
from .checkpoint import FORMAT, atomic_save, load_model_state, model_state, resume_state
from .evaluation import FixedPredictions, check_board_split, evaluate, read_board, update_leaderboard
from .finetune_init import init_from_head, initial_statistics
from .errors import FinetuneError
from .finetune_options import FinetuneOptions
from .runs import finish_run, one_writer
from .freezing import apply_unfreeze_, describe_groups, parameter_groups, parse_unfreeze
from .seqdata import BatchMaker, load_sequences
from .seqmodel import PairPredictor, SequencePredictor
from .trainer import Diverged, Trainer, WarmupSchedule
from cache.safe_io import write_csv, write_json

__all__ = ["FORMAT", "FinetuneError", "FinetuneOptions", "finetune", "load_model_state"]


def finetune(loaded: LoadedModel, records, out: str, options: FinetuneOptions,
             overwrite: bool = False, progress: bool = True, say: Callable[[str], None] = print,
             on_epoch_end: Callable | None = None, pairs=None) -> dict:
    """Fine-tune end to end; returns the leaderboard row. `records` yields single sequences,
    or `pairs` (a list of VariantPair, records None) gives variant pairs. `on_epoch_end(epoch,
    model)` runs after each epoch's checkpoint is written (tests use it to interrupt a run).

    Under torchrun every rank runs this with the same arguments: each takes its share of every
    batch's rows, DDP averages the gradients, rank 0 alone writes and speaks. One run writes
    into OUT at a time; at the end the command is logged, the board gets its intervals, and
    the returned row carries the verdict sentence ("verdict")."""
    dist = Distributed(resolve_device(options.device).type)
    try:
        if not dist.is_main:
            progress, say = False, (lambda _message: None)
        with one_writer(out):  # under torchrun rank 0 holds it for all
            return _finetune(loaded, records, out, options, overwrite, progress, say,
                             on_epoch_end, pairs, dist)
    finally:
        dist.close()


@dataclass
class Run:
    """What the steps of one run share."""
    loaded: LoadedModel
    options: FinetuneOptions
    dist: Distributed
    device: torch.device
    tokenizer: Tokenizer
    say: Callable[[str], None]
    rows: object = None  # SequenceSet or PairSet
    prefix: object = None  # PrefixStates with --cache
    run_dir: Path = None
    config: dict = field(default_factory=dict)  # what a resumed run must match

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save(self, obj, path: Path):
        if self.dist.is_main:  # rank 0 alone writes
            atomic_save(obj, path)


@dataclass
class Progress:
    """The loop's own state, checkpointed every epoch."""
    history: list = field(default_factory=list)
    best: float = math.inf
    best_epoch: int = 0
    stale: int = 0
    start_epoch: int = 1


def _finetune(loaded, records, out, options, overwrite, progress, say, on_epoch_end, pairs,
              dist: Distributed) -> dict:
    run = _prepare(loaded, records, out, options, say, pairs, dist)
    try:
        return _run(run, out, overwrite, progress, on_epoch_end, pairs is not None)
    finally:
        if run.prefix is not None:
            run.prefix.close()


def _run(run: Run, out, overwrite, progress, on_epoch_end, is_pairs: bool) -> dict:
    dist, say, options, loaded = run.dist, run.say, run.options, run.loaded
    resume = _resume_or_start(run, overwrite)
    if resume is not None and resume.get("finished"):
        if dist.is_main and not _on_board(out, resume["result"]):
            # killed between the final checkpoint and the board row: write the row now
            say(f"{run.run_dir} is finished; adding its missing leaderboard row")
            return _record(out, resume["result"], run.rows.data)
        say(f"{run.run_dir} is already finished; nothing to do (pass --overwrite to train again)")
        return resume["result"]
    trainer, optimizer, schedule, generator = _build(run, is_pairs)
    state = _restore_or_initialise(run, trainer, optimizer, schedule, generator, resume)
    _train(run, trainer, optimizer, schedule, generator, state, progress, on_epoch_end)
    dist.barrier()  # rank 0 has written the best model
    result = _finish(trainer.model, trainer, run.run_dir, options, loaded, run.config,
                     state.history, state.best_epoch, write=dist.is_main)
    if dist.is_main:
        finished = torch.load(run.checkpoint_path, weights_only=True)
        finished.update(finished=True, result=result)
        atomic_save(finished, run.checkpoint_path)
        result = _record(out, result, run.rows.data)
    return result


def _record(out, result: dict, data) -> dict:
    """The run's row on OUT's board, the command logged, the verdict added to the result."""
    board = update_leaderboard(out, [result], data.task, data.split_fingerprint())
    return {**result, "verdict": finish_run(out, board, data.task)}


def _on_board(out, result: dict) -> bool:
    path = Path(out) / "leaderboard.csv"
    if not path.exists():
        return False
    board = read_board(path)
    return bool(((board["features"] == result["features"]) & (board["head"] == result["head"])).any())


def _prepare(loaded, records, out, options, say, pairs, dist) -> Run:
    """Options checked, rows read and split, the run's folder and settings."""
    device = resolve_device(options.device, dist.local_rank)
    if dist.active and device.type == "cuda" and device.index is None:  # --device cuda: one GPU a rank
        device = torch.device("cuda", dist.local_rank)
    options.validate(loaded.config.n_layer, device, pairs=pairs is not None)
    tokenizer = Tokenizer(loaded.config.l_max, options.special_tokens, options.truncation)
    run = Run(loaded, options, dist, device, tokenizer, say)
    run.rows = _load_rows(run, records, pairs)
    check_board_split(out, run.rows.data.split_fingerprint())  # refused before any write
    recorded = asdict(options)
    if options.cache is not None:  # also refused before any write
        from .prefix_cache import identity, open_prefix

        run.prefix = open_prefix(options.cache, loaded, tokenizer, options, run.rows, device, say)
        recorded["cache"] = identity(run.prefix)
        say(f"blocks 1..{recorded['cache']['layer']} read from {options.cache}; only the "
            "trainable blocks run")
    run.run_dir = Path(out) / options.run_name / options.head
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.config = {"options": recorded, "model": loaded.name,
                  "weights_sha256": loaded.weights_sha256, "random_init": loaded.random_init,
                  "tokenizer": tokenizer.describe(), "data_sha256": run.rows.fingerprint,
                  "precision": resolve_precision(options.precision, device).name}
    return run


def _load_rows(run: Run, records, pairs):
    options = run.options
    common = dict(task=options.task, labels_file=options.labels_file,
                  labels_id_col=options.labels_id_col, test_ids=options.test_ids,
                  split_col=options.split_col, seed=options.seed,
                  numeric_cols=options.numeric_cols, category_cols=options.category_cols)
    if pairs is not None:
        from .pairdata import load_pairs

        rows = load_pairs(pairs, run.tokenizer, options.labels, group_col=options.group_col, **common)
    else:
        rows = load_sequences(records, run.tokenizer, options.labels, packs=options.packs, **common)
    data, r, unit = rows.data, rows.report, "pairs" if pairs is not None else "rows"
    counts = "/".join(str(int(data.mask(s).sum())) for s in ("train", "val", "test"))
    run.say(f"{data.task}: {r['rows']} labelled {unit} ({r['dropped_missing_labels']} without a "
            f"finite label dropped; {r['truncated_rows']} truncated to l_max); train/val/test = "
            f"{counts} {unit}, {r['samples']} samples")
    if options.shuffle_reads and not any(len(p) > 1 for p in rows.parts):
        raise FinetuneError("--shuffle-reads permutes the reads of multi-read samples, and no "
                            "row here has more than one read")
    return rows


def _resume_or_start(run: Run, overwrite: bool) -> dict | None:
    """The checkpoint to resume from, or None; with --overwrite rank 0 removes the old run
    before any rank could read it."""
    if overwrite:
        if run.dist.is_main:
            resume_state(run.checkpoint_path, run.config, True, run.say)
        run.dist.barrier()
        return None
    return resume_state(run.checkpoint_path, run.config, False, run.say)


def _build(run: Run, is_pairs: bool):
    """Model, batches and trainer; the optimiser's groups (encoder at lr * mult), schedule and
    the augmentation generator."""
    torch.manual_seed(run.options.seed)
    options, rows, data = run.options, run.rows, run.rows.data
    regression = data.task == "regression"
    n_out = (1 if np.ndim(data.y) == 1 else data.y.shape[1]) if regression else \
        len(np.unique(data.y[data.mask("train")]))
    encoder = copy.deepcopy(run.loaded.model)
    extra = (rows.numeric.shape[1], [len(v) for v in rows.vocabularies])
    if is_pairs:
        from .pairdata import PairBatchMaker

        model = PairPredictor(encoder, options.head, n_out, options.features, options.site_window,
                              options.variant_embedding, options.dropout, *extra)
        batches = PairBatchMaker(rows, run.tokenizer, options.batch_size, options.variant_embedding,
                                 run.prefix)
    else:
        model = SequencePredictor(encoder, options.head, n_out, options.pooling, options.dropout, *extra)
        batches = BatchMaker(rows, run.tokenizer, options.batch_size, options.rc_augment,
                             options.shuffle_reads, run.prefix)
    apply_unfreeze_(model.encoder, parse_unfreeze(options.unfreeze, run.loaded.config.n_layer))
    model.gradient_checkpointing = options.grad_checkpoint
    model.to(run.device)
    precision = resolve_precision(options.precision, run.device)
    scaler = torch.amp.GradScaler(run.device.type, enabled=precision.needs_grad_scaler)
    trainer = Trainer(model, rows, batches, options, run.device, precision, scaler, run.dist)
    if regression:
        y_train = np.asarray(data.y[data.mask("train")], np.float64).reshape(int(data.mask("train").sum()), -1)
        model.target_mean.copy_(torch.as_tensor(y_train.mean(axis=0)))
        model.target_std.copy_(torch.as_tensor(y_train.std(axis=0) + 1e-12))
    groups = parameter_groups(model.head, model.encoder.backbone, options.lr,
                              options.encoder_lr_mult, options.weight_decay)
    trainable = {id(p) for g in groups for p in g.params}
    run.say(describe_groups(groups, sum(p.numel() for p in model.parameters() if id(p) not in trainable)))
    optimizer = torch.optim.AdamW([{"params": g.params, "lr": g.lr, "base_lr": g.lr,
                                    "weight_decay": g.weight_decay, "name": g.name} for g in groups])
    steps_per_epoch = math.ceil(math.ceil(int(data.mask("train").sum()) / options.batch_size)
                                / options.grad_accum)
    total_steps = steps_per_epoch * options.epochs
    schedule = WarmupSchedule(optimizer, total_steps, int(options.warmup * total_steps), options.schedule)
    return trainer, optimizer, schedule, torch.Generator().manual_seed(options.seed)


def _restore_or_initialise(run: Run, trainer, optimizer, schedule, generator, resume) -> Progress:
    """Everything back as it was after the last finished epoch, or the head's starting point."""
    model, options = trainer.model, run.options
    if resume is None:
        if options.init_head:
            classes = init_from_head(model, options.init_head, run.loaded, options, run.tokenizer)
            if classes is not None and list(classes) != list(trainer.classes):
                raise FinetuneError(f"--init-head was fitted on classes {list(classes)}, "
                                    f"this data has {list(trainer.classes)}")
            run.say(f"head initialised from {options.init_head}")
        else:
            initial_statistics(trainer, model, run.rows)
        return Progress()
    load_model_state(model, resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    schedule.load_state_dict(resume["schedule"])
    trainer.scaler.load_state_dict(resume["scaler"])
    torch.set_rng_state(resume["rng"]["torch"])
    generator.set_state(resume["rng"]["generator"])
    if run.device.type == "cuda" and resume["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(resume["rng"]["cuda"], run.device)
    state = Progress(resume["history"], resume["best"], resume["best_epoch"], resume["stale"],
                     resume["epoch"] + 1)
    run.say(f"resuming {run.run_dir} after epoch {resume['epoch']} (best validation loss "
            f"{state.best:.4f} at epoch {state.best_epoch})")
    return state


def _train(run: Run, trainer, optimizer, schedule, generator, state: Progress, progress: bool,
           on_epoch_end):
    """Epochs until the last or until early stopping; a checkpoint after each."""
    options = run.options
    val_rows = np.flatnonzero(run.rows.data.mask("val"))
    for epoch in range(state.start_epoch, options.epochs + 1):
        if state.stale >= options.patience:  # also when resuming a run that had already stopped
            break
        started = time.perf_counter()
        train_loss, val_loss, val_out = _epoch(run, trainer, optimizer, schedule, generator,
                                               epoch, progress, val_rows, state)
        val_pred, _ = trainer.predictions(val_out)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  **_val_metric(run.rows.data, val_rows, val_pred),
                  **{f"lr_{g['name'].split()[0]}": g["lr"] for g in optimizer.param_groups},
                  "seconds": round(time.perf_counter() - started, 2)}
        state.history.append(record)
        schedule.end_epoch(val_loss)
        if val_loss < state.best - 1e-6:
            state.best, state.best_epoch, state.stale = val_loss, epoch, 0
            run.save({"format": FORMAT, "spec": _model_spec(run, trainer), "epoch": epoch,
                      "state_dict": model_state(trainer.model)}, run.run_dir / "best_model.pt")
        else:
            state.stale += 1
        run.say(f"epoch {epoch:>3}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                            if k.startswith("val_") and k != "val_loss")
                + ("  *" if state.best_epoch == epoch else ""))
        run.save(_checkpoint(run, trainer, optimizer, schedule, generator, state, epoch),
                 run.checkpoint_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch, trainer.model)
    if state.stale >= options.patience:
        run.say(f"early stop: no better validation loss for {options.patience} epochs")


def _epoch(run, trainer, optimizer, schedule, generator, epoch, progress, val_rows, state):
    """One epoch's training and validation loss; a loss that is not finite stops the run."""
    try:
        train_loss = trainer.train_epoch(optimizer, schedule, generator, epoch, progress)
        val_out = trainer.outputs(val_rows)
        val_loss = trainer.loss_on(val_rows, val_out)
        if not math.isfinite(val_loss):
            raise Diverged(f"validation loss is {val_loss} after epoch {epoch}")
    except Diverged as exc:
        kept = (f"the last good checkpoint (epoch {state.history[-1]['epoch']}) is kept in "
                f"{run.checkpoint_path}" if state.history else
                "no epoch finished, so there is no checkpoint")
        raise FinetuneError(f"{exc}: the run diverged and stopped; {kept}. Try a lower --lr "
                            f"(now {run.options.lr:g}) or --encoder-lr-mult, a longer --warmup, "
                            "or --precision float32; then rerun with --overwrite") from None
    return train_loss, val_loss, val_out


def _model_spec(run: Run, trainer) -> dict:
    """What best_model.pt carries so that predict needs nothing else."""
    options, data = run.options, run.rows.data
    return {**trainer.model.spec, "task": data.task, "labels": list(options.labels),
            "classes": None if trainer.regression else [str(c) for c in trainer.classes],
            "tokenizer": run.tokenizer.describe(), "packs": options.packs,
            "numeric_cols": list(options.numeric_cols),
            "category_cols": list(options.category_cols), "vocabularies": run.rows.vocabularies,
            "source_model": run.loaded.name, "weights_sha256": run.loaded.weights_sha256,
            "random_init": run.loaded.random_init}


def _checkpoint(run: Run, trainer, optimizer, schedule, generator, state: Progress, epoch) -> dict:
    device = run.device
    return {"config": run.config, "model": model_state(trainer.model),
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "epoch": epoch, "best": state.best, "best_epoch": state.best_epoch,
            "stale": state.stale, "history": state.history}


def _val_metric(data, rows, pred) -> dict:
    y = data.y[rows]
    if data.task == "regression":
        return {"val_mae": float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(y, float))))}
    return {"val_accuracy": float(np.mean(pred == y))}


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
    write_csv(table, run_dir / "test_predictions.csv")
    write_json(run_dir / "metrics.json", metrics)
    write_csv(pd.DataFrame(history), run_dir / "training_log.csv")
    config = {"kind": "finetune", "head": options.head, "features": [options.run_name],
              "labels": list(options.labels), "task": data.task, "model_file": "best_model.pt",
              "n": {s: int(data.mask(s).sum()) for s in ("train", "val", "test")},
              **run_config, "layer": loaded.model.resolve_layer(None),
              "d_model": loaded.config.d_model}
    write_json(run_dir / "config.json", config, default=str)
    if options.plots:
        from .plots import plot_run

        plot_run(run_dir, data.task, data.target_names, history,
                 run=f"{options.run_name} / {options.head}", metrics=metrics["test"],
                 best_epoch=best_epoch)
    return row
