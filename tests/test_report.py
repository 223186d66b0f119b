"""The verdict's intervals and the HTML report (checked in a real headless browser if present)."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from heads.fit import FitOptions, fit_heads
from heads.report import log_command, write_report
from heads.verdict import paired_bootstrap, verdict_sentence

from test_heads import synthetic_cache


def _table(y, pred):
    return pd.DataFrame({"id": [f"s{i}" for i in range(len(y))], "true_y": y, "pred_y": pred})


def test_paired_bootstrap_interval_covers_the_true_difference():
    """Predictions y + noise: Pearson r = 1/sqrt(1 + s^2) for unit-variance y, so the true
    difference between a model (s=0.6) and a baseline (s=1.0) is known; its 95% interval must
    cover it in about 95% of repeated experiments."""
    true_diff = 1 / np.sqrt(1 + 0.6 ** 2) - 1 / np.sqrt(1 + 1.0 ** 2)
    rng = np.random.default_rng(1)
    covered, excluded_zero = 0, 0
    n_repeats = 120
    for rep in range(n_repeats):
        y = rng.normal(size=300)
        model, base = _table(y, y + 0.6 * rng.normal(size=300)), _table(y, y + rng.normal(size=300))
        own, diff = paired_bootstrap(model, base, "regression", n_boot=400, seed=rep)
        covered += diff.low <= true_diff <= diff.high
        excluded_zero += diff.low > 0
        assert own.low <= own.estimate <= own.high
    assert 0.88 <= covered / n_repeats <= 0.995
    assert excluded_zero / n_repeats > 0.8  # a difference of ~0.15 r is seen at n=300


def test_no_difference_is_not_called_a_win():
    rng = np.random.default_rng(2)
    y = rng.normal(size=200)
    a, b = _table(y, y + rng.normal(size=200)), _table(y, y + rng.normal(size=200))
    _, diff = paired_bootstrap(a, b, "regression", n_boot=500)
    assert diff.low < 0 < diff.high
    assert "not a clear win" in verdict_sentence("mean/ridge", "kmer/ridge", diff, "Pearson r")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    synthetic_cache(tmp / "c.zarr", n_samples=120)
    fit_heads(str(tmp / "c.zarr"), str(tmp / "run"),
              FitOptions(heads=["ridge", "mlp2"], feature_sets=[["mean"]], labels=["y"],
                         baseline=["kmer"], kmer_max_k=2, epochs=15), say=lambda m: None)
    log_command(tmp / "run", ["cli.py", "fit-head", "--cache", "c.zarr", "--label", "y"])
    return tmp / "run"


def test_report_is_one_self_contained_page(run_dir):
    page = write_report(run_dir).read_text()
    # the planted signal is in 'mean'; k-mers of random sequences know nothing
    assert "best embedding head (mean/" in page and "the embeddings win" in page
    for name in ("mean / ridge", "mean / mlp2", "kmer / ridge", "kmer / mlp2"):
        assert name in page
    n_png = len(list(run_dir.glob("*/*/*.png")))
    assert n_png >= 6 and page.count('src="data:image/png;base64,') == n_png
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert "python cli.py fit-head --cache c.zarr --label y" in page
    assert "scikit-learn" in page and "test Pearson r [95% CI]" in page
    # ranked by validation: the table lists rows in decreasing validation score
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert list(board.val_pearson) == sorted(board.val_pearson, reverse=True)


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_report_renders_in_a_real_browser(run_dir, tmp_path):
    page = write_report(run_dir)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    dom = subprocess.run([_browser(), *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert "<table>" in dom and dom.count("<img") >= 6 and "Leaderboard" in dom
    subprocess.run([_browser(), *flags, "--window-size=1200,1600", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and plots, not a blank page


def test_classification_heads_get_confusion_and_roc_plots_and_the_report_says_the_split(world, tmp_path):
    """Issue 22 (4): a logistic head has plots; the page gives n per split and the embed command
    that made the cache beside fit-head's."""
    from click.testing import CliRunner

    import cli

    table = pd.read_csv(world / "t.csv", dtype={"id": str})
    labels = pd.DataFrame({"id": table["id"], "kind": np.where(table["y"] > 0, "up", "down")})
    labels.to_csv(tmp_path / "kinds.csv", index=False)
    result = CliRunner().invoke(cli.main, ["fit-head", "--cache", str(world / "c.zarr"), "--labels",
                                           str(tmp_path / "kinds.csv"), "--label", "kind", "--head",
                                           "logistic", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    head = tmp_path / "runs" / "mean" / "logistic"
    assert (head / "confusion_matrix.png").exists() and (head / "roc.png").exists()
    page = write_report(tmp_path / "runs").read_text()
    assert "run without --no-plots" not in page
    n = json.loads((head / "config.json").read_text())["n"]
    assert f"Split: train {n['train']}, validation {n['val']}, test {n['test']} rows" in page
    import html

    from cache.store import Cache

    made_by = Cache.open(world / "c.zarr").attrs["command"]  # sys.argv of the run that embedded
    assert made_by and html.escape(made_by) in page.split("Commands and versions")[1]


def test_warnings_are_summarised_in_one_line():
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from heads.fit import warning_summary

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("Objective did not converge", ConvergenceWarning)
        warnings.warn("Ill-conditioned matrix", UserWarning)
    assert warning_summary(caught) == ("ConvergenceWarning x3 (Objective did not converge); "
                                       "UserWarning x1 (Ill-conditioned matrix)")
