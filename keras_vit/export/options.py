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

FORMATS = ("onnx", "saved_model", "litert", "web")
#: ``--quantize`` modes per format. A name means the same in every format: ``fp16`` float16 weights (and
#: activations where the runtime computes in float16), float32 inputs and outputs; ``int8`` dynamic range
#: (int8 weights, activations quantised at run time); ``int8-static`` full integer, calibrated on real
#: images; ``int16x8`` int16 activations with int8 weights, calibrated (LiteRT only).
QUANTIZATIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("int8", "int8-static", "fp16"),
    "litert": ("fp16", "int8", "int8-static", "int16x8"),
    "web": ("int8",),
    "saved_model": (),
}
#: The modes that calibrate on images (``--calibration-data``; default: the verify images).
CALIBRATED_QUANTIZATIONS = ("int8-static", "int16x8")
#: How many calibration images a calibrated quantisation reads by default.
CALIBRATION_LIMIT = 256
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


def check_quantize(quantize: str | None, export_format: str = "onnx") -> str | None:
    """``quantize`` in lower case, or :class:`UserInputError` naming the modes ``export_format`` has."""
    if quantize is None:
        return None
    value = str(quantize).lower()
    allowed = QUANTIZATIONS[check_format(export_format)]
    if value not in allowed:
        if not allowed:
            raise UserInputError(f"--quantize does not apply to --format {export_format}.")
        raise UserInputError(
            f"unknown quantization {quantize!r} for --format {export_format}: choose one of {', '.join(allowed)}."
        )
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

    ``format``: one of :data:`FORMATS`. ``opset`` and ``optimize`` apply to the ONNX-based formats
    (``onnx``, ``web``); ``portable`` (ONNX, implies ``optimize``) rewrites into standard ONNX ops only
    instead of onnxruntime's fused ones. ``quantize``: one of :data:`QUANTIZATIONS` for the format, or
    ``None``; ``calibration_data`` names the images a calibrated mode (:data:`CALIBRATED_QUANTIZATIONS`)
    reads (default: the verify images), ``calibration_limit`` how many. ``include_preprocessing`` puts
    ``(raw * scale - mean) / std`` in the graph, whose input is then raw pixels of ``raw_input_dtype``;
    ``include_probabilities`` adds a
    softmax output. ``webgpu`` (``web``, float models only) adds onnxruntime-web's WebGPU build to the site.
    ``verify_data`` names the images checked on (a dataset name or an ``.npz``), of which
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
    portable: bool = False
    calibration_data: str | None = None
    calibration_limit: int = CALIBRATION_LIMIT
    webgpu: bool = False

    def checked(self) -> ExportOptions:
        """These options validated and normalised (``opset`` an int, ``quantize`` lower case).

        Raises :class:`UserInputError` with the CLI's messages, in the CLI's order.
        """
        export_format = check_format(self.format)
        if export_format == "saved_model" and (self.optimize or self.quantize):
            raise UserInputError("--optimize and --quantize apply to ONNX exports only (use --format onnx).")
        if self.portable and export_format != "onnx":
            raise UserInputError("--portable applies to --format onnx only.")
        opset = check_opset(self.opset) if export_format in ("onnx", "web") else self.opset
        quantize = check_quantize(self.quantize, export_format)
        if self.webgpu and export_format != "web":
            raise UserInputError("--webgpu applies to --format web only.")
        if self.webgpu and quantize is not None:
            raise UserInputError(
                f"--webgpu applies to float models only: onnxruntime-web's WebGPU gives wrong results for "
                f"--quantize {quantize} models (they run on WASM: drop --webgpu)."
            )
        if self.calibration_data is not None and quantize not in CALIBRATED_QUANTIZATIONS:
            raise UserInputError(
                f"--calibration-data applies to --quantize {' or '.join(CALIBRATED_QUANTIZATIONS)} only."
            )
        if int(self.calibration_limit) < 1:
            raise UserInputError(f"calibration_limit must be at least 1, got {self.calibration_limit}.")
        input_dtype_for(self.include_preprocessing, self.raw_input_dtype)
        verify_data = None if self.verify_data is None else os.fspath(self.verify_data)
        calibration_data = None if self.calibration_data is None else os.fspath(self.calibration_data)
        return dataclasses.replace(self, format=export_format, opset=opset, quantize=quantize,
                                   verify_data=verify_data, calibration_data=calibration_data,
                                   optimize=self.optimize or self.portable,
                                   calibration_limit=int(self.calibration_limit))

    def for_another_process(self) -> ExportOptions:
        """The same options with data files' paths made absolute (the child may run elsewhere)."""
        changes = {}
        for name in ("verify_data", "calibration_data"):
            value = getattr(self, name)
            if value is not None and Path(value).expanduser().is_file():
                changes[name] = str(Path(value).expanduser().resolve())
        return dataclasses.replace(self, **changes)

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
