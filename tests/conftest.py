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


def load_mnist_arrays(data_dir: Path | None = None):
    """``(x_train, y_train), (x_test, y_test)`` uint8 MNIST: the real file if found, else the packaged sample."""
    import numpy as np

    path = (data_dir or shared_data_dir() or Path("/nonexistent")) / "mnist" / "mnist.npz"
    if not path.is_file():
        path = REPO_ROOT / "keras_vit" / "data" / "mnist_sample.npz"
    with np.load(path, allow_pickle=False) as d:
        return (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])


@pytest.fixture(scope="session")
def trained_mnist_model(tmp_path_factory):
    """A ``vit_mnist`` trained briefly (about 1 minute) on real MNIST, saved as ``.keras``; returns its path.

    About 77-80 % test accuracy (about 190 steps): a real, imperfect classifier whose near-ties make the
    INT8 agreement check meaningful, and enough for export parity checks on real digits.
    Plain ``compile``/``fit`` on purpose: it must not depend on the code under test in the training module.
    """
    import keras

    import keras_vit

    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = load_mnist_arrays()
    x = (x_train[:12000].astype("float32")[..., None] / 255.0 - 0.1307) / 0.3081
    y = y_train[:12000].astype("int32")
    model = keras_vit.create_model("vit_mnist", class_names=[str(i) for i in range(10)])
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=128, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("trained") / "vit_mnist.keras"
    model.save(path)
    return path
