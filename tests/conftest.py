import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("HYENA_FIXTURES", REPO.parent / "shared" / "fixtures" / "hyena_reference"))

torch.set_num_threads(min(2, torch.get_num_threads()))


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
