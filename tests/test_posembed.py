"""Positional-embedding resizing: NumPy against torch's bicubic interpolation, and at load time."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.posembed import resample_position_embedding, resize_matrix


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("sizes", [(14, 10), (10, 14), (4, 7), (7, 4), (14, 14), (5, 3)])
def test_resize_matches_torch_bicubic(sizes, antialias):
    torch = pytest.importorskip("torch")
    old, new = sizes
    grid = np.random.default_rng(0).normal(size=(old, old + 1, 6)).astype("float32")
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(grid).permute(2, 0, 1)[None],
        size=(new, new + 1),
        mode="bicubic",
        align_corners=False,
        antialias=antialias,
    )[0].permute(1, 2, 0).numpy()
    from keras_vit.posembed import resize_grid

    np.testing.assert_allclose(resize_grid(grid, (new, new + 1), antialias), ref, atol=1e-5)


def test_resize_keeps_class_token_row():
    emb = np.random.default_rng(1).normal(size=(1, 1 + 16, 5)).astype("float32")
    out = resample_position_embedding(emb, (6, 6))
    assert out.shape == (1, 37, 5)
    np.testing.assert_array_equal(out[:, 0], emb[:, 0])


def test_identity_resize():
    np.testing.assert_array_equal(resize_matrix(5, 5), np.eye(5))


@pytest.mark.backends
def test_weights_for_another_image_size_load_with_resized_grid(tmp_path):
    small = keras_vit.create_model("vit_mnist", depth=1)
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    big = keras_vit.create_model("vit_mnist", depth=1, image_size=42)  # 6x6 grid instead of 4x4
    big.load_weights(path)
    stored = keras.ops.convert_to_numpy(small.get_layer("patch_encoder").position_embedding)
    loaded = keras.ops.convert_to_numpy(big.get_layer("patch_encoder").position_embedding)
    np.testing.assert_allclose(loaded, resample_position_embedding(stored, (6, 6)), atol=1e-6)
    # everything else is loaded unchanged
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(big.get_layer("head").kernel),
        keras.ops.convert_to_numpy(small.get_layer("head").kernel),
    )
    assert big.predict(np.zeros((1, 42, 42, 1), "float32"), verbose=0).shape == (1, 10)
