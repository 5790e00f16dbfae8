"""Shared fixtures: where the real datasets are, and which Keras backend runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$KERAS_VIT_DATA``, else ``../shared/data`` beside the repository, if it exists."""
    candidates = [os.environ.get("KERAS_VIT_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with ``mnist/mnist.npz`` etc.; tests that need real data skip without it."""
    found = shared_data_dir()
    if found is None:
        pytest.skip("real datasets not found: set KERAS_VIT_DATA or put shared/data beside the repo")
    return found


@pytest.fixture(scope="session")
def backend() -> str:
    import keras

    return keras.backend.backend()
