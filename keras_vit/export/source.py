"""Shared first steps of every export: option checks, output path, the model and its verify data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_vit.errors import UserInputError
from keras_vit.export.model_info import ModelDescription, describe_model, load_keras_model
from keras_vit.export.verify import keras_logits, parity_indices
from keras_vit.export.verify_data import VerifyData, load_verify_data

FORMATS = ("onnx", "saved_model")
QUANTIZATIONS = ("int8",)


def check_format(export_format: str) -> str:
    if export_format not in FORMATS:
        raise UserInputError(f"unknown export format {export_format!r}: choose one of {', '.join(FORMATS)}.")
    return export_format


def check_quantize(quantize: str | None) -> str | None:
    if quantize is None:
        return None
    value = str(quantize).lower()
    if value not in QUANTIZATIONS:
        raise UserInputError(f"unknown quantization {quantize!r}: the only one supported is int8.")
    return value


def default_output(model_or_path, export_format: str, quantize: str | None = None) -> Path:
    """``MODEL.onnx`` (``MODEL.int8.onnx``) or ``MODEL_saved_model`` beside a ``.keras`` path."""
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise UserInputError("give an output path when exporting an in-memory model.")
    source = Path(model_or_path)
    if export_format == "onnx":
        return source.with_name(source.stem + (".int8.onnx" if quantize else ".onnx"))
    return source.with_name(source.stem + "_saved_model")


def is_path(model_or_path) -> bool:
    return isinstance(model_or_path, (str, os.PathLike))


def check_model_path(model_or_path) -> None:
    """Fail before any work when a model path is missing, not a ``.keras`` or not a zip archive."""
    if not is_path(model_or_path):
        return
    path = Path(model_or_path).expanduser()
    if not path.exists():
        raise UserInputError(f"model file {path} does not exist.")
    if path.is_dir() or path.suffix != ".keras":
        raise UserInputError(f"{path} is not a .keras file: save the model with model.save('NAME.keras').")


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
