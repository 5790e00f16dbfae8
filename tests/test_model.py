"""The model builder, presets, `.keras` round trips and cross-backend loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.errors import UserInputError

TIMM_PARAMETERS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
}


@pytest.mark.parametrize("preset", sorted(TIMM_PARAMETERS))
def test_timm_presets_have_timm_parameter_counts(preset):
    assert keras_vit.count_params(keras_vit.create_model(preset)) == TIMM_PARAMETERS[preset]


@pytest.mark.backends
def test_vit_mnist_preset_architecture():
    model = keras_vit.create_model("vit_mnist")
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    assert (model.patch_size, model.hidden_dim, model.depth, model.num_heads, model.mlp_dim) == (7, 64, 6, 4, 128)
    assert model.get_layer("patch_extractor").compute_output_shape((None, 28, 28, 1)) == (None, 16, 49)
    assert len(model.blocks) == 6


@pytest.mark.backends
def test_convstem_preset_cuts_patches_from_the_stem_output(tmp_path):
    model = keras_vit.create_model("vit_mnist_convstem")
    assert keras_vit.count_params(model) == 265_258
    assert model.stem_filters == [32, 64, 64] and model.stem_strides == [1, 2, 2] and model.patch_size == 4
    assert model.pooling == "avg"
    assert model.get_layer("stem").compute_output_shape((None, 28, 28, 1)) == (None, 7, 7, 64)
    assert model.get_layer("patch_extractor").compute_output_shape((None, 7, 7, 64)) == (None, 49, 64)
    x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32")
    assert keras.ops.convert_to_numpy(model.attention_scores(x)[0]).shape == (3, 4, 50, 50)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert restored.stem_filters == [32, 64, 64] and restored.stem_strides == [1, 2, 2]
    np.testing.assert_allclose(restored.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    with pytest.raises(UserInputError, match="patch_size 2 is not a multiple of the convolutional stem's stride 4"):
        keras_vit.create_model("vit_mnist_convstem", patch_size=2)


def test_stem_strides_set_how_much_the_stem_shrinks_before_the_patches(tmp_path):
    model = keras_vit.create_model("vit_mnist_convstem", stem_filters=[4, 8, 8], stem_strides=[1, 2, 2], depth=1)
    assert model.get_layer("stem").compute_output_shape((None, 28, 28, 1)) == (None, 7, 7, 8)
    assert model.get_layer("patch_extractor").patch_size == 1
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").stem_strides == [1, 2, 2]
    two = keras_vit.create_model("vit_mnist_convstem", stem_filters=[4, 8], stem_strides=[1, 2], depth=1)
    assert two.get_layer("patch_extractor").compute_output_shape((None, 14, 14, 8)) == (None, 49, 32)
    with pytest.raises(UserInputError, match=r"patch_size 4 is not a multiple of the convolutional stem's stride 8"):
        keras_vit.create_model("vit_mnist_convstem", stem_filters=[4, 4, 4], stem_strides=[2, 2, 2])
    with pytest.raises(UserInputError, match="a stride of 1 or 2 for each of its 2 stages"):
        keras_vit.create_model("vit_mnist_convstem", stem_filters=[4, 8], stem_strides=[4, 1])


@pytest.mark.backends
@pytest.mark.parametrize("preset", keras_vit.list_presets())
def test_every_preset_accepts_overrides(preset):
    size = 2 * keras_vit.PRESETS[preset]["patch_size"]
    model = keras_vit.create_model(preset, num_classes=3, image_size=size, channels=2, depth=1)
    assert model.input_shape == (None, size, size, 2)
    assert model.output_shape == (None, 3)
    assert len(model.preprocessing["mean"]) == 2 and len(model.preprocessing["std"]) == 2
    out = model.predict(np.zeros((2, size, size, 2), "float32"), verbose=0)
    assert out.shape == (2, 3) and np.all(np.isfinite(out))


def test_unknown_preset_names_the_choices():
    with pytest.raises(UserInputError, match=r"Unknown preset 'vit_huge'\. Available presets: vit_mnist, "):
        keras_vit.create_model("vit_huge")


def test_unknown_option_and_bad_sizes_are_user_errors():
    with pytest.raises(UserInputError, match="Unknown model option\\(s\\): hidden_size"):
        keras_vit.create_model("vit_mnist", hidden_size=3)
    with pytest.raises(UserInputError, match="image_size 30x30 is not a multiple of patch_size 7"):
        keras_vit.create_model("vit_mnist", image_size=30)
    with pytest.raises(UserInputError, match="2 class names given for a model with 10 classes"):
        keras_vit.create_model("vit_mnist", class_names=["a", "b"])


@pytest.mark.parametrize("local", ["height", "grid", "stem", "x", "logits", "kwargs", "self"])
def test_local_variable_names_of_the_constructor_are_not_options(local):
    # The check reads the constructor's signature, not its code object's variable names.
    with pytest.raises(UserInputError, match=f"Unknown model option\\(s\\): {local}"):
        keras_vit.create_model("vit_mnist", **{local: 1})


@pytest.mark.backends
@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_dtype_reaches_every_layer_and_survives_a_round_trip(dtype, tmp_path):
    policy = keras.DTypePolicy(dtype)
    model = keras_vit.create_model("vit_mnist", depth=2, dtype=policy if dtype == "bfloat16" else dtype)
    head_compute = "float32" if dtype.startswith("mixed") else "bfloat16"
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        expected = head_compute if layer.name == "head" else "bfloat16"
        assert layer.dtype_policy.compute_dtype == expected, layer.name
        assert layer.dtype_policy.variable_dtype == ("bfloat16" if expected == "bfloat16" and
                                                     not dtype.startswith("mixed") else "float32"), layer.name
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    out = model(x, training=False)
    assert keras.backend.standardize_dtype(out.dtype) == head_compute
    assert model.get_config()["dtype"]["config"]["name"] == dtype
    again = keras_vit.VisionTransformer.from_config(model.get_config())
    assert again.get_config() == model.get_config()
    assert again.get_layer("block_1").attn.qkv.dtype_policy.name == dtype
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(loaded(x, training=False), "float32")),
                                  keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")))


def test_default_dtype_follows_the_global_policy():
    model = keras_vit.create_model("vit_mnist", depth=1)
    assert model.get_config()["dtype"]["config"]["name"] == "float32"
    assert model.get_layer("block_0").dtype_policy.name == "float32"


@pytest.mark.backends
def test_attention_scores_are_distributions_over_tokens():
    model = keras_vit.create_model("vit_mnist", depth=2)
    scores = model.attention_scores(np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32"))
    assert len(scores) == 2
    s = keras.ops.convert_to_numpy(scores[0])
    assert s.shape == (3, 4, 17, 17)
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)


@pytest.mark.backends
def test_last_block_computes_the_class_token_only_when_the_head_reads_it():
    x = np.random.default_rng(1).normal(size=(3, 28, 28, 1)).astype("float32")
    model = keras_vit.create_model("vit_mnist", depth=3)
    assert [b.class_token_only for b in model.blocks] == [False, False, True]
    assert tuple(model.get_layer("block_2").output.shape) == (None, 1, 64)
    pruned = keras.ops.convert_to_numpy(model(x, training=False))
    with model.every_token():
        full = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(pruned, full, atol=2e-6)
    # mean pooling reads every token: nothing to prune
    avg = keras_vit.create_model("vit_mnist", depth=3, pooling="avg")
    assert not any(b.class_token_only for b in avg.blocks)
    assert tuple(avg.get_layer("block_2").output.shape) == (None, 17, 64)
    # attention maps still cover every token of every block
    assert tuple(model.attention_scores(x)[-1].shape) == (3, 4, 17, 17)


@pytest.mark.backends
def test_keras_file_round_trip_keeps_config_metadata_and_logits(tmp_path):
    model = keras_vit.create_model("vit_mnist", depth=2, class_names=list("abcdefghij"), drop_path=0.1)
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode: no Lambda, everything registered
    assert isinstance(loaded, keras_vit.VisionTransformer)
    assert loaded.get_config() == model.get_config()
    assert loaded.class_names == list("abcdefghij")
    assert loaded.preprocessing == {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}
    assert loaded.preset == "vit_mnist"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


_SAVE = """
import sys, numpy as np, keras, keras_vit
keras.utils.set_random_seed(1)
model = keras_vit.create_model("vit_mnist", depth=2)
x = np.random.default_rng(0).normal(size=(5, 28, 28, 1)).astype("float32")
model.save(sys.argv[1] + "/" + keras.backend.backend() + ".keras")
np.save(sys.argv[1] + "/" + keras.backend.backend() + ".npy", model.predict(x, verbose=0))
"""

_LOAD = """
import sys, json, numpy as np, keras, keras_vit  # importing keras_vit registers its layers
x = np.random.default_rng(0).normal(size=(5, 28, 28, 1)).astype("float32")
diffs = {}
for source in ("tensorflow", "jax", "torch"):
    model = keras.saving.load_model(sys.argv[1] + "/" + source + ".keras")
    diffs[source] = float(np.abs(model.predict(x, verbose=0) - np.load(sys.argv[1] + "/" + source + ".npy")).max())
print(json.dumps(diffs))
"""

BACKENDS = ("tensorflow", "jax", "torch")


def _run(code: str, backend: str, folder) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_keras_file_saved_under_any_backend_gives_same_logits_under_the_others(tmp_path):
    for backend in BACKENDS:
        _run(_SAVE, backend, tmp_path)
    for backend in BACKENDS:
        diffs = json.loads(_run(_LOAD, backend, tmp_path).strip().splitlines()[-1])
        for source, diff in diffs.items():
            assert diff <= 1e-5, f"saved under {source}, loaded under {backend}: max abs diff {diff}"
