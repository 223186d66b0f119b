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
