"""The options of one export, as one object: checked once, and passed as JSON to the TensorFlow subprocess.

:func:`~keras_vit.export.to_onnx` and :func:`~keras_vit.export.to_saved_model` build an
:class:`ExportOptions` from their keyword arguments, ``keras-vit export`` from its command line; when the
conversion runs in a TensorFlow child process (JAX or PyTorch callers), the same object travels there
as JSON (:meth:`ExportOptions.to_json` / :meth:`ExportOptions.from_json`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_vit.errors import UserInputError
from keras_vit.export.verify import PARITY_TOLERANCE

FORMATS = ("onnx", "saved_model")
QUANTIZATIONS = ("int8",)
DEFAULT_OPSET = 17
#: Opsets this pipeline converts to and checks (tf2onnx 1.17 writes up to 18; 17 adds LayerNormalization).
SUPPORTED_OPSETS = tuple(range(13, 19))
#: Dtypes accepted for raw-pixel inputs when preprocessing is inside the graph.
RAW_INPUT_DTYPES = ("uint8", "float32")


def check_format(export_format: str) -> str:
    if export_format not in FORMATS:
        raise UserInputError(f"unknown export format {export_format!r}: choose one of {', '.join(FORMATS)}.")
    return export_format


def check_opset(opset: int) -> int:
    """``opset`` as an int, or :class:`UserInputError` naming the supported ones."""
    try:
        value = int(opset)
    except (TypeError, ValueError):
        value = None
    if value not in SUPPORTED_OPSETS:
        raise UserInputError(
            f"unsupported ONNX opset {opset!r}: supported opsets are "
            f"{SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]} (default {DEFAULT_OPSET})."
        )
    return value


def check_quantize(quantize: str | None) -> str | None:
    if quantize is None:
        return None
    value = str(quantize).lower()
    if value not in QUANTIZATIONS:
        raise UserInputError(f"unknown quantization {quantize!r}: the only one supported is int8.")
    return value


def input_dtype_for(include_preprocessing: bool, raw_input_dtype: str = "uint8") -> str:
    """The dtype of the exported ``images`` input."""
    if not include_preprocessing:
        return "float32"
    if raw_input_dtype not in RAW_INPUT_DTYPES:
        raise UserInputError(f"raw input dtype must be one of {', '.join(RAW_INPUT_DTYPES)}, got {raw_input_dtype!r}.")
    return raw_input_dtype


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export is asked to do besides which model and where to write.

    ``format``: ``"onnx"`` or ``"saved_model"``. ``opset``, ``optimize`` and ``quantize`` (``"int8"`` or
    ``None``) apply to ONNX only. ``include_preprocessing`` puts ``(raw * scale - mean) / std`` in the
    graph, whose input is then raw pixels of ``raw_input_dtype``; ``include_probabilities`` adds a
    softmax output. ``verify_data`` names the images checked on (a dataset name or an ``.npz``), of which
    ``verify_limit`` are read; ``tolerance`` bounds the max abs logit difference against Keras.
    """

    format: str = "onnx"
    opset: int = DEFAULT_OPSET
    include_preprocessing: bool = False
    include_probabilities: bool = False
    raw_input_dtype: str = "uint8"
    optimize: bool = False
    quantize: str | None = None
    verify_data: str | None = None
    verify_limit: int = 1000
    tolerance: float = PARITY_TOLERANCE

    def checked(self) -> ExportOptions:
        """These options validated and normalised (``opset`` an int, ``quantize`` lower case).

        Raises :class:`UserInputError` with the CLI's messages, in the CLI's order.
        """
        export_format = check_format(self.format)
        if export_format == "saved_model" and (self.optimize or self.quantize):
            raise UserInputError("--optimize and --quantize apply to ONNX exports only (use --format onnx).")
        opset = check_opset(self.opset) if export_format == "onnx" else self.opset
        quantize = check_quantize(self.quantize)
        input_dtype_for(self.include_preprocessing, self.raw_input_dtype)
        verify_data = None if self.verify_data is None else os.fspath(self.verify_data)
        return dataclasses.replace(self, format=export_format, opset=opset, quantize=quantize,
                                   verify_data=verify_data)

    def for_another_process(self) -> ExportOptions:
        """The same options with a verify-data file's path made absolute (the child may run elsewhere)."""
        if self.verify_data is not None and Path(self.verify_data).expanduser().is_file():
            return dataclasses.replace(self, verify_data=str(Path(self.verify_data).expanduser().resolve()))
        return self

    @property
    def input_dtype(self) -> str:
        """The dtype of the exported ``images`` input."""
        return input_dtype_for(self.include_preprocessing, self.raw_input_dtype)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the exported outputs, in order."""
        return ("logits", "probabilities") if self.include_probabilities else ("logits",)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ExportOptions:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UserInputError(f"unknown export option(s): {', '.join(sorted(unknown))}.")
        return cls(**data)
