"""SavedModel export: parity with Keras, dynamic batch, metadata JSON, atomic directory swap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_mnist_arrays

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.export import SAVED_MODEL_METADATA_FILE, ExportVerificationError, read_metadata, to_saved_model  # noqa: E402
from keras_vit.preprocessing import preprocess  # noqa: E402
from keras_vit.presets import MNIST_PREPROCESSING  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run on TensorFlow")


def serve(path):
    return tf.saved_model.load(str(path)).signatures["serving_default"]


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(2)
    return keras_vit.create_model("vit_tiny_patch16_224", depth=2, image_size=32, num_classes=4,
                                  class_names=["cat", "dog", "fox", "owl"])


def test_saved_model_parity_batch_and_metadata(trained_mnist_model, data_dir, tmp_path):
    path = tmp_path / "vit_mnist_saved_model"
    report = to_saved_model(trained_mnist_model, path)
    assert report.parity["max_abs_diff"] <= 1e-5
    model = keras.saving.load_model(trained_mnist_model)
    _, (x_test, _) = load_mnist_arrays(data_dir)
    x = preprocess(x_test[:18, ..., None], MNIST_PREPROCESSING)
    fn = serve(path)
    for batch in (x[:1], x[1:18]):
        out = fn(images=tf.constant(batch))
        assert list(out) == ["logits"] and out["logits"].shape == (len(batch), 10)
        assert np.max(np.abs(out["logits"].numpy() - model.predict_on_batch(batch))) <= 1e-5
    meta = json.loads((path / SAVED_MODEL_METADATA_FILE).read_text())
    assert meta == read_metadata(path) == report.metadata
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["image_size"] == [28, 28]
    assert meta["channels"] == 1 and meta["preprocessing"] == MNIST_PREPROCESSING
    assert meta["input_dtype"] == "float32" and meta["preset"] == "vit_mnist" and meta["opset"] is None
    assert meta["keras_vit_version"] == keras_vit.__version__


def test_saved_model_with_preprocessing_and_probabilities(tiny_model, tmp_path):
    path = tmp_path / "tiny_sm"
    report = to_saved_model(tiny_model, path, include_preprocessing=True, include_probabilities=True)
    assert report.outputs == ["logits", "probabilities"]
    raw = np.random.default_rng(0).integers(0, 256, size=(17, 32, 32, 3), dtype=np.uint8)
    out = serve(path)(images=tf.constant(raw))
    expected = tiny_model.predict_on_batch(preprocess(raw, tiny_model.preprocessing))
    assert np.max(np.abs(out["logits"].numpy() - expected)) <= 1e-5
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(expected).numpy(), atol=1e-6)
    meta = read_metadata(path)
    assert meta["preprocessing"] == {} and meta["input_dtype"] == "uint8"
    assert meta["class_names"] == ["cat", "dog", "fox", "owl"] and meta["channels"] == 3


def test_failed_saved_model_export_keeps_previous_directory(tiny_model, tmp_path):
    path = tmp_path / "tiny_sm"
    to_saved_model(tiny_model, path)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(ExportVerificationError, match=r"^export does not match the Keras model: max abs diff "):
        to_saved_model(tiny_model, path, tolerance=-1.0)  # a threshold that nothing meets
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_sm"]  # no temporary directory left
    # A successful export replaces it.
    other = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32, num_classes=3)
    to_saved_model(other, path)
    assert read_metadata(path)["class_names"] == ["0", "1", "2"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_sm"]
