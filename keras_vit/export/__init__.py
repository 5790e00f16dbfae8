"""The library's converter: a Keras ViT to ONNX, LiteRT, a web page or a SavedModel, verified, with metadata.

(Not to be confused with the edge kit in the repository's top-level ``export/`` folder, installed as
``keras_vit_edge``, which runs the exported files, nor with the ``keras-vit export`` command, which calls
this package.)

>>> from keras_vit.export import to_onnx, to_saved_model, read_metadata
>>> report = to_onnx("vit_mnist.keras", "vit_mnist.onnx", optimize=True)   # doctest: +SKIP
>>> print("\\n".join(report.summary_lines()))                               # doctest: +SKIP

Modules, by what a reader looks for:

- :func:`export`: one export of any format, dispatched through :data:`PIPELINES`;
- ``onnx`` / ``saved_model``: the two TensorFlow pipelines (:func:`to_onnx`, :func:`to_saved_model`), tf2onnx;
- ``litert`` / ``litert_ops``: the LiteRT pipeline (``TFLiteConverter``, builtin ops only) and the ``.tflite``
  file itself (signature, metadata, operators, running it with ``ai-edge-litert``);
- ``web``: a static site around the verified ONNX file, with the page of ``export/web`` and onnxruntime-web;
- ``options``: :class:`ExportOptions`, the one options object, and its checks;
- ``source``: the model being exported (safe loading, description, serving function, first steps);
- ``verify``: parity checks, the verify images, onnxruntime sessions, the export's errors;
- ``optimize``: ``--optimize`` and ``--quantize int8``, and latency timing;
- ``quantize``: ``--quantize int8-static`` (calibrated QDQ) and ``--quantize fp16`` for ONNX;
- ``graph``: the ONNX rewriter into onnxruntime's fused ops, or standard ops only (``--portable``; a subpackage);
- ``report``: :class:`ExportReport` and the keras-vit metadata of the written files;
- ``tf_subprocess`` (and ``__main__``): the conversion in a TensorFlow child process for JAX/PyTorch callers.

Atomic writes come from :mod:`keras_vit.io`, the preprocessing contract from :mod:`keras_vit.preprocessing`.
Heavy libraries (TensorFlow, tf2onnx, onnxruntime) are imported only when an export runs.
"""

from __future__ import annotations

import importlib
import os

from keras_vit.export.onnx import to_onnx
from keras_vit.export.options import DEFAULT_OPSET, SUPPORTED_OPSETS, ExportOptions
from keras_vit.export.report import REQUIRED_KEYS, SAVED_MODEL_METADATA_FILE, ExportReport, read_metadata
from keras_vit.export.saved_model import to_saved_model
from keras_vit.export.verify import ExportVerificationError

__all__ = [
    "DEFAULT_OPSET",
    "REQUIRED_KEYS",
    "SAVED_MODEL_METADATA_FILE",
    "SUPPORTED_OPSETS",
    "ExportOptions",
    "ExportReport",
    "ExportVerificationError",
    "PIPELINES",
    "export",
    "read_metadata",
    "to_onnx",
    "to_saved_model",
]


#: The pipeline of each format (``module:function``), imported only when an export of that format runs.
PIPELINES = {
    "onnx": "keras_vit.export.onnx:export_onnx",
    "saved_model": "keras_vit.export.saved_model:export_saved_model",
    "litert": "keras_vit.export.litert:export_litert",
    "web": "keras_vit.export.web:export_web",
}


def export(model_or_path, path: str | os.PathLike | None, options: ExportOptions) -> ExportReport:
    """Export ``model_or_path`` as ``options`` say (checked here), with the pipeline of ``options.format``."""
    options = options.checked()
    module, function = PIPELINES[options.format].split(":")
    return getattr(importlib.import_module(module), function)(model_or_path, path, options)
