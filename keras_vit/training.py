"""The training recipe for small data, usable from Python and from ``keras-vit train``.

AdamW (no weight decay on biases, norms, class token and positional embedding), linear warm-up then
cosine decay, label smoothing on one-hot labels, light augmentation on the device inside the compiled
train step (uint8 batches in; never inside the saved model: :mod:`keras_vit.augment`), a seeded
held-out validation split, a ``.keras`` checkpoint every epoch, resume after an interruption
(``keras.callbacks.BackupAndRestore``), a stop with a clear error when the loss becomes NaN, and the
history written as JSON.

>>> import keras_vit
>>> from keras_vit.datasets import load_dataset
>>> from keras_vit.training import TrainConfig, fit, evaluate
>>> model = keras_vit.create_model("vit_mnist")
>>> record = fit(model, load_dataset("sample"), TrainConfig(epochs=3, output_dir="runs/demo"))
>>> record["test"]["accuracy"]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_vit.augment import DeviceAugmentation, build_augmentation, resolve_policy
from keras_vit.datasets import Dataset, check_labels, match_model
from keras_vit.errors import KerasViTError, TrainingInterrupted, UserInputError
from keras_vit.io import atomic_save_model, atomic_write_json
from keras_vit.options import (  # noqa: F401 - re-exported
    MIXED_PRECISION_POLICIES,
    PIPELINES,
    TEST_TIME_AUGMENTATIONS,
    TrainConfig,
    TrainRecord,
)
from keras_vit.preprocessing import channel_constants as preprocessing_constants
from keras_vit.preprocessing import normalize, preprocess

#: Variables (by name) that AdamW does not decay.
NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "class_token", "position_embedding"]


# --------------------------------------------------------------------------------------------------
# Environment: seeds, precision, device


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend (call before building the model for reproducible weights)."""
    keras.utils.set_random_seed(int(seed))


@contextlib.contextmanager
def mixed_precision(precision: str | None) -> Iterator[None]:
    """Build (and train) models under ``mixed_bfloat16``/``mixed_float16`` inside the block.

    The global Keras dtype policy is restored on exit; the model's head stays float32 either way.
    """
    if precision is None:
        yield
        return
    if precision not in MIXED_PRECISION_POLICIES:
        raise UserInputError(f"Mixed precision must be bfloat16 or float16, got {precision!r}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_PRECISION_POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def describe_device() -> str:
    """``"<backend> on <device>"``: the accelerator Keras will use, or CPU."""
    backend = keras.backend.backend()
    device = "CPU"
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                device = f"{len(gpus)} GPU(s)"
        elif backend == "jax":
            import jax

            first = jax.devices()[0]
            if first.platform != "cpu":
                device = f"{len(jax.devices())} x {getattr(first, 'device_kind', first.platform)}"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
            elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                device = "Apple MPS"
    except Exception:  # device probing is informative only
        pass
    return f"{backend} on {device}"


# --------------------------------------------------------------------------------------------------
# Input pipelines


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """``(x_train, y_train, x_val, y_val)``: a seeded random ``fraction`` of the rows held out."""
    n_val = int(round(len(x) * fraction))
    if fraction > 0 and (n_val < 1 or n_val >= len(x)):
        raise UserInputError(
            f"A validation split of {fraction} leaves no training or no validation images out of {len(x)}."
        )
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


def _apply_layers(layers: list, images):
    for layer in layers:
        images = layer(images, training=True)
    return images


def tf_data_pipeline(x: np.ndarray, y: np.ndarray, *, batch_size: int, preprocessing: dict,
                     num_classes: int, augmentation: keras.Sequential | None = None,
                     shuffle: bool = False, seed: int = 0, raw: bool = False):
    """A ``tf.data.Dataset`` of ``(preprocessed float32 images, one-hot labels)`` batches.

    Works as ``fit`` input on every backend. Augmentation runs on raw 0..255 pixels, before the
    model's preprocessing. ``raw=True``: the uint8 images as they are (no augmentation, no
    preprocessing: :class:`keras_vit.augment.DeviceAugmentation` does both on the device).
    """
    import tensorflow as tf

    scale, mean, std = preprocessing_constants(preprocessing, x.shape[-1])
    layers = list(augmentation.layers) if augmentation is not None else []
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def transform(images, labels):
        if raw:
            return images, tf.one_hot(labels, num_classes)
        images = tf.cast(images, tf.float32)
        if layers:
            images = _apply_layers(layers, images)
        images = normalize(images, scale, mean, std)
        return images, tf.one_hot(labels, num_classes)

    # No autotuning: its model thread sleeps up to 60 s between rounds, and dropping an iterator waits
    # for it; Keras drops two per epoch (training and validation), which stalled every epoch. Fixed
    # settings keep the input pipeline ahead of the model all the same.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.map(transform, num_parallel_calls=1 if raw else min(os.cpu_count() or 1, 4)).prefetch(2)
    return ds.with_options(options)


class ArrayBatches(keras.utils.PyDataset):
    """The same batches as :func:`tf_data_pipeline` without TensorFlow (augmentation runs eagerly)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, preprocessing: dict,
                 num_classes: int, augmentation: keras.Sequential | None = None,
                 shuffle: bool = False, seed: int = 0, raw: bool = False):
        super().__init__()
        self.raw = raw
        self.x, self.y, self.batch_size = x, y.astype(np.int64), int(batch_size)
        self.preprocessing, self.num_classes = preprocessing, num_classes
        self.layers = list(augmentation.layers) if augmentation is not None else []
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        if self.raw:
            return self.x[rows], np.eye(self.num_classes, dtype=np.float32)[self.y[rows]]
        images = self.x[rows].astype(np.float32)
        if self.layers:
            images = keras.ops.convert_to_numpy(_apply_layers(self.layers, images))
        images = preprocess(images, self.preprocessing)
        return images, np.eye(self.num_classes, dtype=np.float32)[self.y[rows]]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.x))


def _tf_data_is_faster() -> bool:
    """True on a CPU-only machine with TensorFlow: there the "device" is the CPU the step runs on, and
    ``tf.data``'s parallel map overlaps the augmentation with the step instead of adding to it (on two
    shared cores, a ``digits`` epoch took 5.8 s through ``tf.data`` against 8.2 s on the device)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return describe_device().endswith(" on CPU")


def make_pipeline(x, y, *, kind: str = "auto", **kwargs):
    """:func:`tf_data_pipeline` if TensorFlow is importable (or ``kind="tf.data"``), else :class:`ArrayBatches`."""
    if kind in ("auto", "device"):
        try:
            import tensorflow  # noqa: F401

            kind = "tf.data"
        except ImportError:
            kind = "pydataset"
    return tf_data_pipeline(x, y, **kwargs) if kind == "tf.data" else ArrayBatches(x, y, **kwargs)


# --------------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.AdamW:
    """AdamW with a linear warm-up to ``learning_rate`` then cosine decay to 0 over the run."""
    total = max(int(config.epochs) * int(steps_per_epoch), 1)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(total - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay, global_clipnorm=config.clipnorm
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


# --------------------------------------------------------------------------------------------------
# Files


# --------------------------------------------------------------------------------------------------
# Callbacks


class NaNGuard(keras.callbacks.Callback):
    """Stop training with :class:`KerasViTError` as soon as the loss is NaN or infinite.

    It raises from the batch, so no later callback (backup, checkpoint) saves the broken weights.
    """

    def __init__(self, learning_rate: float, progress_bar: bool = False):
        super().__init__()
        self.learning_rate = learning_rate
        self.progress_bar = progress_bar
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(keras.ops.convert_to_numpy(loss))):
            if self.progress_bar:  # end the progress bar's line before the error is printed
                print(flush=True)
            raise KerasViTError(
                f"loss became NaN at epoch {self.epoch + 1}, batch {batch + 1}; try a lower "
                f"--learning-rate (it was {self.learning_rate:g}) or train without --mixed-precision."
            )


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that says when it resumes, counts the epochs it has backed up, and turns a
    backup of another model into a clear user error. Keras deletes the backup when training ends."""

    def __init__(self, backup_dir: str, epochs: int, verbose: bool = True):
        super().__init__(backup_dir)
        self.epochs, self.verbose = int(epochs), verbose
        self.saved_epochs = 0  # epochs whose weights are in the backup

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except Exception as err:
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise UserInputError(
                f"Cannot resume from {self.backup_dir}: it is the backup of a different run ({detail}); "
                "delete that folder to start afresh, or choose another --output."
            ) from None
        self.saved_epochs = int((_read_json(Path(self._training_metadata_path)) or {}).get("epoch", 0))
        self._current_epoch = self.saved_epochs
        if self.saved_epochs and self.verbose:
            print(f"Resuming from epoch {min(self.saved_epochs + 1, self.epochs)} of {self.epochs}: the "
                  f"{self.saved_epochs} completed epoch{'s' if self.saved_epochs != 1 else ''} "
                  f"restored from {self.backup_dir}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.saved_epochs = epoch + 1


class EpochCheckpoints(keras.callbacks.Callback):
    """Save ``folder/epoch_NNN.keras`` (atomically) after every epoch, keeping the newest ``keep``.

    ``publish=False`` (non-chief processes of a multi-host run) saves in step with the chief and keeps
    nothing (see :func:`atomic_save_model`).
    """

    def __init__(self, folder: str | os.PathLike, keep: int = 3, publish: bool = True):
        super().__init__()
        self.folder, self.keep, self.publish = Path(folder), max(int(keep), 1), publish

    def on_epoch_end(self, epoch, logs=None):
        atomic_save_model(self.model, self.folder / f"epoch_{epoch + 1:03d}.keras", publish=self.publish)
        if not self.publish:
            return
        for old in sorted(self.folder.glob("epoch_*.keras"))[:-self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()


class HistoryRecorder(keras.callbacks.Callback):
    """Collect per-epoch logs (joined with the epochs of an interrupted run) and write them as JSON."""

    def __init__(self, record: dict, path: Path | None, previous: dict | None, optimizer_lr,
                 backup: ResumableBackup | None = None):
        super().__init__()
        self.record, self.path, self.previous = record, path, previous or {}
        self._lr = optimizer_lr
        self.backup = backup  # runs before this callback: it knows how many epochs were restored
        self._epoch_start = 0.0

    def on_train_begin(self, logs=None):
        epoch = self.backup.saved_epochs if self.backup is not None else 0  # > 0 after a resume
        kept = {k: list(v[:epoch]) for k, v in self.previous.get("history", {}).items()}
        if epoch and len(kept.get("epoch", [])) == epoch:
            self.record["history"] = kept
            self.record["resumed_at_epoch"] = epoch + 1
            self.record["epochs_completed"] = epoch
            self.record["train_time_s"] = float(self.previous.get("train_time_s", 0.0))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        history = self.record["history"]
        entry = {k: float(keras.ops.convert_to_numpy(v)) for k, v in (logs or {}).items()}
        entry.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self._lr())))
        entry["epoch_time_s"] = time.perf_counter() - self._epoch_start
        history.setdefault("epoch", []).append(epoch + 1)
        for key, value in entry.items():
            history.setdefault(key, []).append(value)
        self.record["epochs_completed"] = epoch + 1
        self.record["train_time_s"] = self.record.get("train_time_s", 0.0) + entry["epoch_time_s"]
        if self.path is not None:
            atomic_write_json(self.record, self.path)


# --------------------------------------------------------------------------------------------------
# The recipe


def _model_input(model: keras.Model) -> tuple[tuple[int, int], int, dict, int]:
    shape = model.input_shape
    image_size = tuple(getattr(model, "image_size", shape[1:3]))
    channels = int(getattr(model, "channels", shape[-1]))
    preprocessing = dict(getattr(model, "preprocessing", None) or {"scale": 1.0 / 255.0})
    num_classes = int(getattr(model, "num_classes", model.output_shape[-1]))
    return image_size, channels, preprocessing, num_classes


def fit(model: keras.Model, dataset: Dataset, config: TrainConfig | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None, distribution: Any = None) -> TrainRecord:
    """Train ``model`` on ``dataset`` with the recipe; returns the run's :class:`TrainRecord` (a dict, also
    written as ``history.json``; its ``"history"`` holds the per-epoch figures).

    The model is (re)compiled here. Images are resized / channel-converted to the model's input if
    they differ (a note says so). With ``config.output_dir``, a rerun after an interruption resumes
    from the last completed epoch, and the trained model is written to ``output_dir/model.keras``.

    Returns:
        The record: ``{"history": {"epoch": [...], "loss": [...], "accuracy": [...], "val_loss": ...,
        "val_accuracy": ..., "learning_rate": ..., "epoch_time_s": ...}, "test": {"accuracy", "loss"},
        "epochs_completed", "train_time_s", "config", "dataset", "model", "device", "augmentation", ...}``
        (every key: :class:`keras_vit.options.TrainRecord`).

    ``distribution``: an optional :class:`keras_vit.distribute.Distribution`; the model must have been
    built in its ``scope()``. Compiling and fitting then run in that scope, its ``prepare_optimizer`` and
    ``full_batches`` are applied.

    Raises:
        KerasViTError: the loss became NaN (nothing broken is saved).
        UserInputError: bad configuration, labels that do not fit the model...
    """
    config = config or TrainConfig()
    config.validate()
    if distribution is None and config.distribute != "none":
        from keras_vit.distribute import configure_distribution

        distribution = configure_distribution(config.distribute, config.devices)
    image_size, channels, preprocessing, num_classes = _model_input(model)
    _check_precision(model, config.mixed_precision)
    check_labels(dataset, num_classes)
    data = match_model(dataset, image_size, channels)

    x_train, y_train, x_val, y_val = split_validation(data.x_train, data.y_train,
                                                      config.validation_split, config.seed)
    policy = resolve_policy(config.augment, dataset.name, channels, int(config.epochs))
    on_device = config.pipeline == "device" or (config.pipeline == "auto" and distribution is None
                                                 and not _tf_data_is_faster())
    common = dict(batch_size=int(config.batch_size), preprocessing=preprocessing, num_classes=num_classes,
                  raw=on_device)
    train_data = make_pipeline(x_train, y_train, kind=config.pipeline, shuffle=True, seed=config.seed,
                               augmentation=None if on_device else build_augmentation(policy, config.seed),
                               **common)
    val_data = make_pipeline(x_val, y_val, kind=config.pipeline, **common) if len(x_val) else None
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    scope = contextlib.nullcontext()
    if distribution is not None:
        distribution.check_model(model)
        distribution.prepare_model(model)
        distribution.global_batch_size(config.batch_size)
        train_data = distribution.full_batches(train_data, config.batch_size)
        if distribution.needs_full_batches and len(x_val) < config.batch_size:
            val_data = None  # not one full batch to validate on
        val_data = distribution.full_batches(val_data, config.batch_size)
        if distribution.needs_full_batches:
            steps_per_epoch = max(len(x_train) // config.batch_size, 1)
        scope = distribution.scope()
    if distribution is not None:
        with distribution.scope():  # the optimizer's variables must belong to the same strategy
            optimizer = distribution.prepare_optimizer(build_optimizer(config, steps_per_epoch))
    else:
        optimizer = build_optimizer(config, steps_per_epoch)
    chief = distribution is None or distribution.is_chief  # only the chief writes files

    out = Path(config.output_dir) if config.output_dir else None
    history_path = out / "history.json" if out and chief else None
    previous = _read_json(history_path) if history_path and (out / "backup").is_dir() else None
    record: TrainRecord = {
        "status": "running",
        "dataset": dataset.name,
        "model": {"name": model.name, "preset": getattr(model, "preset", None),
                  "parameters": int(sum(int(np.prod(v.shape)) for v in model.weights))},
        "device": describe_device(),
        "distribution": distribution.describe() if distribution is not None else "single device",
        "augmentation": policy,
        "config": asdict(config),
        "images": {"train": len(x_train), "validation": len(x_val), "test": len(data.x_test)},
        "steps_per_epoch": steps_per_epoch,
        "history": {},
        "epochs_completed": 0,
        "train_time_s": 0.0,
    }
    guard = NaNGuard(config.learning_rate, config.verbose in ("auto", 1))
    all_callbacks: list[keras.callbacks.Callback] = [guard]
    backup = None
    if out:
        backup_dir = out / "backup" if chief else out / f"backup_worker_{distribution.worker_index}"
        backup = ResumableBackup(str(backup_dir), int(config.epochs), verbose=bool(config.verbose) and chief)
        all_callbacks.append(backup)
        if config.checkpoints:  # every process saves in step; only the chief keeps the files
            all_callbacks.append(EpochCheckpoints(out / "checkpoints", config.keep_checkpoints, publish=chief))
    recorder = HistoryRecorder(record, history_path, previous, lambda: optimizer.learning_rate, backup)
    all_callbacks += [recorder, *(callbacks or [])]

    if config.verbose:
        print(f"Training {model.name} ({record['model']['parameters']:,} parameters) on {data.describe()}")
        print(f"  {len(x_train):,} train / {len(x_val):,} validation images, {_count(config.epochs, 'epoch')} of "
              f"{_count(steps_per_epoch, 'step')} (batch {config.batch_size}), augmentation {policy}, "
              f"{record['device']}" + (f", {config.mixed_precision}" if config.mixed_precision else ""))
        if distribution is not None:
            print(f"  {distribution.describe()}")
        for text in dataset.notes:
            print(f"  note: {text}")
        if out and chief:
            _say_how_it_starts(out)
    try:
        with scope:
            trainer = _compile(model, optimizer, config, preprocessing, channels, policy if on_device else None)
            trainer.fit(train_data, epochs=int(config.epochs), validation_data=val_data,
                        callbacks=all_callbacks, verbose=config.verbose, shuffle=False)
        # Outside the scope: JAX's data-parallel predict needs batches divisible by the device count.
        results = _evaluate_views(model, data, max(int(config.batch_size), 256), config.tta)
        record["test"] = results[0]
        if config.tta != "none":
            record["test_tta"] = results[1]
        if out:
            atomic_save_model(model, out / "model.keras", publish=chief)
            if chief:
                record["model_path"] = str(out / "model.keras")
    except BaseException as err:
        record["status"] = f"failed: {err}" if isinstance(err, KerasViTError) else "interrupted"
        if history_path is not None:
            atomic_write_json(record, history_path)
        if isinstance(err, KeyboardInterrupt) and not isinstance(err, TrainingInterrupted):
            completed = backup.saved_epochs if backup is not None else 0
            running = None if completed >= int(config.epochs) else max(guard.epoch, completed) + 1
            raise TrainingInterrupted(running, int(config.epochs), completed,
                                      backup.backup_dir if backup is not None else None) from err
        raise
    record["status"] = "completed"
    if history_path is not None:
        atomic_write_json(record, history_path)
    return record


def _count(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"2 epochs"``."""
    return f"{n} {noun}{'' if int(n) == 1 else 's'}"


def _say_how_it_starts(out: Path) -> None:
    """One line when ``out`` holds an earlier run that this one does not resume (a resume says so itself)."""
    if (out / "backup").is_dir():
        return
    if (out / "model.keras").exists():
        print(f"Starting over: {out} holds a finished run; its model.keras will be replaced", flush=True)
    elif ((_read_json(out / "history.json") or {}).get("status")) == "interrupted":
        print(f"Starting over: the interrupted run in {out} left no backup to resume from", flush=True)


def _compile(model: keras.Model, optimizer, config: TrainConfig, preprocessing: dict, channels: int,
             device_policy: str | None) -> keras.Model:
    """Compile ``model`` with the recipe's loss and metrics; returns the model ``fit`` trains.

    With ``device_policy`` that is a :class:`DeviceAugmentation` wrapper (uint8 in, augmentation and
    normalisation inside the compiled step), compiled alike; ``model`` is compiled too, sharing the
    optimizer, so that it evaluates and saves (with its optimizer state) exactly as when trained directly.
    """
    def compile_(target: keras.Model) -> None:
        target.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=config.jit_compile,
        )

    compile_(model)
    if device_policy is None:
        return model
    scale, mean, std = preprocessing_constants(preprocessing, channels)
    trainer = DeviceAugmentation(model, device_policy, scale, mean, std, seed=config.seed)
    image_size, _, _, _ = _model_input(model)
    trainer(np.zeros((1, *image_size, channels), np.uint8))  # built before fit: BackupAndRestore needs it
    compile_(trainer)
    return trainer


def evaluate(
    model: keras.Model, dataset: Dataset, batch_size: int = 256, tta: str = "none"
) -> dict[str, Any]:
    """Accuracy and cross-entropy (no label smoothing) of ``model`` on the dataset's test split.

    ``tta="flip"`` is test-time augmentation: each image and its left-right mirror are classified and
    their softmax probabilities averaged (for datasets trained with mirroring, such as
    ``augment="mirror"``; it hurts digits and text). The loss is then that of the averaged probabilities.
    """
    return _evaluate_views(model, dataset, batch_size, tta)[-1]


def _evaluate_views(model: keras.Model, dataset: Dataset, batch_size: int, tta: str) -> list[dict[str, Any]]:
    """``[single view]``, or ``[single view, tta]`` with ``tta="flip"``, from one pass over the test split:
    the single view's predictions count for both results."""
    if tta not in TEST_TIME_AUGMENTATIONS:
        raise UserInputError(f"Test-time augmentation must be one of {', '.join(TEST_TIME_AUGMENTATIONS)}, "
                             f"got {tta!r}.")
    image_size, channels, preprocessing, num_classes = _model_input(model)
    check_labels(dataset, num_classes)
    data = match_model(dataset, image_size, channels)
    totals = [[0, 0.0] for _ in range(1 if tta == "none" else 2)]  # [correct, summed loss] per result
    chunk = max(int(batch_size), 1) * 8
    for start in range(0, len(data.x_test), chunk):
        images = preprocess(data.x_test[start:start + chunk], preprocessing)
        labels = data.y_test[start:start + chunk]
        views = [images] + ([np.ascontiguousarray(images[:, :, ::-1])] if tta == "flip" else [])
        log_probs = [_log_softmax(np.asarray(model.predict(view, batch_size=batch_size, verbose=0), np.float64))
                     for view in views]
        scored = [log_probs[0]]
        if tta != "none":  # log of the mean probability over the views, computed stably
            stacked = np.stack(log_probs)
            top = stacked.max(axis=0)
            scored.append(top + np.log(np.exp(stacked - top).mean(axis=0)))
        for total, log_p in zip(totals, scored, strict=True):
            total[0] += int(np.sum(log_p.argmax(axis=1) == labels))
            total[1] -= float(np.sum(log_p[np.arange(len(labels)), labels]))
    n = len(data.x_test)
    results = [{"accuracy": correct / n, "loss": loss / n, "images": n} for correct, loss in totals]
    if tta != "none":
        results[1]["tta"] = tta
    return results


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))


def _check_precision(model: keras.Model, precision: str | None) -> None:
    wanted = MIXED_PRECISION_POLICIES.get(precision, "float32") if precision else None
    have = model.dtype_policy.name
    if wanted is not None and have != wanted:
        raise UserInputError(
            f"mixed_precision={precision!r} but the model was built with the {have} policy; build it "
            f"inside keras_vit.training.mixed_precision({precision!r})."
        )


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
