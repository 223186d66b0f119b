"""PNG plots of a fitted head: predicted vs true, residuals, learning curves.

Every figure says what it shows: the run (features / head), the split, and the scores.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from cache.safe_io import save_figure


def _scores(metrics: dict | None, name: str, several: bool) -> str:
    """'MAE 0.410, Pearson r 0.620, R2 0.350' from test metrics (per target when several)."""
    if not metrics:
        return ""
    if several:
        metrics = metrics.get("per_target", {}).get(name, {})
    parts = []
    for key, label in (("mae", "MAE"), ("pearson", "Pearson r"), ("r2", "R2")):
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.3f}")
    return ", ".join(parts)


def plot_run(directory: Path, task: str, target_names, history=None, run: str = "",
             metrics: dict | None = None, best_epoch: int | None = None):
    """`run` names the model in titles (e.g. 'mean / mlp3'); `metrics` are the test metrics."""
    table = pd.read_csv(directory / "test_predictions.csv")
    prefix = f"{run}: " if run else ""
    if task == "regression":
        for name in target_names:
            true, pred = table[f"true_{name}"].to_numpy(), table[f"pred_{name}"].to_numpy()
            fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.4))
            lo, hi = np.nanmin([true, pred]), np.nanmax([true, pred])
            a.scatter(true, pred, s=10, alpha=0.6)
            a.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
            a.set(xlabel=f"true {name}", ylabel=f"predicted {name}",
                  title=f"test split (n={len(true)}): predicted vs true")
            a.legend(loc="upper left", fontsize=8)
            b.scatter(pred, pred - true, s=10, alpha=0.6)
            b.axhline(0, color="k", lw=1, ls="--")
            b.set(xlabel=f"predicted {name}", ylabel="residual (pred - true)",
                  title="test split: residuals")
            fig.suptitle(f"{prefix}{name} — {_scores(metrics, name, len(target_names) > 1)}")
            fig.tight_layout()
            save_figure(fig, directory / f"pred_vs_true_{name}.png", dpi=100)
            plt.close(fig)
    else:
        _classification_plots(directory, table, target_names[0], prefix, metrics)
    if history:
        log = pd.DataFrame(history)
        fig, ax = plt.subplots(figsize=(6, 4.4))
        ax.plot(log.epoch, log.train_loss, label="train")
        ax.plot(log.epoch, log.val_loss, label="validation")
        if best_epoch is not None and best_epoch in set(log.epoch):
            best = log.loc[log.epoch == best_epoch, "val_loss"].iloc[0]
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
            ax.scatter([best_epoch], [best], color="red", zorder=3,
                       label=f"best validation (epoch {best_epoch}): weights kept")
        ax.set(xlabel="epoch", ylabel="loss", title=f"{prefix}learning curves", yscale="log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, directory / "learning_curves.png", dpi=100)
        plt.close(fig)


def _classification_plots(directory: Path, table: pd.DataFrame, name: str, prefix: str,
                          metrics: dict | None):
    """Test split: the confusion matrix (counts) and ROC curves from the stored probabilities."""
    from sklearn.metrics import auc, confusion_matrix, roc_curve

    true, pred = table[f"true_{name}"].astype(str), table[f"pred_{name}"].astype(str)
    classes = sorted(set(true) | set(pred))
    counts = confusion_matrix(true, pred, labels=classes)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.0 * len(classes) + 2.6))
    ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > counts.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
           yticklabels=classes, xlabel=f"predicted {name}", ylabel=f"true {name}",
           title=f"{prefix}test split (n={len(true)}): confusion matrix")
    accuracy = (metrics or {}).get("accuracy")
    if isinstance(accuracy, float):
        ax.set_title(f"{ax.get_title()}\naccuracy {accuracy:.3f}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, directory / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    proba = [c for c in table.columns if c.startswith("proba_")]
    if not proba:
        return
    fig, ax = plt.subplots(figsize=(5.6, 5))
    shown = proba[1:] if len(proba) == 2 else proba  # binary: the positive class alone
    for column in shown:
        cls = column[len("proba_"):]
        if (true == cls).all() or not (true == cls).any():
            continue
        fpr, tpr, _ = roc_curve(true == cls, table[column])
        ax.plot(fpr, tpr, label=f"{cls} vs rest (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"{prefix}test split: ROC")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, directory / "roc.png", dpi=100)
    plt.close(fig)
