"""Export a keras-vit model to ONNX or a TensorFlow SavedModel, verified against Keras, with metadata.

>>> from keras_vit.export import to_onnx, to_saved_model, read_metadata
>>> report = to_onnx("vit_mnist.keras", "vit_mnist.onnx", optimize=True)   # doctest: +SKIP
>>> print("\\n".join(report.summary_lines()))                               # doctest: +SKIP

Modules, one job each: ``model_info`` (load/describe the model), ``verify_data`` (real images to check
on), ``signature`` (the serving function), ``convert`` (tf2onnx), ``optimize``, ``quantize``,
``metadata``, ``verify``, ``atomic`` (temp-name-then-rename writes), ``backend`` (TensorFlow
subprocess for JAX/PyTorch callers), ``onnx`` / ``saved_model`` (the pipelines), ``report``.
Heavy libraries (TensorFlow, tf2onnx, onnxruntime) are imported only when an export runs.
"""

from __future__ import annotations

from keras_vit.export.convert import DEFAULT_OPSET, SUPPORTED_OPSETS
from keras_vit.export.errors import ExportVerificationError
from keras_vit.export.metadata import REQUIRED_KEYS, SAVED_MODEL_METADATA_FILE, read_metadata
from keras_vit.export.onnx import to_onnx
from keras_vit.export.report import ExportReport
from keras_vit.export.saved_model import to_saved_model

__all__ = [
    "DEFAULT_OPSET",
    "REQUIRED_KEYS",
    "SAVED_MODEL_METADATA_FILE",
    "SUPPORTED_OPSETS",
    "ExportReport",
    "ExportVerificationError",
    "read_metadata",
    "to_onnx",
    "to_saved_model",
]
