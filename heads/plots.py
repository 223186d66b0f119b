"""PNG plots of a fitted head: predicted vs true, residuals, learning curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_run(directory: Path, task: str, target_names, history=None):
    table = pd.read_csv(directory / "test_predictions.csv")
    if task == "regression":
        for name in target_names:
            true, pred = table[f"true_{name}"].to_numpy(), table[f"pred_{name}"].to_numpy()
            fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
            lo, hi = np.nanmin([true, pred]), np.nanmax([true, pred])
            a.scatter(true, pred, s=10, alpha=0.6)
            a.plot([lo, hi], [lo, hi], "k--", lw=1)
            a.set(xlabel=f"true {name}", ylabel=f"predicted {name}", title="test: predicted vs true")
            b.scatter(pred, pred - true, s=10, alpha=0.6)
            b.axhline(0, color="k", lw=1, ls="--")
            b.set(xlabel=f"predicted {name}", ylabel="residual (pred - true)", title="residuals")
            fig.tight_layout()
            fig.savefig(directory / f"pred_vs_true_{name}.png", dpi=100)
            plt.close(fig)
    if history:
        log = pd.DataFrame(history)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(log.epoch, log.train_loss, label="train")
        ax.plot(log.epoch, log.val_loss, label="validation")
        ax.set(xlabel="epoch", ylabel="loss", title="learning curves", yscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "learning_curves.png", dpi=100)
        plt.close(fig)
