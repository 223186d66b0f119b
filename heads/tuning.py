"""Hyperparameters chosen on the validation split, the same way for every head and baseline.

Each head has a small grid (`GRIDS`); every candidate is fitted on the training split and scored
on validation with one loss for all heads (regression: mean squared error over targets, each
target divided by its training variance; classification: log-loss), and the best is kept. Test
data never takes part. Ridge scores its whole alpha path from one tridiagonalisation and picks
alpha per target. `--head-param head.name=value` pins a value (a one-point grid).
"""
from __future__ import annotations

import itertools
import json
from typing import Callable

import numpy as np

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 7, 31))
GRIDS: dict[str, dict[str, list]] = {
    # torch MLPs: early stopping picks the epoch; the grid picks the regularisation and step size
    "linear": {"weight_decay": [1e-4, 1e-2, 1e-1], "lr": [1e-3, 3e-3]},
    "mlp2": {"weight_decay": [1e-4, 1e-2, 1e-1], "lr": [1e-3, 3e-3]},
    "mlp3": {"weight_decay": [1e-4, 1e-2, 1e-1], "lr": [1e-3, 3e-3]},
    "mlp2_ln": {"weight_decay": [1e-4, 1e-2, 1e-1], "lr": [1e-3, 3e-3]},
    "ridge": {"alpha": list(RIDGE_ALPHAS)},
    # elastic net: fractions of the data's alpha_max (the smallest alpha that zeroes every
    # coefficient), as glmnet and ElasticNetCV lay out their paths; a pinned alpha is absolute
    # (down to 1e-3: below, coordinate descent on 5,460 collinear k-mer columns takes minutes)
    "elasticnet": {"alpha": [0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3], "l1_ratio": [0.5]},
    "svr": {"C": [0.1, 1.0, 10.0, 100.0]},
    "svc": {"C": [0.1, 1.0, 10.0, 100.0]},
    "logistic": {"C": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]},
    "knn": {"n_neighbors": [5, 10, 20, 50]},
    "rf": {"min_samples_leaf": [1, 5, 20]},
    "lightgbm": {"num_leaves": [7, 15, 31, 63]},
    "cnn": {"lr": [1e-3, 3e-3]},  # each CNN fit costs minutes on CPU: the step size only
}


GRID_KEYS = {name for grid in GRIDS.values() for name in grid} | {"scale"}  # tuned parameters


def parse_head_params(items) -> dict[str, dict[str, list]]:
    """['ridge.alpha=10', 'mlp3.lr=1e-3,3e-4'] -> {'ridge': {'alpha': [10.0]}, 'mlp3': ...}."""
    pinned: dict[str, dict[str, list]] = {}
    for item in items or ():
        try:
            key, text = item.split("=", 1)
            head, name = key.split(".", 1)
        except ValueError:
            raise ValueError(f"--head-param takes HEAD.PARAM=VALUE[,VALUE...] (e.g. ridge.alpha=10), "
                             f"got {item!r}") from None
        if head not in GRIDS or name not in GRIDS[head]:
            known = ", ".join(f"{h}.{p}" for h, g in GRIDS.items() for p in g)
            raise ValueError(f"--head-param {key}: not a tuned parameter; choose from {known}")
        values = [_value(v) for v in text.split(",")]
        low, high, whole = RANGES[name]
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
               or not low <= v <= high or (whole and v != int(v))]
        if bad:
            kind = "whole numbers" if whole else "numbers"
            raise ValueError(f"--head-param {key}={text}: {head}'s {name} takes {kind} from "
                             f"{low:g} to {high:g}")
        pinned.setdefault(head, {})[name] = [int(v) if whole else v for v in values]
    return pinned


# the values each tuned parameter can take: (low, high, whole numbers only)
RANGES = {"weight_decay": (0.0, 10.0, False), "lr": (1e-7, 1.0, False),
          "alpha": (0.0, 1e12, False), "l1_ratio": (0.0, 1.0, False), "C": (1e-9, 1e9, False),
          "n_neighbors": (1, 100_000, True), "min_samples_leaf": (1, 1_000_000, True),
          "num_leaves": (2, 131_072, True)}


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def candidates(head: str, pinned: dict | None = None) -> list[dict]:
    grid = {**GRIDS.get(head, {}), **(pinned or {}).get(head, {})}
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))] or [{}]


def validation_loss(head, X_val, y_val, task: str, y_train) -> float:
    """One loss for every head (lower is better): scaled MSE, or log-loss for classes."""
    if task == "regression":
        pred = np.asarray(head.predict(X_val), float).reshape(len(X_val), -1)
        y = np.asarray(y_val, float).reshape(len(y_val), -1)
        scale = np.asarray(y_train, float).reshape(len(y_train), -1).var(axis=0) + 1e-12
        return float((((pred - y) ** 2).mean(axis=0) / scale).mean())
    from sklearn.metrics import log_loss

    proba = np.clip(head.predict_proba(X_val), 1e-7, 1)
    return float(log_loss(np.asarray(y_val).astype(str), proba / proba.sum(1, keepdims=True),
                          labels=np.asarray(head.classes_).astype(str)))


def select(make: Callable[[dict], object], grid: list[dict], X, y, X_val, y_val, task: str,
           full_grid: bool = False):
    """Fit every candidate on train, keep the one with the lowest validation loss.
    Returns (best fitted head, its params, [{params, val_loss}] for every candidate).
    Heads trained by epochs (torch) go through successive halving (`halving`), forests are
    compared small and the best grown (`grown`), elastic net walks its alphas from the
    largest down, warm-started (`walked`), and k-NN searches the validation rows once
    (`searched`). `full_grid`: every torch candidate trains to early stopping (no halving)."""
    first = make(grid[0])
    if len(grid) > 1 and hasattr(first, "advance"):
        return halving(make, grid, X, y, X_val, y_val, task, keep_all=full_grid)
    if getattr(first, "grows", False) and len(grid) > 1:
        return grown(make, grid, X, y, X_val, y_val, task)
    if getattr(first, "on_path", False):
        return walked(make, first.warm_order(grid), X, y, X_val, y_val, task)
    if getattr(first, "searches", False) and len(grid) > 1 and _differ_only_in(grid, "n_neighbors"):
        return searched(make, grid, X, y, X_val, y_val, task)
    shared: dict = {}  # what candidates of this grid compute alike
    fitted = (_sharing(make(params), shared).fit(X, y, X_val, y_val)  # one at a time
              for params in grid)
    return _lowest((head, params, validation_loss(head, X_val, y_val, task, y))
                   for head, params in zip(fitted, grid))


def _sharing(head, shared: dict):
    """`head`, handed the grid's dict of work its candidates compute alike when it takes one
    (`shares_work`: a kernel or Gram matrix, LightGBM's binned rows)."""
    if getattr(head, "shares_work", False):
        head.shared_ = shared
    return head


def _lowest(scored):
    """(head, params, table) of the lowest validation loss among (head, params, loss); the
    first of equals wins, and the table lists every candidate's params and loss."""
    best, best_params, best_loss, table = None, None, np.inf, []
    for head, params, loss in scored:
        table.append({**params, "val_loss": loss})
        if loss < best_loss or best is None:
            best, best_params, best_loss = head, params, loss
    return best, best_params, table


def _differ_only_in(grid: list[dict], name: str) -> bool:
    rest = {json.dumps({k: v for k, v in p.items() if k != name}, sort_keys=True, default=str)
            for p in grid}
    return len(rest) == 1


def searched(make, grid, X, y, X_val, y_val, task: str):
    """k-NN candidates that differ in k only: the validation rows' neighbours are searched
    once, for the largest k, and each candidate scores from its first k (on 5,460 k-mer
    columns each search of 1,600 rows among 14,000 took ~2.5 s on 2 cores)."""
    heads = [make(params).fit(X, y, X_val, y_val) for params in grid]
    k_max = max(head.pipeline_[-1].n_neighbors for head in heads)
    found = heads[0].neighbours(X_val, min(k_max, len(X)))

    def loss(head):
        if head.pipeline_[-1].n_neighbors > found[1].shape[1]:  # more than the training rows
            return validation_loss(head, X_val, y_val, task, y)  # scikit-learn says what's wrong
        with head.reading(found):
            return validation_loss(head, X_val, y_val, task, y)

    return _lowest((head, params, loss(head)) for head, params in zip(heads, grid))


def walked(make, grid, X, y, X_val, y_val, task: str):
    """A regularisation path in `warm_order` (per l1_ratio, alpha from the largest down): each
    fit starts from the previous one's coefficients, and a path stops once its validation loss
    rose PATH_PATIENCE times in a row (smaller alphas would only cost more)."""
    best, best_params, best_loss, table, previous = None, None, np.inf, [], None
    path, rises, last, shared = None, 0, np.inf, {}
    for params in grid:
        rest = {k: v for k, v in params.items() if k != "alpha"}
        if rest != path:  # another path (another l1_ratio): its own count
            path, rises, last = rest, 0, np.inf
        if rises >= PATH_PATIENCE:
            table.append({**params, "val_loss": None, "skipped": "validation loss rose twice"})
            continue
        head = make(params)
        if previous is not None:
            head.warm_from(previous)
        # one Gram matrix for the whole path (elastic net on rows > columns)
        head = previous = _sharing(head, shared).fit(X, y, X_val, y_val)
        loss = validation_loss(head, X_val, y_val, task, y)
        table.append({**params, "val_loss": loss})
        if loss < best_loss or best is None:
            best, best_params, best_loss = head, params, loss
        rises, last = (rises + 1 if loss > last else 0), loss
    return best, best_params, table


def grown(make, grid, X, y, X_val, y_val, task: str):
    """Forests: every candidate grown small (`probe`), the best by validation loss grown on to
    its full size (`grow`): half the trees of fitting every candidate whole."""
    table, best, best_row, best_loss = [], None, None, np.inf
    for params in grid:
        head = make(params)
        full = head.estimator.n_estimators
        head.probe().fit(X, y, X_val, y_val)
        loss = validation_loss(head, X_val, y_val, task, y)
        table.append({**params, "val_loss": None, "probe_trees": head.estimator.n_estimators,
                      "probe_loss": loss})
        if loss < best_loss or best is None:
            best, best_row, best_loss, best_params, best_full = head, table[-1], loss, params, full
    best.grow(X, y, best_full)
    best_row["val_loss"] = validation_loss(best, X_val, y_val, task, y)
    return best, best_params, table


PATH_PATIENCE = 2  # a warm-started path stops after its validation loss rose this many times in a row


def ridge_path_losses(X, y, X_val, y_val, alphas=RIDGE_ALPHAS, scale: str = "standard") -> np.ndarray:
    """Validation MSE of ridge on standardised (or, scale 'raw', centred) features for every
    alpha and target: (alphas, targets). See RidgePath."""
    return RidgePath(X, y, X_val, y_val).losses(alphas, scale)


class RidgePath:
    """Ridge's validation losses along a whole alpha path, for either scale of one table.

    Predictions are L (S + alpha I)^-1 c: with S = A'A, c = A'y, L = B when rows outnumber
    features, else S = AA', c = y, L = BA' (A, B: the centred, scaled training and validation
    rows). S is reduced once to a tridiagonal T = Q'SQ (LAPACK sytrd), after which each alpha
    is one O(features) tridiagonal solve: on 5,460 k-mer columns 9 s where a full
    eigendecomposition took 18 s, with the same losses to 1e-14. The two scales share the
    centred rows and, when rows outnumber features, the Gram matrix (standardising divides it
    by the outer product of the standard deviations).
    """

    def __init__(self, X, y, X_val, y_val):
        self.mean = np.asarray(X, np.float64).mean(axis=0)
        self.A = np.asarray(X, np.float64) - self.mean
        self.B = np.asarray(X_val, np.float64) - self.mean
        y = np.asarray(y, float).reshape(len(y), -1)
        self.yc = y - y.mean(axis=0)
        self.yv = np.asarray(y_val, float).reshape(len(y_val), -1) - y.mean(axis=0)
        self.primal = self.A.shape[0] >= self.A.shape[1]
        self._gram = None

    def losses(self, alphas=RIDGE_ALPHAS, scale: str = "standard") -> np.ndarray:
        std = self.A.std(axis=0) + 1e-12 if scale == "standard" else np.ones(self.A.shape[1])
        if self.primal:
            if self._gram is None:
                self._gram = (self.A.T @ self.A, self.A.T @ self.yc)
            gram, cross = self._gram
            S, c, L = gram / np.outer(std, std), cross / std[:, None], self.B / std
        else:
            A = self.A / std
            S, c, L = A @ A.T, self.yc, (self.B / std) @ A.T
        pred = _regularised_solves(S, c, L, np.asarray(alphas, float))  # (val, alphas, targets)
        return ((pred - self.yv[:, None, :]) ** 2).mean(axis=0)


def _regularised_solves(S, c, L, alphas) -> np.ndarray:
    """L (S + alpha I)^-1 c for every alpha, S symmetric positive semi-definite: (rows of L,
    alphas, columns of c). Tridiagonalised once; an eigendecomposition where a shifted
    tridiagonal is not positive definite in floating point (S numerically indefinite)."""
    from scipy.linalg import lapack

    m = len(S)
    if m >= 2:
        a, diag, off, tau, info = lapack.dsytrd(S, lower=1,
                                                lwork=int(lapack.dsytrd_lwork(m, lower=1)[0]))
        # Q = H(1)...H(m-1), reflectors below the subdiagonal: Q acts on rows 2..m as the Q
        # of a QR factorisation (LAPACK's dormtr for a lower sytrd is this dormqr call)
        reflectors = a[1:, :-1]

        def times_q(trans, C):
            C = np.array(C, dtype=np.float64, order="F")
            query = lapack.dormqr("L", trans, reflectors, tau, C[1:], -1)[1]
            C[1:], _, status = lapack.dormqr("L", trans, reflectors, tau, C[1:],
                                             max(1, int(query[0].real)))
            if status != 0:
                raise np.linalg.LinAlgError(f"dormqr failed ({status})")
            return C

        if info == 0:
            r = times_q("T", c)
            Z = np.empty((m, len(alphas), c.shape[1]))
            for i, alpha in enumerate(alphas):
                _, _, Z[:, i], status = lapack.dptsv(diag + alpha, off, r)
                if status != 0:
                    break
            else:
                return (L @ times_q("N", Z.reshape(m, -1))).reshape(len(L), len(alphas), -1)
    evals, V = np.linalg.eigh(S)
    evals = np.clip(evals, 0, None)
    proj, LV = V.T @ c, L @ V
    return np.stack([LV @ (proj / (evals + alpha)[:, None]) for alpha in alphas], axis=1)


def elasticnet_alpha_max(X, y, scale: str = "standard", l1_ratio: float = 0.5) -> float:
    """The smallest alpha at which scikit-learn's ElasticNet keeps no coefficient, on the
    head's own scaling of X: max_j ||x_j' y|| / (n * l1_ratio) over centred (standardised) data.
    A fixed grid cannot serve every scale: on raw k-mer frequencies (values ~1e-2) alpha = 1e-3
    already zeroes nearly everything."""
    X = np.asarray(X, np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0) + 1e-12 if scale == "standard" else 1.0
    y = np.asarray(y, float).reshape(len(y), -1)
    corr = ((X - mean) / std).T @ (y - y.mean(axis=0))
    return float(np.sqrt((corr ** 2).sum(axis=1)).max() / (len(X) * max(l1_ratio, 1e-3))) or 1.0


HALVING_KEEP = 3  # a third goes on


def round_one_epochs(heads) -> list[int]:
    """Each candidate's first round: its class's ROUND_ONE_EPOCHS at the grid's largest step
    size and, where ROUND_ONE_EQUAL_STEPS, as many more at a smaller one as make the same
    learning rate x steps (the MLPs: 2 epochs at lr 3e-3, 6 at 1e-3). Compared after equal
    epochs a larger step tends to look better early (short-horizon bias) and the slow starter
    that wins is cut: on the 17,667-promoter k-mer benchmark (`bench_heads.py
    --halving-check`, 3 draws x 4 torch heads, one set of full runs) 5 equal epochs landed
    within 0.01 of the full grid's test r2 in 11 of 12 (mlp3 0.0144 off: its winner, at lr
    1e-3, last of six after 5 epochs), equal lr x steps from 2 epochs in 12 of 12 (max
    0.0075) for ~9% more training. The 2 was picked on those same runs (from 1 epoch: max
    0.0053, as cheap, but one epoch's loss is a noisy ranking; from 3: max 0.0051, ~22% more)."""
    top = max((head.lr for head in heads), default=None)
    return [max(head.ROUND_ONE_EPOCHS, round(head.ROUND_ONE_EPOCHS * top / head.lr))
            if head.ROUND_ONE_EQUAL_STEPS else head.ROUND_ONE_EPOCHS for head in heads]


def survivors(n: int) -> int:
    """How many of n candidates train on after the first round: the best third, at least two
    of three or more (the MLP grids' six, checked against the full grid), one of two (the
    CNN's two step sizes: on the 17,667-promoter benchmark 49 s -> 23 s, the same choice)."""
    return max(min(2, n - 1), -(-n // HALVING_KEEP))


def round_one_order(round_one_losses) -> tuple[list[int], int]:
    """(the candidates best first by their validation loss after the first round, how many of
    them train on: `survivors`)."""
    order = sorted(range(len(round_one_losses)), key=lambda i: round_one_losses[i])
    return order, survivors(len(order))


def halving(make, grid, X, y, X_val, y_val, task: str, keep_all: bool = False):
    """Successive halving: every candidate trains a first round (`round_one_epochs`: the same
    learning rate x steps for each); the best third by validation loss (`survivors`) trains
    on to early stopping, and the best of those by the common validation loss is kept.
    Candidates cut early are recorded with the loss they had and their epochs. `keep_all`
    (fit-head --full-grid): every candidate trains on, the grid searched whole."""
    shared: dict = {}  # the candidates' one encoding of the rows (TorchMLPHead.begin)
    heads = [make(params).begin(X, y, X_val, y_val, shared) for params in grid]
    first_round = round_one_epochs(heads)
    for head, epochs in zip(heads, first_round):
        head.advance(epochs)
    order, n_kept = round_one_order([head.best_val_loss_ for head in heads])
    n_kept = len(order) if keep_all else n_kept
    table, best, best_params, best_loss = [], None, None, np.inf
    for rank, i in enumerate(order):
        if rank >= n_kept:
            table.append({**grid[i], "val_loss": None, "stopped_after": first_round[i],
                          "round1_loss": heads[i].best_val_loss_})
            heads[i].end()
            continue
        heads[i].advance(heads[i].epochs)
        head = heads[i].end()
        loss = validation_loss(head, X_val, y_val, task, y)
        table.append({**grid[i], "val_loss": loss, "round1_loss": None})
        if loss < best_loss or best is None:
            best, best_params, best_loss = head, grid[i], loss
    return best, best_params, table
