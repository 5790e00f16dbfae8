"""The training recipe: schedule, weight decay, pipelines, files, resume, NaN stop, and a real MNIST fit."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.augment import build_augmentation, resolve_policy
from keras_vit.datasets import Dataset, load_dataset, preprocess
from keras_vit.errors import KerasViTError, UserInputError
from keras_vit.training import (
    ArrayBatches,
    TrainConfig,
    atomic_save_model,
    build_optimizer,
    evaluate,
    fit,
    mixed_precision,
    split_validation,
    tf_data_pipeline,
)

TINY = dict(depth=1, hidden_dim=16, num_heads=2, mlp_dim=32, dropout=0.0)


def tiny_model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return keras_vit.create_model("vit_mnist", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def small_sample() -> Dataset:
    """160 train / 40 test images of the packaged MNIST sample."""
    ds = load_dataset("sample")
    return Dataset(ds.x_train[:160], ds.y_train[:160], ds.x_test[:40], ds.y_test[:40], ds.class_names, "sample")


def quick(tmp_path=None, **kwargs) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, validation_split=0.2, verbose=0, output_dir=tmp_path and str(tmp_path))
    return TrainConfig(**{**base, **kwargs})


# ------------------------------------------------------------------------------------------------
# Pieces


def test_schedule_warms_up_then_cosine_decays():
    optimizer = build_optimizer(TrainConfig(epochs=4, learning_rate=2e-3, warmup_epochs=1), steps_per_epoch=10)
    schedule = optimizer._learning_rate  # the LearningRateSchedule handed to AdamW
    lr = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 25, 40)]
    np.testing.assert_allclose(lr, [0.0, 1e-3, 2e-3, 2e-3 * 0.5 * (1 + math.cos(math.pi * 15 / 30)), 0.0],
                               atol=1e-8)


def test_weight_decay_skips_biases_norms_and_embeddings():
    """With zero gradients Adam's step is 0, so only the decoupled weight decay moves a variable."""
    model = tiny_model()
    optimizer = build_optimizer(TrainConfig(epochs=1, warmup_epochs=0, learning_rate=0.1, weight_decay=0.5,
                                            clipnorm=None), steps_per_epoch=10)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        after = keras.ops.convert_to_numpy(v)
        if v.name in ("bias", "gamma", "beta", "class_token", "position_embedding"):
            np.testing.assert_array_equal(after, before[v.path], err_msg=v.path)
        else:  # decayed by lr * wd = 5 %
            np.testing.assert_allclose(after, before[v.path] * 0.95, rtol=1e-5, err_msg=v.path)


def test_validation_split_is_seeded_and_disjoint():
    x = np.arange(100).reshape(100, 1, 1, 1).astype(np.uint8)
    y = np.arange(100)
    a = split_validation(x, y, 0.1, seed=3)
    b = split_validation(x, y, 0.1, seed=3)
    c = split_validation(x, y, 0.1, seed=4)
    assert [len(p) for p in a] == [90, 90, 10, 10]
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[3], c[3])
    assert sorted(np.concatenate([a[1], a[3]]).tolist()) == list(range(100))
    with pytest.raises(UserInputError, match="^A validation split of 0.001 leaves no training or no validation"):
        split_validation(x, y, 0.001, seed=0)


def test_augmentation_policies():
    assert resolve_policy("auto", "mnist", 1) == "digits"
    assert resolve_policy("auto", "sample", 1) == "digits"
    assert resolve_policy("auto", "fashion_mnist", 1) == "fashion"
    assert resolve_policy("auto", "cifar10", 3) == "natural"
    assert resolve_policy("auto", "my_folder", 3) == "light"
    assert resolve_policy("auto", "mnist", 1, epochs=29) == "none"  # short runs underfit: no augmentation
    assert resolve_policy("auto", "mnist", 1, epochs=30) == "digits"
    assert resolve_policy(True, "cifar10", 3, epochs=2) == "natural"
    assert resolve_policy("none", "mnist", 1) == resolve_policy(False, "mnist", 1) == "none"
    digits = build_augmentation("digits", seed=0)
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in digits.layers)  # a mirrored 2 is no 2
    assert any(isinstance(layer, keras.layers.RandomFlip) for layer in build_augmentation("natural").layers)
    assert build_augmentation("none") is None
    assert [type(layer).__name__ for layer in build_augmentation("mirror").layers] == ["RandomFlip"]
    from keras_vit.augment import POLICIES
    from keras_vit.cli.main import build_parser

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    augment = next(a for a in train_parser._actions if a.dest == "augment")
    assert list(augment.choices) == ["auto", *POLICIES]  # the command line offers every policy
    with pytest.raises(UserInputError, match="^Unknown augmentation 'flip'"):
        resolve_policy("flip", "mnist", 1)


def test_pipelines_give_preprocessed_images_and_one_hot_labels(small_sample):
    pre = {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}
    x, y = small_sample.x_train[:50], small_sample.y_train[:50]
    args = dict(batch_size=16, preprocessing=pre, num_classes=10)
    tf_batches = [(np.asarray(a), np.asarray(b)) for a, b in tf_data_pipeline(x, y, **args)]
    py_batches = [ArrayBatches(x, y, **args)[i] for i in range(len(ArrayBatches(x, y, **args)))]
    assert [len(b[0]) for b in tf_batches] == [16, 16, 16, 2]
    # autotuning off: dropping an autotuned iterator (Keras does, every epoch) waited up to 60 s
    assert tf_data_pipeline(x, y, **args).options().autotune.enabled is False
    for (ta, tb), (pa, pb), start in zip(tf_batches, py_batches, range(0, 50, 16), strict=True):
        np.testing.assert_allclose(ta, preprocess(x[start:start + 16], pre), atol=1e-6)
        np.testing.assert_allclose(pa, ta, atol=1e-6)
        np.testing.assert_array_equal(tb.argmax(1), y[start:start + 16])
        np.testing.assert_array_equal(pb, tb)


@pytest.mark.backends  # Keras' random layers inside tf.data run on TensorFlow whatever the backend
@pytest.mark.parametrize("kind", ["tf.data", "pydataset"])
def test_augmentation_runs_in_the_pipeline(small_sample, kind):
    from keras_vit.training import make_pipeline

    x, y = small_sample.x_train[:32], small_sample.y_train[:32]
    data = make_pipeline(x, y, kind=kind, batch_size=32, preprocessing={"scale": 1.0}, num_classes=10,
                         augmentation=build_augmentation("digits", seed=1))
    images = np.asarray(next(iter(data))[0] if kind == "tf.data" else data[0][0])
    assert images.shape == (32, 28, 28, 1)
    assert not np.allclose(images, x)  # moved
    assert abs(images.mean() - x.mean()) < 0.25 * x.mean()  # but still digits on black


def test_atomic_save_never_leaves_a_half_written_model(tmp_path):
    model = tiny_model()
    target = tmp_path / "model.keras"

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK half a zip")
        raise OSError("disk full")

    model.save = broken_save
    with pytest.raises(OSError, match="disk full"):
        atomic_save_model(model, target)
    assert list(tmp_path.iterdir()) == []


def test_config_validation():
    for kwargs, message in [
        (dict(epochs=0), "Epochs must be at least 1, got 0."),
        (dict(learning_rate=-1.0), "Learning rate must be a positive number, got -1.0."),
        (dict(validation_split=1.0), "Validation split must be in [0, 1), got 1.0."),
        (dict(mixed_precision="int8"), "Mixed precision must be bfloat16 or float16, got 'int8'."),
        (dict(tta="crop"), "Test-time augmentation must be none or flip, got 'crop'."),
    ]:
        with pytest.raises(UserInputError) as info:
            TrainConfig(**kwargs).validate()
        assert str(info.value) == message


def test_model_must_be_built_under_the_requested_precision(small_sample):
    with pytest.raises(UserInputError, match=r"^mixed_precision='bfloat16' but the model was built with the "
                                             r"float32 policy; build it inside keras_vit.training.mixed_prec"):
        fit(tiny_model(), small_sample, quick(mixed_precision="bfloat16"))


def test_labels_must_fit_the_model(small_sample):
    with pytest.raises(UserInputError, match="^sample has labels up to 9 but the model has 5 classes"):
        fit(tiny_model(num_classes=5), small_sample, quick())


# ------------------------------------------------------------------------------------------------
# fit / evaluate


@pytest.mark.backends
def test_fit_writes_history_checkpoints_and_a_loadable_model(small_sample, tmp_path):
    model = tiny_model()
    record = fit(model, small_sample, quick(tmp_path, epochs=3, keep_checkpoints=2))
    history = record["history"]
    assert history["epoch"] == [1, 2, 3] and record["status"] == "completed"
    assert all(math.isfinite(v) for v in history["loss"] + history["val_loss"])
    assert history["learning_rate"][-1] == pytest.approx(0.0, abs=1e-9)  # cosine ran to the end
    assert record["images"] == {"train": 128, "validation": 32, "test": 40}
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert on_disk["history"] == history and on_disk["test"] == record["test"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_002.keras", "epoch_003.keras"]
    assert not (tmp_path / "backup").exists()  # removed after a completed run
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    images = preprocess(small_sample.x_test, model.preprocessing)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    assert evaluate(loaded, small_sample) == pytest.approx(record["test"])


@pytest.mark.backends
def test_evaluate_matches_a_direct_computation(small_sample):
    model = tiny_model()
    result = evaluate(model, small_sample, batch_size=7)
    logits = model.predict(preprocess(small_sample.x_test, model.preprocessing), verbose=0).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == small_sample.y_test))
    assert result["loss"] == pytest.approx(-np.mean(log_probs[np.arange(40), small_sample.y_test]), rel=1e-5)
    assert result["images"] == 40


@pytest.mark.backends
def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror(small_sample):
    model = tiny_model()
    result = evaluate(model, small_sample, batch_size=7, tta="flip")
    images = preprocess(small_sample.x_test, model.preprocessing)
    probs = [keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(view, verbose=0))).astype(np.float64)
             for view in (images, images[:, :, ::-1])]
    mean = (probs[0] + probs[1]) / 2
    assert result["tta"] == "flip" and result["images"] == 40
    assert result["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == small_sample.y_test))
    assert result["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(40), small_sample.y_test])), rel=1e-5)
    # a mirror-symmetric test set gives exactly the single-view figures
    symmetric = Dataset(small_sample.x_train, small_sample.y_train,
                        np.concatenate([small_sample.x_test[:, :, :14], small_sample.x_test[:, :, 13::-1]], axis=2),
                        small_sample.y_test, small_sample.class_names, "symmetric")
    single = evaluate(model, symmetric)
    assert evaluate(model, symmetric, tta="flip") == pytest.approx({**single, "tta": "flip"})
    with pytest.raises(UserInputError, match="Test-time augmentation must be one of none, flip, got 'crop'."):
        evaluate(model, small_sample, tta="crop")


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")


class _FirstEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.__dict__.setdefault("first", epoch)


@pytest.mark.backends
def test_rerun_resumes_after_an_interruption(small_sample, tmp_path):
    config = quick(tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), small_sample, config, callbacks=[_Interrupt()])
    partial = json.loads((tmp_path / "history.json").read_text())
    assert partial["status"] == "interrupted" and partial["history"]["epoch"] == [1]
    assert (tmp_path / "backup").is_dir() and not (tmp_path / "model.keras").exists()

    first = _FirstEpoch()
    model = tiny_model(seed=1)  # fresh weights: the backup must overwrite them
    record = fit(model, small_sample, config, callbacks=[first])
    assert first.first == 1  # Keras started at epoch 2 (index 1)
    assert record["resumed_at_epoch"] == 2
    assert record["history"]["epoch"] == [1, 2, 3]
    assert record["history"]["loss"][0] == pytest.approx(partial["history"]["loss"][0])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3 * record["steps_per_epoch"]
    assert (tmp_path / "model.keras").is_file() and not (tmp_path / "backup").exists()


def test_backup_of_another_model_is_a_clear_error(small_sample, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), small_sample, quick(tmp_path, epochs=3), callbacks=[_Interrupt()])
    with pytest.raises(UserInputError) as info:
        fit(tiny_model(depth=2), small_sample, quick(tmp_path, epochs=3))
    assert str(info.value).startswith(f"Cannot resume from {tmp_path / 'backup'}: it is the backup of a "
                                      "different run (")
    assert str(info.value).endswith("delete that folder to start afresh, or choose another --output.")


class _Poison(keras.callbacks.Callback):
    """Turn the head's kernel to NaN before batch 2 of epoch 2."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            head = self.model.get_layer("head")
            head.kernel.assign(np.full(head.kernel.shape, np.nan, np.float32))


def test_nan_loss_stops_with_a_clear_error_and_saves_nothing_broken(small_sample, tmp_path):
    with pytest.raises(KerasViTError) as info:
        fit(tiny_model(), small_sample, quick(tmp_path, epochs=3, learning_rate=3e-3), callbacks=[_Poison()])
    assert str(info.value) == ("loss became NaN at epoch 2, batch 2; try a lower --learning-rate (it was 0.003) "
                               "or train without --mixed-precision.")
    assert not (tmp_path / "model.keras").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_001.keras"]
    record = json.loads((tmp_path / "history.json").read_text())
    assert record["status"].startswith("failed: loss became NaN") and record["history"]["epoch"] == [1]
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1


@pytest.mark.backends
def test_nan_from_a_poisoned_batch_on_every_backend(small_sample):
    """A preprocessing that divides by zero turns the first batch into inf/NaN inputs."""
    model = tiny_model(preprocessing={"scale": 1 / 255, "mean": [0.0], "std": [0.0]})
    with pytest.raises(KerasViTError, match="^loss became NaN at epoch 1, batch 1; try a lower --learning-rate"):
        fit(model, small_sample, quick(epochs=1))


def test_failed_final_save_leaves_no_model_file(small_sample, tmp_path, monkeypatch):
    model = tiny_model()

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK partial")
        raise OSError("disk full")

    model.save = broken_save
    with pytest.raises(OSError, match="disk full"):
        fit(model, small_sample, quick(tmp_path, epochs=1, checkpoints=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
    assert json.loads((tmp_path / "history.json").read_text())["status"] == "interrupted"


def test_mixed_precision_bfloat16_fit(small_sample):
    with mixed_precision("bfloat16"):
        model = tiny_model()
        record = fit(model, small_sample, quick(epochs=1, mixed_precision="bfloat16"))
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.get_layer("block_0").compute_dtype == "bfloat16"
    assert model.get_layer("head").compute_dtype == "float32"
    assert math.isfinite(record["history"]["loss"][0])
    # Against float32 references. Measured (python, TF CPU): the epoch's loss 2.70038 vs 2.70030 for the same
    # fit in float32; the trained weights' logits in bfloat16 vs float32 on 200 test digits differ by at
    # most 0.064 (logits up to 2.6; bfloat16 keeps 8 bits of mantissa, ~0.4 % per rounding), top-1 agrees
    # on 99.5 %. Bounds: about 3x those differences.
    reference = fit(tiny_model(), small_sample, quick(epochs=1))
    assert abs(record["history"]["loss"][0] - reference["history"]["loss"][0]) <= 0.01
    float32 = tiny_model()
    float32.set_weights(model.get_weights())
    x = preprocess(load_dataset("sample").x_test[:200], model.preprocessing)
    low, high = (keras.ops.convert_to_numpy(m.predict(x, verbose=0)) for m in (model, float32))
    assert np.abs(low - high).max() <= 0.2, np.abs(low - high).max()
    assert np.mean(low.argmax(1) == high.argmax(1)) >= 0.97


@pytest.mark.slow
@pytest.mark.real_data
def test_short_real_mnist_fit_reaches_80_percent(real_data_dir):
    """vit_mnist with the default recipe, 8,000 real MNIST training images, 3 epochs of batch 64 (375 steps).

    Measured 84.25 % on the first 2,000 test images (python: this test's fit, TF CPU, seed 0); the bar
    sits 4.25 points under it, for another CPU's rounding taking another path through 375 steps. ViTs
    start slowly: the full 5-epoch MNIST run reaches 98 %.

    The bar was 90 % ("lands near 94-95 %") before commit b090080 and no recipe change cost those ten
    points: the earlier setting (6,000 images, warm-up 1 epoch) gives 80.95 % with the code of the commit
    that wrote that claim (06e2997) and 80.75 % with today's; b090080's setting (8,000 images, warm-up
    0.5) gives 84.25 %. The 94-95 % was not what this setting reaches on this code."""
    full = load_dataset("mnist", real_data_dir)
    ds = Dataset(full.x_train[:8000], full.y_train[:8000], full.x_test[:2000], full.y_test[:2000],
                 full.class_names, "mnist")
    keras.utils.set_random_seed(0)
    model = keras_vit.create_model("vit_mnist")
    record = fit(model, ds, TrainConfig(epochs=3, validation_split=0.0, verbose=0))
    assert record["augmentation"] == "none" and record["steps_per_epoch"] == 125
    assert record["test"]["accuracy"] >= 0.80, record["test"]
