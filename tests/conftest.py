import os
from pathlib import Path

import pytest
import torch

from hyena_embed.devices import DEVICE_ENV

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("HYENA_FIXTURES", REPO.parent / "shared" / "fixtures" / "hyena_reference"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# The suite's numbers are CPU float32 numbers: "--device auto" means the CPU in every test,
# its subprocesses and module fixtures included, also where CUDA is visible. Tests of the CUDA
# paths carry the `cuda` marker, name their device and precision, and are skipped without one.
os.environ[DEVICE_ENV] = "cpu"
# An exception no check foresaw is a one-line "unexpected ..." for users; in the suite it stays
# a traceback, so that tests asserting "no traceback" catch every such bug.
os.environ["HYENA_EMBED_DEBUG"] = "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fixtures_dir():
    if not FIXTURES.exists():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set HYENA_FIXTURES)")
    return FIXTURES


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    # Tests never reach the hub: an empty private cache, offline mode.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Issue 21's playground: a labelled table (ids with leading zeros), its float32 cache, and
    a run folder holding every kind of stored head (skops, LightGBM text, torch)."""
    import numpy as np
    import pandas as pd
    from click.testing import CliRunner

    import cli
    from helpers import make_records

    def ok(*args):
        result = CliRunner().invoke(cli.main, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    tmp = tmp_path_factory.mktemp("adversarial")
    rng = np.random.default_rng(0)
    recs = make_records(80, lo=40, hi=120)
    pd.DataFrame({"id": [f"{i:03d}" for i in range(80)], "seq": [s for _, s in recs],
                  "y": rng.normal(size=80).round(3)}).to_csv(tmp / "t.csv", index=False)
    ok("embed", "--model", "tiny-1k", "--random-init", "--input", tmp / "t.csv", "--seq-col",
       "seq", "--id-col", "id", "--label", "y", "--quiet", "--chunk-rows", "16", "--dtype",
       "float32", "--out", tmp / "c.zarr")
    ok("fit-head", "--cache", tmp / "c.zarr", "--label", "y", "--head", "rf", "--head", "knn",
       "--head", "lightgbm", "--head", "mlp2", "--head", "svr", "--epochs", "3", "--no-plots",
       "--out", tmp / "runs")
    return tmp


@pytest.fixture(scope="session")
def isolated():
    """Commands in child processes with time and memory limits (tests/isolated.py)."""
    from isolated import Isolated

    return Isolated()
