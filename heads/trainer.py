"""One epoch of fine-tuning and what it needs: the learning-rate schedule, the precision, and
the Trainer that runs batches forward and backward (its share of each batch under torchrun,
with DDP averaging the gradients) and scores rows. `heads.finetune` runs the whole loop.
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from hyena_embed.distributed import Distributed
from hyena_embed.batching import token_budget_batches
from hyena_embed.precision import Precision, resolve as resolve_precision

if TYPE_CHECKING:
    from .pairdata import PairBatchMaker, PairSet
    from .seqdata import BatchMaker, SequenceSet


class WarmupSchedule:
    """Linear warmup, then cosine decay to zero or halving on a validation plateau.

    Sets each group's lr to its base lr times one factor; its state is a small dict, so it
    checkpoints and resumes exactly.
    """

    def __init__(self, optimizer, total_steps: int, warmup_steps: int, kind: str,
                 plateau_patience: int = 2):
        self.optimizer = optimizer
        self.total, self.warmup, self.kind = total_steps, warmup_steps, kind
        self.plateau_patience = plateau_patience
        self.state = {"step": 0, "plateau_scale": 1.0, "plateau_best": math.inf, "plateau_stale": 0}
        self._apply()

    def factor(self) -> float:
        step = self.state["step"]
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "plateau":
            return self.state["plateau_scale"]
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.factor()

    def step(self):
        self.state["step"] += 1
        self._apply()

    def end_epoch(self, val_loss: float):
        if self.kind != "plateau":
            return
        if val_loss < self.state["plateau_best"] - 1e-6:
            self.state.update(plateau_best=val_loss, plateau_stale=0)
        else:
            self.state["plateau_stale"] += 1
            if self.state["plateau_stale"] >= self.plateau_patience:
                self.state.update(plateau_scale=self.state["plateau_scale"] * 0.5, plateau_stale=0)
        self._apply()

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)
        self._apply()


class Trainer:
    """Holds the pieces one epoch needs; `finetune` below is the whole run."""

    def __init__(self, model, rows: "SequenceSet | PairSet", batches: "BatchMaker | PairBatchMaker",
                 options, device,
                 precision: Precision | None, scaler, dist: Distributed | None = None):
        self.model, self.rows, self.batches, self.options = model, rows, batches, options
        self.device, self.scaler = device, scaler
        self.precision = precision or resolve_precision("float32", device)
        self.dist = dist or Distributed(device.type)
        # under torchrun the training forward goes through DDP (gradients averaged over ranks)
        self.train_model = model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.regression = rows.data.task == "regression"
        if self.regression:
            self.criterion = nn.SmoothL1Loss() if options.loss == "smoothl1" else nn.MSELoss()
        else:
            self.criterion = nn.CrossEntropyLoss()
        # summed, then divided by the whole batch's size: each rank's share of a batch adds
        # up to the single-process mean, whatever the number of ranks
        self.criterion_sum = copy.deepcopy(self.criterion)
        self.criterion_sum.reduction = "sum"
        self.classes = np.unique(rows.data.y[rows.data.mask("train")]) if not self.regression else None
        self.eval_batch_tokens = options.eval_batch_tokens or (262_144 if device.type == "cuda" else 16_384)

    def autocast(self):
        return self.precision.context()

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        y = self.rows.data.y[rows]
        if self.regression:
            y = torch.as_tensor(np.asarray(y, np.float32).reshape(len(rows), -1), device=self.device)
            return (y - self.model.target_mean) / self.model.target_std
        return torch.as_tensor(np.searchsorted(self.classes, y), device=self.device)

    def inputs(self, batch: np.ndarray, generator=None) -> dict:
        return {k: v.to(self.device) for k, v in self.batches.inputs(batch, generator).items()}

    def forward(self, batch: np.ndarray, generator=None) -> torch.Tensor:
        inputs = self.inputs(batch, generator)
        with self.autocast():
            out = self.model(**inputs)
        return out.float()

    def train_epoch(self, optimizer, schedule, generator, epoch: int, progress: bool) -> float:
        from tqdm.auto import tqdm

        self.model.train()
        # every rank plans the same batches and draws the same augmentations (one generator
        # state), then runs its own share of each batch's rows
        batches = self.batches.epoch(np.flatnonzero(self.rows.data.mask("train")), generator)
        accum = self.options.grad_accum
        total, count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
        for step, batch in enumerate(bar, 1):
            if step < len(batches):  # finetune --cache from disk: the next batch's states
                self.batches.upcoming(batches[step])
            syncs = step % accum == 0 or step == len(batches)
            inputs = self.batches.inputs(batch, generator)
            sync = nullcontext() if syncs or not self.dist.active else self.train_model.no_sync()
            with sync:
                loss, loss_sum, size = self.share_of_loss(batch, inputs)
                self.scaler.scale(loss / accum).backward()
            batch_loss = self.dist.sum(loss_sum.item(), self.device) / size
            if not math.isfinite(batch_loss):
                raise Diverged(f"training loss is {batch_loss} at epoch {epoch}, batch {step}")
            total += batch_loss * len(batch)
            count += len(batch)
            if syncs:
                self.scaler.unscale_(optimizer)
                if self.options.clip_grad > 0:
                    nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                             self.options.clip_grad)
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(1, count)

    def share_of_loss(self, batch: np.ndarray, inputs: dict):
        """This rank's part of a batch's loss: (what to backpropagate, its loss summed over its
        rows, the batch's size in loss terms). Averaged over ranks, as DDP averages gradients,
        the gradients are those of the whole batch's mean loss in one process."""
        mine = self.dist.my_part(len(batch))
        weight = 1.0
        if len(mine) == 0:  # a last batch smaller than the world: take part, add nothing
            mine, weight = np.array([0]), 0.0
        inputs = {k: v.to(self.device) for k, v in shard_inputs(inputs, mine, len(batch)).items()}
        targets = self.targets(batch[mine])
        size = len(batch) * (targets[0].numel() if self.regression else 1)
        with self.autocast():
            out = self.train_model(**inputs).float()
        loss_sum = self.criterion_sum(out, targets) * weight
        return loss_sum * (self.dist.world / size), loss_sum, size

    @torch.no_grad()
    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """Raw model outputs for the given rows, in their order (token-budget batches); under
        torchrun each rank computes its share and every rank gets the whole."""
        self.model.eval()
        rows = rows[self.dist.my_part(len(rows))]
        lengths = self.rows.lengths[rows]
        out = np.zeros((len(rows), self.model.spec["n_out"]), np.float32)
        for block in self.scoring_blocks(rows):
            for batch in token_budget_batches(lengths[block].tolist(), self.eval_batch_tokens):
                out[block[batch]] = self.forward(rows[block[batch]]).cpu().numpy()
        return self.dist.gather_rows(out)

    def scoring_blocks(self, rows: np.ndarray) -> list[np.ndarray]:
        """Positions of `rows` in blocks scored one after the other (PrefixStates.scoring_blocks:
        storage-chunk order when the states are read from disk)."""
        states = getattr(self.batches, "states", None)
        return states.scoring_blocks(rows) if states is not None else [np.arange(len(rows))]

    def loss_on(self, rows: np.ndarray, outputs: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.criterion(torch.as_tensor(outputs, device=self.device),
                                        self.targets(rows)).item())

    def predictions(self, outputs: np.ndarray):
        """(predictions, probabilities or None) in the labels' own terms."""
        if self.regression:
            values = self.model.to_values(torch.as_tensor(outputs, device=self.device)).cpu().numpy()
            return (values[:, 0] if values.shape[1] == 1 else values), None
        proba = torch.softmax(torch.as_tensor(outputs), dim=1).numpy()
        return self.classes[proba.argmax(axis=1)], proba


class Diverged(Exception):
    """A loss that is not finite; `finetune` turns it into a FinetuneError with advice."""


def shard_inputs(inputs: dict, mine: np.ndarray, n: int) -> dict:
    """This rank's rows of a batch of n: tensors with n rows are cut to `mine`; the 2n-row ones
    of variant pairs (refs, then alts) keep `mine` of each half."""
    if len(mine) == n:
        return inputs
    index = torch.as_tensor(mine)
    out = {}
    for key, value in inputs.items():
        if value.shape[0] == 2 * n:
            out[key] = torch.cat([value[index], value[n + index]])
        else:
            out[key] = value[index]
    return out
