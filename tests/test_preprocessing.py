"""The preprocessing contract (keras_vit.preprocessing) and the edge runtime's copy of it (export/infer.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_vit.errors import UserInputError
from keras_vit.preprocessing import (
    ImagePreprocessor,
    adapt_to_channels,
    channel_constants,
    convert_channels,
    preprocess,
    resize_images,
    softmax,
)

INFER_PATH = Path(__file__).resolve().parents[1] / "export" / "infer.py"
CASES = [  # (height, width, channels, preprocessing)
    (28, 28, 1, {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}),
    (32, 32, 3, {"scale": 1 / 255, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]}),
    (16, 24, 3, {"scale": 1 / 127.5, "mean": [1.0], "std": [1.0]}),
    (20, 12, 1, {"scale": 1.0, "mean": [127.5], "std": [58.0]}),
]


def _load_infer():
    spec = importlib.util.spec_from_file_location("edge_infer_for_preprocessing", INFER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


infer = _load_infer()


def _spec(h, w, c, pre):
    return infer.InputSpec(h, w, c, "float32", pre["scale"], tuple(pre["mean"]), tuple(pre["std"]))


def _raw(rng, n, h, w, c, dtype):
    pixels = rng.integers(0, 256, (n, h, w, c))
    if dtype == "uint8":
        return pixels.astype(np.uint8)
    return (pixels + rng.uniform(-0.5, 0.5, pixels.shape)).clip(0, 255).astype(dtype)


def test_one_broadcasting_rule():
    scale, mean, std = channel_constants({"scale": 0.5, "mean": [1.0], "std": [2.0]}, 3)
    assert scale == np.float32(0.5) and mean.tolist() == [1.0] * 3 and std.tolist() == [2.0] * 3
    _, mean, _ = channel_constants({"mean": [1.0, 2.0, 3.0]}, 3)
    assert mean.tolist() == [1.0, 2.0, 3.0]
    for channels, mean in ((1, [1.0, 2.0, 3.0]), (3, [1.0, 2.0]), (4, [1.0, 2.0, 3.0])):
        with pytest.raises(UserInputError, match=f"has {len(mean)} mean values for {channels}-channel images"):
            channel_constants({"mean": mean}, channels)


def test_adapting_a_preset_to_other_channels_is_a_separate_step():
    rgb = {"scale": 1 / 255, "mean": [0.2, 0.4, 0.6], "std": [0.5, 0.5, 0.5]}
    gray = adapt_to_channels(rgb, 1)
    assert gray["mean"] == pytest.approx([0.4]) and gray["std"] == pytest.approx([0.5])
    assert adapt_to_channels({"mean": [0.5], "std": [0.25]}, 3) == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert adapt_to_channels(rgb, 3) == rgb


@pytest.mark.parametrize("h, w, c, pre", CASES)
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("given_channels", [1, 3, 4])
def test_edge_runtime_copy_computes_the_library_input(h, w, c, pre, dtype, given_channels):
    """Same raw images -> the same network input (1e-6) in export/infer.py and keras_vit.preprocessing."""
    raw = _raw(np.random.default_rng(h * w + given_channels), 5, h, w, given_channels, dtype)
    library = preprocess(convert_channels(raw, c), pre)
    edge = infer.preprocess_arrays(raw, _spec(h, w, c, pre))
    assert edge.shape == library.shape == (5, h, w, c) and edge.dtype == library.dtype == np.float32
    np.testing.assert_allclose(edge, library, rtol=0, atol=1e-6 * max(1.0, float(np.abs(library).max())))


@pytest.mark.parametrize("h, w, c, pre", CASES[:2])
def test_edge_runtime_copy_of_a_single_image_and_of_2d_arrays(h, w, c, pre):
    rng = np.random.default_rng(1)
    one = _raw(rng, 1, h, w, c, "uint8")
    np.testing.assert_allclose(infer.preprocess_arrays(one[0], _spec(h, w, c, pre)), preprocess(one, pre), atol=1e-6)
    gray = one[..., :1]
    expected = preprocess(convert_channels(gray, c), pre)
    np.testing.assert_allclose(infer.preprocess_arrays(gray[..., 0], _spec(h, w, c, pre)), expected, atol=1e-6)


def test_edge_runtime_softmax_is_the_library_softmax():
    logits = np.random.default_rng(0).normal(0, 20, (7, 10)).astype(np.float32)
    np.testing.assert_allclose(infer._softmax(logits), softmax(logits), rtol=0, atol=1e-12)
    probabilities = softmax(logits)
    assert probabilities.dtype == np.float64 and np.allclose(probabilities.sum(-1), 1.0)
    reference = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, reference, rtol=1e-9)


def test_edge_runtime_image_file_path_matches_the_library_on_model_sized_images():
    """A Pillow image at the model's size goes through the same formula (Pillow's luma is rounded, as ours)."""
    Image = pytest.importorskip("PIL.Image")
    pre = CASES[0][3]
    rgb = _raw(np.random.default_rng(2), 1, 28, 28, 3, "uint8")
    edge = infer.preprocess_image(Image.fromarray(rgb[0], "RGB"), _spec(28, 28, 1, pre))
    library = preprocess(convert_channels(rgb, 1), pre)[0]
    # Pillow's integer luma can differ from round(float luma) by one grey level on exact .5 ties.
    assert np.mean(np.abs(edge - library) <= 1e-6) > 0.99
    assert np.max(np.abs(edge - library)) <= 1.0 / 255 / 0.3081 + 1e-6


def test_resize_keeps_constant_images_constant_and_dtypes():
    images = np.full((2, 10, 14, 3), 77, np.uint8)
    out = resize_images(images, (20, 7))
    assert out.shape == (2, 20, 7, 3) and out.dtype == np.uint8 and np.all(out == 77)
    floats = resize_images(images.astype(np.float32) + 0.25, (5, 5))
    assert floats.dtype == np.float32 and np.allclose(floats, 77.25, atol=1e-4)


def test_float_channel_conversion_keeps_floats():
    rgb = np.array([[[[200.0, 100.0, 50.0]]]], np.float32)
    assert convert_channels(rgb, 1)[0, 0, 0, 0] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert convert_channels(rgb.astype(np.uint8), 1)[0, 0, 0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)


def test_preprocessing_layer_computes_the_contract_and_round_trips():
    import keras

    pre = CASES[1][3]
    raw = _raw(np.random.default_rng(3), 4, 32, 32, 3, "uint8")
    layer = ImagePreprocessor.from_preprocessing(pre, image_size=(32, 32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(raw)), preprocess(raw, pre), atol=1e-6)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, ImagePreprocessor) and clone.get_config() == layer.get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(raw)), preprocess(raw, pre), atol=1e-6)
    # Resizing inside the layer: to the model's size, then the same formula.
    small = ImagePreprocessor.from_preprocessing(pre, image_size=(16, 16))
    assert tuple(small(raw).shape) == (4, 16, 16, 3)
    assert small.compute_output_shape((None, 32, 32, 3)) == (None, 16, 16, 3)


def test_preprocessing_layer_in_a_tf_data_map_and_in_a_saved_model(tmp_path):
    import keras
    import tensorflow as tf

    pre = CASES[0][3]
    raw = _raw(np.random.default_rng(4), 6, 28, 28, 1, "uint8")
    layer = ImagePreprocessor.from_preprocessing(pre, image_size=(28, 28))
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(raw).batch(6).map(layer))).numpy()
    np.testing.assert_allclose(mapped, preprocess(raw, pre), atol=1e-6)

    inputs = keras.Input((28, 28, 1), dtype="uint8")
    model = keras.Model(inputs, keras.layers.Flatten()(layer(inputs)))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    out = keras.ops.convert_to_numpy(reloaded(raw))
    np.testing.assert_allclose(out, preprocess(raw, pre).reshape(6, -1), atol=1e-6)
