"""Shared test set-up: offline hub, deterministic seeds, small thread count."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see perchead/__init__.py

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def analyzer():
    """The MediaPipe face analyzer installed by tasks.py (skips with the reason when its files are absent)."""
    from perchead.photo import faces

    found = faces.load_analyzer(fetch=False)
    if found is None:
        pytest.skip(f"MediaPipe face models unavailable: {faces.unavailable_reason()}")
    return found
