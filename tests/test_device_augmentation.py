"""Augmentation on the device: the policies' ops, seeding, the plain saved model, training without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.augment import POLICIES, DeviceAugmentation, PolicyAugmentation
from keras_vit.datasets import Dataset, load_dataset, preprocess
from keras_vit.training import TrainConfig, fit

TINY = dict(depth=1, hidden_dim=16, num_heads=2, mlp_dim=32, dropout=0.0)


def augment(policy: str, images: np.ndarray, seed: int = 0, training: bool = True) -> np.ndarray:
    layer = PolicyAugmentation(policy, seed=seed)
    return keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(images, "float32"), training=training))


def columns(batch: int = 64, size: int = 16) -> np.ndarray:
    """Images whose pixel value is its column index (+1), so a shift shows as a constant offset."""
    row = np.arange(1, size + 1, dtype=np.float32)
    return np.broadcast_to(row[None, None, :, None], (batch, size, size, 1)).copy()


@pytest.mark.backends
@pytest.mark.parametrize("policy", POLICIES)
def test_policies_are_identity_outside_training(policy):
    images = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(augment(policy, images, training=False), images)


@pytest.mark.backends
def test_none_is_identity_and_mirror_only_mirrors():
    images = np.random.default_rng(0).uniform(0, 255, (64, 10, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(augment("none", images), images)
    out = augment("mirror", images)
    same = np.all(out == images, axis=(1, 2, 3))
    mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)  # each image is itself or its exact left-right mirror
    assert 10 < mirrored.sum() < 54  # about half of them are mirrored


@pytest.mark.backends
@pytest.mark.parametrize("policy, flips", [("light", False), ("fashion", True), ("natural", True)])
def test_shift_policies_move_content_by_a_constant_offset(policy, flips):
    images = columns()
    out = augment(policy, images)
    inner = out[:, 4:-4, 4:-4, 0]  # away from the border the shifted image is the column ramp, offset
    signs = np.sign(inner[:, :, 1:] - inner[:, :, :-1]).reshape(len(out), -1)
    assert np.all(np.abs(signs.mean(axis=1)) == 1)  # still a ramp (mirrored or not), no rotation or zoom
    mirrored = signs[:, 0] < 0
    assert mirrored.any() == flips
    ramp = np.where(mirrored[:, None, None], 17 - inner, inner)  # undo the mirror
    offset = ramp - images[:, 4:-4, 4:-4, 0]
    np.testing.assert_allclose(offset, offset[:, :1, :1] + 0 * offset, atol=1e-4)  # one shift per image
    limit = {"light": 0.1, "fashion": 0.1, "natural": 0.125}[policy] * 16
    assert np.all(np.abs(offset[:, 0, 0]) <= limit + 1e-4)
    assert np.std(offset[:, 0, 0]) > 0.3  # the shifts differ


@pytest.mark.backends
def test_fill_modes_black_reflect_nearest():
    flat = np.full((32, 16, 16, 1), 100.0, np.float32)
    for policy in ("light", "natural"):  # nearest and reflect: a flat image stays flat
        np.testing.assert_allclose(augment(policy, flat), flat, atol=1e-3)
    black = augment("fashion", flat)  # constant fill: the shifted-in border is black
    assert black.min() < 1.0 and black.max() <= 100.0 + 1e-3
    digits = augment("digits", flat)
    assert digits.min() < 1.0 and np.isclose(np.median(digits), 100.0)


@pytest.mark.backends
def test_digits_rotates_zooms_and_shifts_but_keeps_the_digit():
    images = load_dataset("sample").x_train[:64].astype(np.float32)
    out = augment("digits", images)
    assert out.shape == images.shape
    assert not np.any(np.all(np.isclose(out, images), axis=(1, 2, 3)))  # every image moved
    mass = out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    assert np.all((mass > 0.7) & (mass < 1.35))  # ink kept: zoom +-10 %, no flip, black border


@pytest.mark.backends
def test_augmentation_is_seeded_and_absent_from_the_saved_model(tmp_path):
    images = load_dataset("sample").x_train[:16].astype(np.float32)
    np.testing.assert_array_equal(augment("digits", images, seed=3), augment("digits", images, seed=3))
    assert not np.allclose(augment("digits", images, seed=3), augment("digits", images, seed=4))

    ds = load_dataset("sample")
    data = Dataset(ds.x_train[:96], ds.y_train[:96], ds.x_test[:32], ds.y_test[:32], ds.class_names, "sample")
    losses = []
    for run in range(2):
        keras.utils.set_random_seed(0)
        model = keras_vit.create_model("vit_mnist", **TINY)
        out = tmp_path / f"run{run}"
        record = fit(model, data, TrainConfig(epochs=2, batch_size=32, validation_split=0.25, verbose=0,
                                              augment="digits", seed=5, output_dir=str(out), pipeline="device"))
        assert record["augmentation"] == "digits"
        losses.append(record["history"]["loss"])
    assert losses[0] == losses[1]  # the same seed, the same augmented batches, the same training
    config = zipfile.ZipFile(out / "model.keras").read("config.json").decode()
    assert json.loads(config)["class_name"] == "VisionTransformer"
    assert "augment" not in config.lower() and "Random" not in config
    loaded = keras.saving.load_model(out / "model.keras")
    x = preprocess(data.x_test[:8], loaded.preprocessing)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-5)


def test_wrapper_feeds_uint8_normalises_and_saves_the_plain_model(tmp_path):
    model = keras_vit.create_model("vit_mnist", **TINY)
    wrapper = DeviceAugmentation(model, "digits", 1 / 255, np.array([0.5], np.float32), np.array([0.25], np.float32))
    raw = load_dataset("sample").x_train[:4]
    expected = model(preprocess(raw, {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapper(raw)), keras.ops.convert_to_numpy(expected),
                               atol=1e-5)  # inference: normalisation only
    wrapper.save(tmp_path / "m.keras")
    assert type(keras.saving.load_model(tmp_path / "m.keras")).__name__ == "VisionTransformer"


@pytest.mark.slow
def test_training_with_augmentation_works_without_tensorflow(tmp_path):
    """Where ``import tensorflow`` fails (it is not installed), ``fit`` augments on the device (JAX)."""
    from benchmarks.gpu_input_pipeline import BLOCK_TENSORFLOW

    code = BLOCK_TENSORFLOW + (
        "import keras, keras_vit\n"
        "from keras_vit.datasets import Dataset, load_dataset\n"
        "from keras_vit.training import TrainConfig, fit\n"
        "ds = load_dataset('sample')\n"
        "data = Dataset(ds.x_train[:64], ds.y_train[:64], ds.x_test[:16], ds.y_test[:16], ds.class_names, 'sample')\n"
        f"model = keras_vit.create_model('vit_mnist', **{TINY!r})\n"
        "record = fit(model, data, TrainConfig(epochs=1, batch_size=32, validation_split=0.25, verbose=0,\n"
        f"            augment='digits', output_dir={str(tmp_path)!r}))\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('STATUS', record['status'], record['augmentation'])\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "STATUS completed digits" in done.stdout
    assert (tmp_path / "model.keras").is_file()


def test_cifar_convstem_preset_shape_and_parameters():
    """The CIFAR-10 GPU recipe's preset: 32x32x3 in, a 3-conv stem to 8x8, 64 tokens of width 192, 10 logits."""
    from keras_vit.presets import count_params

    model = keras_vit.create_model("vit_cifar_convstem")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert count_params(model) == 2_132_362
    tokens = model.get_layer("patch_extractor")(model.get_layer("stem")(np.zeros((1, 32, 32, 3), np.float32)))
    assert tuple(tokens.shape)[-2] == 64
    assert keras.ops.convert_to_numpy(model(np.zeros((2, 32, 32, 3), np.float32))).shape == (2, 10)
