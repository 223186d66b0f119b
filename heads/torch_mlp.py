"""Torch MLP heads in the scikit-learn estimator shape (linear, mlp2, mlp3, mlp2_ln)."""
from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from hyena_embed.devices import resolve_device

from .sparse_rows import (SparseFirstLayer, SparseRows, contiguous_parameters, is_sparse_enough,
                          transposed_layout)

ARCHS = ("linear", "mlp2", "mlp3", "mlp2_ln")
MIN_IMPROVEMENT = 1e-3  # a validation loss this much lower (relative) resets early stopping's patience
MAX_WIDTH = 512  # hidden layers never wider: a 5,460-d k-mer input must not build a 45 M net


def build_mlp(arch: str, d_in: int, d_out: int, dropout: float = 0.1) -> nn.Module:
    """linear: d -> out; mlp2: d -> d/2 -> out; mlp3: d -> d -> d/2 -> out; mlp2_ln: LayerNorm +
    mlp2; hidden widths capped at MAX_WIDTH (d -> 512 -> 256 -> out), and at half of it for inputs
    wider than 1,024 (d -> 256 -> 128 -> out)."""
    # wide inputs (k-mer counts: 5,460 columns for k <= 6) get a narrower first layer: the
    # first matrix is most of the cost, and 256 units are plenty for a baseline
    width = min(d_in, MAX_WIDTH if d_in <= 2 * MAX_WIDTH else MAX_WIDTH // 2)
    half = max(1, width // 2)
    if arch == "linear":
        return nn.Linear(d_in, d_out)
    if arch in ("mlp2", "mlp2_ln"):
        layers = [nn.Linear(d_in, half), nn.ReLU(), nn.Dropout(dropout), nn.Linear(half, d_out)]
        return nn.Sequential(*([nn.LayerNorm(d_in)] if arch == "mlp2_ln" else []), *layers)
    if arch == "mlp3":
        return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(width, half), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(half, d_out))
    raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")


def _rng_state(device: torch.device):
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(device: torch.device, state):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _trained_form(model: nn.Module, x, xv, shared: dict | None):
    """(the network as trained, its training rows, its validation rows). A LayerNorm on the
    inputs (mlp2_ln) normalises each row by the row's own mean and spread, which no parameter
    changes: the rows are normalised once here, and each step runs the norm's affine part and
    the next Linear as one product (`_NormLinear`) with the same parameters, function and
    gradients. On 5,460 k-mer columns a step of the norm and its gradient cost twice mlp2's.
    Sparse rows (SparseRows) go through the first Linear (after the norm, where there is one)
    as a SparseFirstLayer. The network saved and used for predictions is the unchanged one."""
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    norm = layers[0] if len(layers) > 1 and isinstance(layers[0], nn.LayerNorm) else None
    linear = layers[0 if norm is None else 1]
    sparse = isinstance(x, SparseRows)
    folded = (norm is not None and isinstance(linear, nn.Linear) and norm.weight is not None
              and norm.bias is not None and linear.bias is not None)
    if not (sparse or folded):
        return model, x, xv
    if norm is not None:
        x, xv = _normalised_once(norm, x, xv, shared)
    if sparse:
        transposed_layout(linear)
        first = SparseFirstLayer(linear, norm)
    else:
        first = _NormLinear(norm, linear)
    rest = layers[1 if norm is None else 2:]
    return (nn.Sequential(first, *rest) if isinstance(model, nn.Sequential) else first), x, xv


def _normalised_once(norm: nn.LayerNorm, x, xv, shared: dict | None):
    """x and xv as `norm` leaves them before its affine part, once per shared encoding."""
    key = ("layer_norm", norm.normalized_shape, norm.eps, id(x))
    normed = (shared or {}).get(key)
    if normed is None:
        if isinstance(x, SparseRows):
            normed = tuple(rows.normalised(norm.eps) for rows in (x, xv))
        else:
            with torch.no_grad():
                normed = tuple(nn.functional.layer_norm(t, norm.normalized_shape, eps=norm.eps)
                               for t in (x, xv))
        if shared is not None:
            shared[key] = normed
    return normed


class _NormLinear(nn.Module):
    """linear(norm.weight * x + norm.bias) on rows x that the norm has normalised already,
    computed as x @ (W diag(gamma))' + (W beta + b): no (batch x inputs) elementwise work."""

    def __init__(self, norm: nn.LayerNorm, linear: nn.Linear):
        super().__init__()
        self.norm, self.linear = norm, linear

    def forward(self, x):
        return _norm_linear.apply(x, self.norm.weight, self.norm.bias, self.linear.weight,
                                  self.linear.bias)


class _norm_linear(torch.autograd.Function):
    """z = x (W diag(g))' + W beta + b. With M = dz' x and s = the column sums of dz, the
    gradients are dW = M diag(g) + s beta', dg = column sums of W * M, dbeta = W' s, db = s:
    one (outputs x batch x inputs) product, as for a plain Linear's weight."""

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias):
        ctx.save_for_backward(x, gamma, beta, weight)
        return torch.addmm(torch.addmv(bias, weight, beta), x, (weight * gamma).t())

    @staticmethod
    def backward(ctx, dz):
        x, gamma, beta, weight = ctx.saved_tensors
        s = dz.sum(dim=0)
        M = dz.t() @ x
        dx = dz @ (weight * gamma) if ctx.needs_input_grad[0] else None
        return (dx, (weight * M).sum(dim=0), weight.t() @ s,
                torch.addr(M * gamma, s, beta), s)


def _batched(model: nn.Module, x: torch.Tensor, size: int = 1024) -> torch.Tensor:
    """The model over x in slices (bounded activation memory for wide or convolutional nets)."""
    return torch.cat([model(x[i: i + size]) for i in range(0, len(x), size)]) if len(x) else model(x)


class TorchMLPHead(BaseEstimator):
    """An MLP trained with AdamW, ReduceLROnPlateau and early stopping on validation loss.

    Regression targets (one or several) are standardised and mapped back; classification uses
    cross-entropy. The weights of the best validation epoch are kept. Without a validation set,
    10% of the training rows are held out for it.
    """

    # successive halving's first round (heads.tuning.round_one_epochs): epochs at the grid's
    # largest step size, and whether a smaller step gets as many more as make the same
    # learning rate x steps (lr 1e-3 beside 3e-3: 6 epochs against 2)
    ROUND_ONE_EPOCHS = 2
    ROUND_ONE_EQUAL_STEPS = True

    def __init__(self, arch="mlp2", task="regression", loss="smoothl1", lr=1e-3,
                 weight_decay=0.01, epochs=100, batch_size="auto", patience=10, dropout=0.1,
                 device="auto", seed=0, scale="standard"):
        self.scale = scale
        self.arch = arch
        self.task = task
        self.loss = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.dropout = dropout
        self.device = device
        self.seed = seed

    def _device(self):
        return resolve_device(self.device)

    def _criterion(self):
        if self.task == "classification":
            return nn.CrossEntropyLoss()
        if self.loss == "smoothl1":
            return nn.SmoothL1Loss(beta=1.0)
        if self.loss == "mse":
            return nn.MSELoss()
        raise ValueError(f"loss must be 'smoothl1' or 'mse', got {self.loss!r}")

    def _targets(self, y):
        if self.task == "classification":
            return torch.as_tensor(np.searchsorted(self.classes_, y), dtype=torch.long)
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return torch.as_tensor((y - self.y_mean_) / self.y_std_, dtype=torch.float32)

    # ---- what a subclass (heads.cnn.CNNHead) changes: inputs and network ---------------------
    def _prepare(self, X):
        """Learn the input encoding from the training rows: standardisation, or for scale
        "raw" centring and one common divisor (the features' root-mean-square spread). Raw keeps
        the features' relative sizes (rare k-mers stay small), and the common divisor gives the
        optimiser unit-scale inputs: unscaled k-mer frequencies (~0.01) left a linear head at
        r2 0.34 where ridge on the same inputs reached 0.85."""
        X = np.asarray(X, dtype=np.float32)
        self.x_mean_ = X.mean(axis=0)
        spread = X.std(axis=0)
        if getattr(self, "scale", "standard") == "standard":
            self.x_std_ = spread + 1e-6
        else:
            self.x_std_ = np.full(X.shape[1], float(np.sqrt((spread ** 2).mean())) + 1e-6, np.float32)

    def _encode(self, X) -> torch.Tensor:
        return torch.as_tensor((np.asarray(X, np.float32) - self.x_mean_) / self.x_std_)

    def _network(self, n_out: int) -> nn.Module:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}")
        return build_mlp(self.arch, len(self.x_mean_), n_out, self.dropout)

    # ---- training ------------------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None):
        self.begin(X, y, X_val, y_val)
        self.advance(self.epochs)
        return self.end()

    # fit in three steps, so that a tuning grid can run every candidate a few epochs and only
    # the best continue (successive halving, heads.tuning.select)
    # what `_prepare` and `_encode` depend on besides the rows: candidates of one grid that
    # agree on these share one encoding (heads.tuning.halving passes the `shared` dict)
    ENCODING_PARAMS = ("scale", "seed", "device")

    def begin(self, X, y, X_val=None, y_val=None, shared: dict | None = None):
        """Everything before the first epoch: encodings, network, optimiser. `shared`: a dict
        that candidates fitted on the same rows pass along, so that the encoded inputs are
        made once, not once per candidate (6 x 300 MB for 14,000 x 5,460 k-mer rows)."""
        X = np.asarray(X)
        y = np.asarray(y)
        if X_val is None:
            rng = np.random.default_rng(self.seed)
            order = rng.permutation(len(X))
            n_val = max(1, len(X) // 10)
            X, X_val, y, y_val = X[order[n_val:]], X[order[:n_val]], y[order[n_val:]], y[order[:n_val]]
        torch.manual_seed(self.seed)
        device = self._device()
        x, xv = self._inputs(X, X_val, device, shared)
        if self.task == "classification":
            self.classes_ = np.unique(y)
            n_out = len(self.classes_)
        else:
            y2 = y.astype(np.float64).reshape(len(y), -1)
            self.y_mean_, self.y_std_ = y2.mean(axis=0), y2.std(axis=0) + 1e-12
            n_out = y2.shape[1]
        self.n_outputs_ = n_out
        model = self._network(n_out).to(device)
        trained, x, xv = _trained_form(model, x, xv, shared)
        # fused: one kernel over all parameters (a 5,460 x 256 first layer's step costed 2.8 ms
        # of a 21 ms batch by the per-tensor loop, 1.0 ms fused)
        # sparse rows: a column-major first weight (sparse_rows.transposed_layout), which the
        # fused kernel would copy to row-major and back every step (3.8 ms); foreach keeps it
        sparse = isinstance(x, SparseRows)
        optimiser = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                      fused=device.type in ("cpu", "cuda") and not sparse,
                                      foreach=True if sparse else None)
        # small sets need enough steps per epoch; large ones need big batches for speed
        n = len(X)
        batch_size = self.batch_size if self.batch_size != "auto" else int(np.clip(n // 16, 32, 512))
        self._run = {
            "model": model, "trained": trained, "device": device, "optimiser": optimiser,
            "batch_size": batch_size,
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimiser, factor=0.5, patience=max(1, self.patience // 3)),
            "generator": torch.Generator(device="cpu").manual_seed(self.seed),
            "x": x, "xv": xv,
            "y": self._targets(y).to(device), "yv": self._targets(y_val).to(device),
            "criterion": self._criterion(), "best": float("inf"), "best_state": None,
            "stale": 0, "epoch": 0, "stopped": False, "rng": _rng_state(device)}
        self.history_ = []
        return self

    def _inputs(self, X, X_val, device, shared):
        """(encoded training rows, encoded validation rows) on the device, and the attributes
        `_prepare` learns, from `shared` when a candidate with the same ENCODING_PARAMS made
        them already."""
        key = tuple(str(getattr(self, name, None)) for name in self.ENCODING_PARAMS)
        if shared is not None and key in shared:
            learned, x, xv = shared[key]
            self.__dict__.update(learned)
            return x, xv
        before = dict(self.__dict__)
        self._prepare(X)
        learned = {k: v for k, v in self.__dict__.items() if k not in before or before[k] is not v}
        if self._trains_sparse(X, device):
            x, xv = (SparseRows.encode(rows, self.x_mean_, self.x_std_) for rows in (X, X_val))
        else:
            x, xv = self._encode(X).to(device), self._encode(X_val).to(device)
        if shared is not None:
            shared[key] = (learned, x, xv)
        return x, xv

    def _trains_sparse(self, X, device) -> bool:
        """Sparse rows on CPU for the plain MLPs' affine encoding (not a subclass's own, as the
        CNN's); CUDA's dense products are fast enough, and dense inputs gain nothing. Not for
        `linear`: its one-output product is cheap, and building sparse batches doubled its
        epoch (0.04 -> 0.09 s on 14,339 x 5,460 k-mer rows; mlp3 0.73 -> 0.49 s). Only where
        torch has MKL (x86 builds), whose sparse kernels these timings are."""
        plain = all(getattr(type(self), name) is getattr(TorchMLPHead, name)
                    for name in ("_prepare", "_encode", "_network"))
        return (plain and self.arch != "linear" and device.type == "cpu"
                and torch.backends.mkl.is_available() and is_sparse_enough(np.asarray(X)))

    @property
    def best_val_loss_(self) -> float:
        return self._run["best"]

    def advance(self, epochs: int) -> bool:
        """Up to `epochs` more epochs (never past self.epochs); True once early stopping or
        the epoch limit has ended training."""
        run = self._run
        # dropout draws from torch's global generator: each head keeps its own stream, so
        # candidates trained in turns (halving) train exactly as each would alone
        with torch.random.fork_rng(devices=[run["device"]] if run["device"].type == "cuda" else []):
            _set_rng_state(run["device"], run["rng"])
            stopped = self._epochs(epochs)
            run["rng"] = _rng_state(run["device"])
        return stopped

    def _epochs(self, epochs: int) -> bool:
        run, model = self._run, self._run["trained"]
        for _ in range(epochs):
            if run["stopped"] or run["epoch"] >= self.epochs:
                run["stopped"] = True
                break
            run["epoch"] += 1
            model.train()
            total, xt, yt = 0.0, run["x"], run["y"]
            sparse = isinstance(xt, SparseRows)
            # batches gathered into one buffer: a fresh 11 MB tensor per batch of 512 k-mer
            # rows cost a linear head 60% of its epoch (page faults), the buffer a fifth of that
            buffer = None if sparse else torch.empty(
                (min(run["batch_size"], len(xt)), *xt.shape[1:]), dtype=xt.dtype, device=xt.device)
            for idx in torch.randperm(len(xt), generator=run["generator"]).split(run["batch_size"]):
                idx = idx.to(run["device"])
                run["optimiser"].zero_grad(set_to_none=True)
                batch = xt.take(idx) if sparse else torch.index_select(xt, 0, idx, out=buffer[: len(idx)])
                loss = run["criterion"](model(batch), yt[idx])
                loss.backward()
                run["optimiser"].step()
                total += loss.item() * len(idx)
            model.eval()
            with torch.no_grad():
                val_loss = run["criterion"](_batched(model, run["xv"]), run["yv"]).item()
            run["scheduler"].step(val_loss)
            self.history_.append({"epoch": run["epoch"], "train_loss": total / len(xt),
                                  "val_loss": val_loss, "lr": run["optimiser"].param_groups[0]["lr"]})
            # the best epoch's weights are kept whatever the gain, but only a gain of at least
            # MIN_IMPROVEMENT (relative, as the learning-rate schedule's own threshold) resets
            # the patience: at halved and quartered rates the loss creeps down by 1e-5 for
            # dozens of epochs (wide k-mer MLPs ran 50 epochs where 25 served)
            significant = val_loss < run["best"] * (1 - MIN_IMPROVEMENT)
            if val_loss < run["best"] - 1e-6:
                run.update(best=val_loss, best_state=copy.deepcopy(run["model"].state_dict()))
                self.best_epoch_ = run["epoch"]
            run["stale"] = 0 if significant else run["stale"] + 1
            run["stopped"] = run["stale"] >= self.patience
        run["stopped"] = run["stopped"] or run["epoch"] >= self.epochs
        return run["stopped"]

    def end(self):
        """Keep the weights of the best validation epoch; drop the training state."""
        run = self._run
        run["model"].load_state_dict(run["best_state"])
        contiguous_parameters(run["model"])  # as saved and predicted with (sparse training changes it)
        self.model_ = run["model"].cpu().eval()
        del self._run
        return self

    def _forward(self, X) -> np.ndarray:
        with torch.no_grad():
            return _batched(self.model_, self._encode(X)).numpy()

    def predict(self, X):
        out = self._forward(X)
        if self.task == "classification":
            return self.classes_[out.argmax(axis=1)]
        out = out * self.y_std_ + self.y_mean_
        return out[:, 0] if out.shape[1] == 1 else out

    def predict_proba(self, X):
        if self.task != "classification":
            raise AttributeError("predict_proba is for classification heads")
        return torch.softmax(torch.as_tensor(self._forward(X)), dim=1).numpy()
