"""The model being exported: loading and describing it, the serving function, the shared first steps.

A ``.keras`` file is opened in Keras' safe mode after checks that give one clear sentence for a missing,
non-``.keras`` or corrupt file; :func:`describe_model` says what the exporters need (image size,
channels, classes, preprocessing); :func:`serving_function` is the ``tf.function`` both exporters
convert; :func:`prepare` loads the model, its verify images and Keras' reference logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit import model_file
from keras_vit.errors import UserInputError
from keras_vit.export.options import input_dtype_for
from keras_vit.export.verify import VerifyData, keras_logits, load_verify_data, parity_indices
from keras_vit.model_file import load_keras_model
from keras_vit.preprocessing import per_channel

# --------------------------------------------------------------------------------------------------
# Loading and describing the model


@dataclass
class ModelDescription:
    """What the exporters need from a model: its input geometry, classes and preprocessing.

    ``is_vit`` is false for a plain Keras image classifier exported generically; its preprocessing is
    then unknown and recorded as the identity on raw pixels (``scale`` 1, ``mean`` 0, ``std`` 1).
    """

    image_size: tuple[int, int]
    channels: int
    num_classes: int
    class_names: list[str]
    preprocessing: dict[str, Any]
    preset: str | None
    is_vit: bool
    name: str = "model"
    num_heads: int = 0
    hidden_dim: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return (*self.image_size, self.channels)


def describe_model(model) -> ModelDescription:
    """A :class:`ModelDescription` for a keras-vit ``VisionTransformer`` or a plain image classifier.

    A plain classifier must have one 4-D input ``(batch, H, W, C)`` with known ``H, W, C`` and one 2-D
    output; anything else raises :class:`UserInputError`.
    """
    from keras_vit.model import VisionTransformer

    if isinstance(model, VisionTransformer):
        names = model.class_names or [str(i) for i in range(model.num_classes)]
        return ModelDescription(
            image_size=tuple(int(s) for s in model.image_size),
            channels=int(model.channels),
            num_classes=int(model.num_classes),
            class_names=[str(n) for n in names],
            preprocessing=_plain_preprocessing(model.preprocessing, model.channels),
            preset=model.preset,
            is_vit=True,
            name=model.name,
            num_heads=int(model.num_heads),
            hidden_dim=int(model.hidden_dim),
        )
    return _describe_generic(model)


def _plain_preprocessing(preprocessing: dict[str, Any], channels: int) -> dict[str, Any]:
    """``{"scale": float, "mean": [C floats], "std": [C floats]}`` with one value per channel."""
    return per_channel(preprocessing, channels, default_scale=1.0)


def _describe_generic(model) -> ModelDescription:
    kind = type(model).__name__
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    not_vit = f"the model ({kind}) is not a keras-vit VisionTransformer"
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserInputError(
            f"{not_vit}, nor a plain image classifier with one image input and one output "
            f"(it has {len(inputs)} inputs and {len(outputs)} outputs)."
        )
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(in_shape) != 4 or any(s is None for s in in_shape[1:]) or len(out_shape) != 2 or out_shape[1] is None:
        raise UserInputError(
            f"{not_vit}, nor a plain image classifier: expected one (batch, height, width, channels) input "
            f"and (batch, classes) output, got {in_shape} -> {out_shape}."
        )
    _, height, width, channels = (int(s) if s is not None else None for s in in_shape)
    num_classes = int(out_shape[1])
    return ModelDescription(
        image_size=(height, width),
        channels=channels,
        num_classes=num_classes,
        class_names=[str(i) for i in range(num_classes)],
        preprocessing={"scale": 1.0, "mean": [0.0] * channels, "std": [1.0] * channels},
        preset=None,
        is_vit=False,
        name=getattr(model, "name", "model"),
        warnings=[
            f"{not_vit}: exported as a generic image classifier; its preprocessing is unknown and "
            "recorded as raw pixels (scale 1, mean 0, std 1)."
        ],
    )


# --------------------------------------------------------------------------------------------------
# The serving function both exporters convert


def serving_function(
    model,
    info: ModelDescription,
    *,
    include_preprocessing: bool = False,
    include_probabilities: bool = False,
    raw_input_dtype: str = "uint8",
):
    """A ``tf.function`` with input signature ``TensorSpec([None, H, W, C], dtype, name="images")``.

    Returns ``(function, input_signature)``; the function returns a dict ``{"logits": ...}`` (plus
    ``"probabilities"``, the softmax of the logits, when asked), which names the graph outputs.
    """
    import tensorflow as tf

    from keras_vit.preprocessing import channel_constants, normalize

    dtype = input_dtype_for(include_preprocessing, raw_input_dtype)
    height, width = info.image_size
    spec = (tf.TensorSpec([None, height, width, info.channels], tf.as_dtype(dtype), name="images"),)
    scale, mean, std = channel_constants(info.preprocessing, info.channels)

    @tf.function(input_signature=spec, autograph=False)
    def serve(images):
        x = images
        if include_preprocessing:
            x = normalize(tf.cast(x, tf.float32), scale, mean, std)
        logits = tf.cast(model(x, training=False), tf.float32)
        outputs = {"logits": tf.identity(logits, name="logits")}
        if include_probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1, name="probabilities")
        return outputs

    return serve, spec


# --------------------------------------------------------------------------------------------------
# The model to export: option checks, output path, preparation


#: The file suffix (or folder suffix) of each export format.
OUTPUT_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "saved_model": "_saved_model", "web": "_web"}


def default_output(model_or_path, export_format: str, quantize: str | None = None) -> Path:
    """The output beside a ``.keras`` path: ``MODEL.onnx``, ``MODEL.int8.onnx``, ``MODEL.fp16.tflite``,
    ``MODEL_saved_model`` or ``MODEL_web`` (a folder)."""
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise UserInputError("give an output path when exporting an in-memory model.")
    source = Path(model_or_path)
    suffix = OUTPUT_SUFFIXES[export_format]
    if suffix.startswith("."):
        return source.with_name(source.stem + (f".{quantize}" if quantize else "") + suffix)
    return source.with_name(source.stem + suffix)


def is_path(model_or_path) -> bool:
    return isinstance(model_or_path, (str, os.PathLike))


def check_model_path(model_or_path) -> None:
    """Fail before any work when a model path is missing or not a ``.keras`` file (in-memory models pass)."""
    if is_path(model_or_path):
        model_file.check_model_path(model_or_path)


@dataclass
class Prepared:
    """The loaded model, what the export needs to know of it, its verify data and Keras' logits."""

    model: object
    info: ModelDescription
    data: VerifyData
    parity_index: np.ndarray
    reference: np.ndarray

    def feed(self, include_preprocessing: bool, raw_input_dtype: str = "uint8") -> np.ndarray:
        return self.data.feed(include_preprocessing, raw_input_dtype)


def prepare(model_or_path, verify_data: str | os.PathLike | None, verify_limit: int = 1000) -> Prepared:
    """Load (if a path) and describe the model, load the verify images, compute Keras' reference logits."""
    model = load_keras_model(model_or_path) if is_path(model_or_path) else model_or_path
    info = describe_model(model)
    data = load_verify_data(verify_data, info.image_size, info.channels, info.preprocessing, limit=verify_limit)
    index = parity_indices(len(data))
    reference = keras_logits(model, data.inputs[index])
    if reference.shape != (len(index), info.num_classes):
        raise UserInputError(f"the model returned logits of shape {reference.shape} for {len(index)} images.")
    return Prepared(model, info, data, index, reference)
