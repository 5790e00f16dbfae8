"""The training recipe's options and their allowed values, readable without loading a framework.

The command line builds its parser (choices, defaults in ``--help``) from this module, so ``keras-vit
--help`` imports neither Keras nor a backend. The modules that act on the options import their values
from here: :mod:`keras_vit.training` (:class:`TrainConfig`), :mod:`keras_vit.augment` (the policies) and
:mod:`keras_vit.distribute` (the modes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypedDict

from keras_vit.errors import UserInputError

#: Augmentation policies of :mod:`keras_vit.augment`: ``none``; ``digits`` (shift, rotate, zoom, no flips:
#: a mirrored 2 is no digit); ``fashion`` (mirror + shift, black border); ``natural`` (mirror + shift,
#: reflected border, CIFAR-like); ``light`` (shift only, for datasets we know nothing about); ``mirror``
#: (left-right mirror only: objects that fill the frame, where a shift with a black border cuts them, e.g.
#: Fashion-MNIST). ``TrainConfig.augment`` also takes ``"auto"``.
AUGMENT_POLICIES = ("none", "digits", "fashion", "natural", "light", "mirror")
#: ``--distribute`` values (:mod:`keras_vit.distribute`).
DISTRIBUTE_MODES = ("auto", "none", "data-parallel")
#: ``--mixed-precision`` values and the Keras dtype policies they select.
MIXED_PRECISION_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
#: ``evaluate(tta=...)`` / ``--tta`` values: none, or each image and its left-right mirror.
TEST_TIME_AUGMENTATIONS = ("none", "flip")
#: ``TrainConfig.pipeline`` values: augmentation on the device (auto, device) or in a host pipeline.
PIPELINES = ("auto", "device", "tf.data", "pydataset")


@dataclass
class TrainConfig:
    """Everything the recipe needs besides the model and the data.

    The defaults were tuned on ``vit_mnist``: 5 epochs on MNIST (batch 64, peak learning rate 2e-3 after
    half an epoch of warm-up, no augmentation) reach 98.2 % test accuracy; batch 128 at 1e-3 with one
    warm-up epoch and augmentation reached 95.9 %.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        learning_rate: peak learning rate, reached after the warm-up.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: length of the linear warm-up (may be fractional).
        label_smoothing: label smoothing of the cross-entropy loss.
        validation_split: fraction of the training split held out for validation (seeded).
        augment: ``"auto"`` (by dataset, and none for runs under 30 epochs), ``"none"``, or a policy of
            :mod:`keras_vit.augment`.
        seed: seeds weights' initialisation (when the caller builds the model after
            :func:`keras_vit.training.set_seed`), the validation split, shuffling and augmentation.
        output_dir: where ``model.keras``, ``history.json``, ``checkpoints/`` and ``backup/`` go;
            ``None`` writes nothing (and cannot resume).
        mixed_precision: ``None``, ``"bfloat16"`` or ``"float16"``; the model must have been built under
            it (see :func:`keras_vit.training.mixed_precision`).
        jit_compile: passed to ``model.compile`` (``"auto"``: XLA on TensorFlow/JAX where supported).
        checkpoints: save ``checkpoints/epoch_NNN.keras`` after every epoch.
        keep_checkpoints: how many of the newest epoch checkpoints to keep.
        clipnorm: global gradient-norm clipping (``None`` for none).
        pipeline: ``"auto"``/``"device"``: uint8 batches go to ``fit`` (through ``tf.data`` when TensorFlow is
            installed, else a ``PyDataset``) and are scaled, augmented and normalised on the device inside
            the compiled train step (:class:`keras_vit.augment.DeviceAugmentation`; ``"auto"`` falls back
            to the host pipeline under data parallelism, and keeps ``tf.data`` on CPU-only machines with
            TensorFlow). ``"tf.data"`` or ``"pydataset"``: augmentation and normalisation in that host-side
            pipeline instead.
        verbose: Keras' ``fit`` verbosity (``"auto"``/1: progress bar, 2: one line per epoch, 0: silent).
        distribute: ``"none"``, ``"data-parallel"`` or ``"auto"`` (:mod:`keras_vit.distribute`). With data
            parallelism ``batch_size`` is the global batch (split over the devices, learning rate kept) and
            the model must have been built in ``configure_distribution(distribute, devices).scope()``.
        devices: data parallelism over the first ``devices`` devices only (one machine; ``None``: all).
        tta: ``"flip"`` also reports the test accuracy with flip test-time augmentation (``record
            ["test_tta"]``, see :func:`keras_vit.training.evaluate`); ``record["test"]`` stays the
            single-view figure.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    validation_split: float = 0.1
    augment: str = "auto"
    seed: int = 0
    output_dir: str | None = None
    mixed_precision: str | None = None
    jit_compile: bool | str = "auto"
    checkpoints: bool = True
    keep_checkpoints: int = 3
    clipnorm: float | None = 1.0
    pipeline: str = "auto"
    verbose: int | str = "auto"
    distribute: str = "none"
    devices: int | None = None
    tta: str = "none"

    def validate(self) -> None:
        """Raise :class:`UserInputError` for values that cannot work."""
        checks = [
            (int(self.epochs) >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (int(self.batch_size) >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0,
             f"learning rate must be a positive number, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.validation_split < 1,
             f"validation split must be in [0, 1), got {self.validation_split}"),
            (self.mixed_precision in (None, *MIXED_PRECISION_POLICIES),
             f"mixed precision must be bfloat16 or float16, got {self.mixed_precision!r}"),
            (self.jit_compile in (True, False, "auto"), f"jit_compile must be True, False or 'auto', "
                                                        f"got {self.jit_compile!r}"),
            (self.pipeline in PIPELINES, f"pipeline must be {', '.join(PIPELINES)}, got {self.pipeline!r}"),
            (self.distribute in DISTRIBUTE_MODES,
             f"distribute must be {', '.join(DISTRIBUTE_MODES[:-1])} or {DISTRIBUTE_MODES[-1]}, "
             f"got {self.distribute!r}"),
            (self.tta in TEST_TIME_AUGMENTATIONS,
             f"test-time augmentation must be {' or '.join(TEST_TIME_AUGMENTATIONS)}, got {self.tta!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message[0].upper() + message[1:] + ".")


class TrainRecord(TypedDict, total=False):
    """What :func:`keras_vit.training.fit` returns, and writes as ``output_dir/history.json``: the run's record
    (per-epoch figures under ``history``, as in Keras' ``History.history``; the rest describes the run)."""

    status: str  #: ``running``, ``completed``, ``interrupted`` or ``failed: <reason>``
    history: dict[str, list[float]]  #: ``epoch``, ``loss``, ``accuracy``, ``val_*``, ``learning_rate``, ...
    test: dict[str, Any]  #: ``accuracy``, ``loss``, ``images`` on the test split
    test_tta: dict[str, Any]  #: the same with test-time augmentation (``TrainConfig.tta``)
    epochs_completed: int
    train_time_s: float
    resumed_at_epoch: int  #: after an interruption: the first epoch this run trained
    config: dict[str, Any]  #: the :class:`TrainConfig`, as a dict
    dataset: str
    model: dict[str, Any]  #: ``name``, ``preset``, ``parameters``
    model_path: str
    device: str
    distribution: str
    augmentation: str
    images: dict[str, int]  #: ``train``, ``validation``, ``test``
    steps_per_epoch: int
