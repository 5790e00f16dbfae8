#!/usr/bin/env python3
"""Classify images with a keras-vit ONNX or LiteRT model: numpy + onnxruntime or ai-edge-litert (Pillow for images).

This file is the whole edge runtime: copy it next to ``model.onnx`` (or ``model.tflite``) on the device and run

    python infer.py model.onnx photo.jpg digits/ batch.npz --top-k 3 [--json]
    python infer.py model.onnx --benchmark --batch-size 1 --runs 200
    python infer.py model.tflite photo.jpg --json        # LiteRT: ai-edge-litert instead of onnxruntime

A ``.tflite`` file (LiteRT, ``keras-vit export --format litert``) runs with ``ai_edge_litert``'s
interpreter (XNNPACK on CPU); its keras-vit metadata is read from the flatbuffer's metadata map. Running
one imports neither onnxruntime nor TensorFlow.

Everything the model needs (image size, channels, scaling/normalisation, class names) is read from the
ONNX file's metadata (``metadata_props``) written by ``keras_vit.export``. It never imports Keras,
TensorFlow, JAX or PyTorch.

Inputs
    Image files (PNG, JPEG, BMP, GIF, TIFF, WebP... anything Pillow reads), folders (walked recursively
    in sorted order; hidden files and folders are ignored), and ``.npy``/``.npz`` arrays of raw pixels:
    ``(N, H, W)``, ``(N, H, W, C)``, or a single ``(H, W)``/``(H, W, C)`` image, uint8 or float on the
    0..255 scale, at the model's height and width. ``.npy`` files are memory-mapped; an ``.npz`` must hold
    one array, or one named ``images``, or pass ``--npz-key``.

Preprocessing
    Images are converted to the model's channels (grayscale <-> RGB, alpha dropped, palette/CMYK/1-bit
    expanded; 16-bit images scaled by 255/65535), resized bilinearly to the model's size, then mapped
    with the metadata's ``input = (raw * scale - mean) / std``. ``preprocessing == {}`` means the graph
    does it and gets raw pixels.

Exit codes
    0: every input classified; 1: some inputs were skipped (each named in a warning on stderr);
    2: unusable model, option or array (one line on stderr, nothing classified after it).

Python API
    >>> clf = Classifier("model.onnx", threads=2)
    >>> for p in clf.classify_paths(["digits/"], top_k=3):
    ...     print(p.path, p.top_k[0].label, p.top_k[0].probability)
    >>> probs = clf.predict(uint8_batch)  # (N, H, W[, C]) raw pixels -> (N, classes) probabilities
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BenchmarkResult",
    "Classifier",
    "InferenceError",
    "InputSpec",
    "Label",
    "ModelInfo",
    "Prediction",
    "SkippedInput",
    "main",
    "preprocess_arrays",
    "preprocess_image",
]

EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_ERROR = 2

ARRAY_SUFFIXES = (".npy", ".npz")
_SUPPORTED_CHANNELS = (1, 3, 4)
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}
_ARRAY_CHUNK = 256  # array rows preprocessed at once (vectorised), independent of the batch size


class InferenceError(Exception):
    """Something the user must fix (model, option, array file): reported as one line, exit code 2."""

    exit_code = EXIT_ERROR


class SkippedInput(Exception):
    """One input that could not be read; it is reported on stderr and skipped, the rest still run."""


# ----------------------------------------------------------------------------------------------------
# What the model expects
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """How raw pixels become one model input.

    Attributes:
        height, width, channels: the model's image size.
        dtype: numpy dtype name of the graph input (``float32``, ``float16`` or ``uint8``).
        scale, mean, std: ``input = (raw * scale - mean) / std`` per channel; ``scale=None`` feeds raw
            0..255 pixels (the preprocessing is inside the graph).
        layout: ``NHWC`` (keras-vit) or ``NCHW`` (only for foreign models without metadata).
    """

    height: int
    width: int
    channels: int
    dtype: str = "float32"
    scale: float | None = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NHWC"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one preprocessed image (before any NCHW transpose)."""
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class ModelInfo:
    """Everything read from the ONNX file: input/output names, preprocessing, labels, raw metadata."""

    path: str
    input_name: str
    logits_name: str
    probabilities_name: str | None
    spec: InputSpec
    class_names: tuple[str, ...] | None
    num_classes: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    has_metadata: bool = True

    def label(self, index: int) -> str:
        """Class name of ``index`` (the index itself as text when the model carries no names)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)


@dataclass(frozen=True)
class Label:
    """One of the top-k answers."""

    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one input (``path`` is ``file.npz[3]`` for an array row)."""

    path: str
    top_k: tuple[Label, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"path", "top_k": [{"label", "probability"}]}``, the ``--json`` line."""
        return {
            "path": self.path,
            "top_k": [{"label": t.label, "probability": round(t.probability, 6)} for t in self.top_k],
        }

    def to_text(self) -> str:
        """``path: label (0.9876), label (0.0100)``, the plain output line."""
        answers = ", ".join(f"{t.label} ({t.probability:.4f})" for t in self.top_k)
        return f"{self.path}: {answers}"


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency of ``session.run`` on random images (decoding not included)."""

    model: str
    batch_size: int
    threads: int | None
    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "runs": self.runs,
            "warmup": self.warmup,
            "latency_ms": {
                "p50": round(self.p50_ms, 4),
                "p90": round(self.p90_ms, 4),
                "p99": round(self.p99_ms, 4),
                "mean": round(self.mean_ms, 4),
            },
            "images_per_s": round(self.images_per_s, 2),
        }

    def to_text(self) -> str:
        threads = self.threads if self.threads else "default"
        return (
            f"{self.model}: batch {self.batch_size}, threads {threads}, {self.runs} runs after "
            f"{self.warmup} warm-up\n"
            f"latency ms: p50 {self.p50_ms:.3f}  p90 {self.p90_ms:.3f}  p99 {self.p99_ms:.3f}  "
            f"mean {self.mean_ms:.3f}\n"
            f"throughput: {self.images_per_s:.1f} images/s"
        )


# ----------------------------------------------------------------------------------------------------
# Preprocessing (pure functions: the property tests drive these directly)
# ----------------------------------------------------------------------------------------------------


def _pil():
    """Pillow's ``Image`` module, imported only when an image file is read."""
    try:
        from PIL import Image
    except ImportError as err:
        raise InferenceError("reading image files needs Pillow: pip install pillow") from err
    return Image


def _bilinear(image_module):
    resampling = getattr(image_module, "Resampling", image_module)
    return resampling.BILINEAR


def _high_depth_to_255(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Map ``I``/``I;16``/``F`` pixel values onto the 0..255 scale.

    ``I;16*`` modes are 16-bit: scaled by 255/65535. ``I`` and ``F`` hold no declared range: values up to
    255 are taken as 8-bit, larger ones as 16-bit; anything outside is clipped, NaN becomes 0.
    """
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=65535.0, neginf=0.0)
    if sixteen_bit or (values.size and float(values.max()) > 255.0):
        values = values * np.float32(255.0 / 65535.0)
    return np.clip(values, 0.0, 255.0)


def _image_to_raw(image, spec: InputSpec) -> np.ndarray:
    """A Pillow image as float32 ``(H, W, C)`` raw pixels on the 0..255 scale, at the model's size."""
    Image = _pil()
    size = (spec.width, spec.height)
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _high_depth_to_255(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
        if gray.ndim != 2:
            gray = gray.reshape(gray.shape[0], -1)
        if gray.shape != (spec.height, spec.width):
            resized = Image.fromarray(np.ascontiguousarray(gray), mode="F").resize(size, _bilinear(Image))
            gray = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)
        return np.repeat(gray[..., None], spec.channels, axis=-1)
    target = {1: "L", 3: "RGB", 4: "RGBA"}[spec.channels]
    if mode != target:
        try:
            image = image.convert(target)
        except ValueError:  # e.g. HSV/LAB -> L has no direct conversion
            image = image.convert("RGB").convert(target)
    if image.size != size:
        image = image.resize(size, _bilinear(Image))
    return np.asarray(image, dtype=np.float32).reshape(spec.height, spec.width, spec.channels)


def _normalise(raw: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Raw 0..255 pixels ``(..., C)`` -> the model's input dtype, with the metadata's scaling.

    The edge copy of ``keras_vit.preprocessing.preprocess`` (mean/std: 1 value or one per channel).
    """
    if spec.scale is None:  # the graph normalises; it takes raw pixels
        if spec.dtype == "uint8":
            return np.clip(np.rint(raw), 0, 255).astype(np.uint8)
        return raw.astype(spec.dtype, copy=False)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = (raw.astype(np.float32, copy=False) * np.float32(spec.scale) - mean) / std
    return out.astype(spec.dtype, copy=False)


def preprocess_image(image, spec: InputSpec) -> np.ndarray:
    """One Pillow image (any mode, any size) -> the model's ``(H, W, C)`` input in ``spec.dtype``.

    Modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``,
    ``I``, ``I;16*`` and ``F`` are handled; transparency is dropped, not composited.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency..."
        return _normalise(_image_to_raw(image, spec), spec)


def _to_spec_channels(raw: np.ndarray, channels: int, integer_pixels: bool = False) -> np.ndarray:
    """``(N, H, W, c)`` -> ``(N, H, W, channels)``: repeat gray, ITU-R 601 luma for gray, drop alpha.

    ``integer_pixels``: the pixels came as uint8, so the luma is rounded to an integer, as Pillow's
    ``convert("L")`` and ``keras_vit.preprocessing.convert_channels`` do.
    """
    have = raw.shape[-1]
    if have == channels:
        return raw
    if have == 1:
        return np.repeat(raw, channels, axis=-1)
    rgb = raw[..., :3]
    if channels == 1:  # the same weights as Pillow's convert("L")
        luma = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        if integer_pixels:
            luma = np.clip(np.rint(luma), 0.0, 255.0)
        return luma[..., None]
    if channels == 3:
        return rgb
    alpha = np.full(raw.shape[:-1] + (1,), 255.0, dtype=np.float32)  # channels == 4 from RGB
    return np.concatenate([rgb, alpha], axis=-1)


def _array_layout(shape: tuple[int, ...], spec: InputSpec) -> str | None:
    """``"batch"`` for ``(N, H, W[, C])``, ``"single"`` for ``(H, W[, C])``, ``None`` if unusable."""
    hw = (spec.height, spec.width)
    if len(shape) == 4 and shape[1:3] == hw and shape[3] in _SUPPORTED_CHANNELS:
        return "batch"
    if len(shape) == 3 and shape[1:] == hw:
        return "batch"
    if len(shape) == 3 and shape[:2] == hw and shape[2] in _SUPPORTED_CHANNELS:
        return "single"
    if len(shape) == 2 and shape == hw:
        return "single"
    return None


def check_array(shape: tuple[int, ...], dtype: np.dtype, spec: InputSpec, name: str) -> str:
    """Validate an array's shape and dtype for ``spec``; returns its layout or raises InferenceError."""
    dtype = np.dtype(dtype)
    if not (dtype == np.uint8 or (dtype.kind == "f" and dtype.itemsize <= 8)):
        raise InferenceError(
            f"{name}: arrays of dtype {dtype} are not supported; use uint8 raw pixels or float pixel "
            "values on the 0..255 scale"
        )
    layout = _array_layout(tuple(int(s) for s in shape), spec)
    if layout is None:
        h, w = spec.height, spec.width
        raise InferenceError(
            f"{name}: array of shape {tuple(shape)} does not hold {h}x{w} images; expected "
            f"(N, {h}, {w}) or (N, {h}, {w}, C) with C in 1, 3, 4"
        )
    return layout


def preprocess_arrays(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Raw-pixel arrays -> the model's ``(N, H, W, C)`` input in ``spec.dtype``.

    ``images``: ``(N, H, W)``, ``(N, H, W, C)`` (C in 1, 3, 4), or one ``(H, W)``/``(H, W, C)`` image;
    uint8, or float on the 0..255 scale. The height and width must already be the model's.
    """
    images = np.asarray(images)
    layout = check_array(images.shape, images.dtype, spec, "array")
    raw = images.astype(np.float32)
    if layout == "single":
        raw = raw[None]
    if raw.ndim == 3:
        raw = raw[..., None]
    return _normalise(_to_spec_channels(raw, spec.channels, images.dtype == np.uint8), spec)


# ----------------------------------------------------------------------------------------------------
# Reading the model
# ----------------------------------------------------------------------------------------------------


def _ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise InferenceError("onnxruntime is not installed: pip install onnxruntime") from err
    return onnxruntime


# LiteRT (.tflite): an adapter with the onnxruntime-session methods this file uses, so that one code path
# (read_model_info, Classifier) serves both formats.
_TFLITE_METADATA = "keras_vit"  # the metadata map entry keras_vit.export writes (JSON)
_TFLITE_TEXT_KEYS = {"input_dtype", "preset", "keras_vit_version", "format"}
_TFLITE_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}


def is_tflite(path: str) -> bool:
    """True when ``path`` is a LiteRT flatbuffer (identifier ``TFL3``)."""
    try:
        with open(path, "rb") as fp:
            return fp.read(8)[4:8] == b"TFL3"
    except OSError:
        return False


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    type: str
    shape: list


class _LiteRTSession:
    """A ``.tflite`` file on ``ai_edge_litert``'s interpreter, with ``get_inputs/get_outputs/run/get_modelmeta``."""

    def __init__(self, path: str, threads: int | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise InferenceError("ai-edge-litert is not installed: pip install ai-edge-litert") from err
        with open(path, "rb") as fp:
            content = fp.read()
        try:
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as err:  # LiteRT raises ValueError/RuntimeError for broken files
            raise InferenceError(f"cannot load model {path}: not a valid LiteRT model ({_short(err)})") from None
        self.metadata = _tflite_metadata(content, path)
        self._inputs = self.interpreter.get_input_details()
        self._outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        self._batch: int | None = None

    @staticmethod
    def _info(detail: dict) -> _TensorInfo:
        shape = [None if int(d) < 0 else int(d) for d in detail.get("shape_signature", detail["shape"])]
        dtype = np.dtype(detail["dtype"]).name
        return _TensorInfo(detail["name"], _TFLITE_TYPES.get(dtype, f"tensor({dtype})"), shape)

    def get_inputs(self) -> list[_TensorInfo]:
        return [self._info(d) for d in self._inputs]

    def get_outputs(self) -> list[_TensorInfo]:
        return [self._info(d) for d in self._outputs.values()]

    def get_modelmeta(self):
        return _TFLiteMeta(self.metadata)

    def run(self, output_names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (batch,) = feeds.values()
        index = self._inputs[0]["index"]
        if self._batch != batch.shape[0]:  # dynamic batch: the file's shape signature has -1 there
            self.interpreter.resize_tensor_input(index, list(batch.shape), strict=True)
            self.interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self.interpreter.set_tensor(index, batch)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(self._outputs[name]["index"]).copy() for name in output_names]


@dataclass(frozen=True)
class _TFLiteMeta:
    custom_metadata_map: dict


def _tflite_metadata(content: bytes, path: str) -> dict[str, str]:
    """The keras-vit metadata of a ``.tflite`` as ONNX-style strings (JSON for non-text values); {} if none."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == _TFLITE_METADATA.encode():
                values = json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
                break
        else:
            return {}
    except Exception as err:  # a broken flatbuffer raises many types
        raise InferenceError(f"{path}: cannot read the LiteRT metadata ({_short(err, 120)})") from None
    if not isinstance(values, dict):
        raise InferenceError(f"{path}: the keras-vit metadata is not a JSON object")
    return {key: ("" if value is None else str(value)) if key in _TFLITE_TEXT_KEYS else json.dumps(value)
            for key, value in values.items()}


def _onnx_session(path: str, threads: int | None, providers: Sequence[str] | None):
    """An onnxruntime session for ``path``: one inter-op thread, ``threads`` intra-op threads if given."""
    ort = _ort()
    providers = list(providers or ["CPUExecutionProvider"])
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise InferenceError(
            f"execution provider {missing[0]} is not available in this onnxruntime build "
            f"(available: {', '.join(ort.get_available_providers())})"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for every failure
        raise InferenceError(f"cannot load model {path}: not a valid ONNX model ({_short(err)})") from None
    return session


def _short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_key(meta: dict[str, str], key: str, path: str) -> Any:
    try:
        return json.loads(meta[key])
    except (TypeError, ValueError) as err:
        raise InferenceError(f"{path}: metadata {key!r} is not valid JSON ({_short(err, 80)})") from None


def _parse_preprocessing(value: Any, channels: int, path: str) -> tuple[float | None, tuple, tuple]:
    if value == {}:
        return None, (0.0,), (1.0,)
    bad = InferenceError(
        f'{path}: metadata \'preprocessing\' must be {{}} or {{"scale": s, "mean": [...], "std": [...]}} '
        f"with 1 or {channels} positive std values, got {json.dumps(value)[:120]}"
    )
    if not isinstance(value, dict):
        raise bad
    try:
        scale = float(value.get("scale", 1.0))
        mean = tuple(float(v) for v in value.get("mean", [0.0]))
        std = tuple(float(v) for v in value.get("std", [1.0]))
    except (TypeError, ValueError):
        raise bad from None
    numbers = (scale, *mean, *std)
    if (
        not all(math.isfinite(v) for v in numbers)
        or len(mean) not in (1, channels)
        or len(std) not in (1, channels)
        or any(s <= 0 for s in std)
    ):
        raise bad
    return scale, mean, std


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def read_model_info(session, path: str, warn: Callable[[str], None]) -> ModelInfo:
    """Read names, shapes and keras-vit metadata from an onnxruntime session (InferenceError if unusable)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise InferenceError(f"{path}: the model has {len(inputs)} inputs ({names}); expected one image input")
    graph_input = inputs[0]
    dtype = _ORT_DTYPES.get(graph_input.type)
    if dtype is None:
        raise InferenceError(f"{path}: input {graph_input.name!r} has type {graph_input.type}; expected float or uint8")
    shape = list(graph_input.shape or [])
    if len(shape) != 4:
        raise InferenceError(f"{path}: input {graph_input.name!r} has shape {shape}; expected 4-D images (N, H, W, C)")
    dims = [_static(d) for d in shape[1:]]

    meta = dict(session.get_modelmeta().custom_metadata_map or {})
    ours = any(k in meta for k in ("image_size", "channels", "preprocessing"))
    notes: list[str] = []
    if "image_size" in meta and "channels" in meta:
        size = _json_key(meta, "image_size", path)
        try:
            height, width = (int(v) for v in size)
            channels = int(meta["channels"])
        except (TypeError, ValueError):
            raise InferenceError(
                f"{path}: metadata image_size={meta['image_size']!r} channels={meta['channels']!r} "
                "is not [H, W] and an integer"
            ) from None
        if dims[2] == channels or (dims[2] is None and dims[0] != channels):
            layout = "NHWC"
        else:
            layout = "NCHW"
        graph_hwc = tuple(dims) if layout == "NHWC" else (dims[1], dims[2], dims[0])
        for got, want in zip(graph_hwc, (height, width, channels), strict=True):
            if got is not None and got != want:
                raise InferenceError(
                    f"{path}: metadata says {height}x{width}x{channels} images but the graph input is {shape}"
                )
    else:
        if dims[2] in _SUPPORTED_CHANNELS and None not in dims:
            layout, (height, width, channels) = "NHWC", dims
        elif dims[0] in _SUPPORTED_CHANNELS and None not in dims:
            layout, (channels, height, width) = "NCHW", dims
        else:
            raise InferenceError(
                f"{path}: the model has no keras-vit image_size/channels metadata and its input shape "
                f"{shape} does not fix the image size; re-export it with keras_vit.export"
            )
        notes.append(f"the graph's input shape ({height}x{width}x{channels}, {layout})")
    if channels not in _SUPPORTED_CHANNELS:
        raise InferenceError(f"{path}: models with {channels} channels are not supported (only 1, 3 or 4)")

    if "preprocessing" in meta:
        scale, mean, std = _parse_preprocessing(_json_key(meta, "preprocessing", path), channels, path)
    elif dtype == "uint8":
        scale, mean, std = None, (0.0,), (1.0,)
        notes.append("raw 0..255 pixels (uint8 input)")
    else:
        scale, mean, std = 1.0 / 255.0, (0.0,), (1.0,)
        notes.append("pixels scaled to [0, 1] (raw / 255, no mean/std)")

    class_names = None
    if "class_names" in meta:
        names = _json_key(meta, "class_names", path)
        if not isinstance(names, list):
            raise InferenceError(f"{path}: metadata 'class_names' must be a JSON list of names")
        class_names = tuple(str(n) for n in names)

    outputs = session.get_outputs()
    by_name = {o.name: o for o in outputs}
    logits = by_name.get("logits", outputs[0])
    probabilities = by_name.get("probabilities")
    out_shape = list(logits.shape or [])
    if len(out_shape) != 2:
        raise InferenceError(f"{path}: output {logits.name!r} has shape {out_shape}; expected (N, classes)")
    num_classes = _static(out_shape[1])
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise InferenceError(
            f"{path}: metadata lists {len(class_names)} class names for a model with {num_classes} outputs"
        )
    if not ours:
        notes.append("class indices as labels")
        warn(f"{path} has no keras-vit metadata; assuming {', '.join(notes)}")
    elif notes:
        warn(f"{path}: incomplete keras-vit metadata; assuming {', '.join(notes)}")
    spec = InputSpec(height, width, channels, dtype, scale, mean, std, layout)
    return ModelInfo(
        path=path,
        input_name=graph_input.name,
        logits_name=logits.name,
        probabilities_name=probabilities.name if probabilities is not None else None,
        spec=spec,
        class_names=class_names,
        num_classes=num_classes,
        metadata=meta,
        has_metadata=ours,
    )


# ----------------------------------------------------------------------------------------------------
# Reading inputs (generators: one image in memory at a time, one batch at most)
# ----------------------------------------------------------------------------------------------------


def _is_array_file(path: str) -> bool:
    return path.lower().endswith(ARRAY_SUFFIXES)


def _iter_folder(folder: str, on_skip: Callable[[str, str], None]) -> Iterator[str]:
    """Every non-hidden file under ``folder``, recursively, in sorted order, without building a list."""

    def unreadable(err: OSError) -> None:
        on_skip(err.filename or folder, f"cannot list folder ({err.strerror or err})")

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64 (the copy of ``keras_vit.preprocessing.softmax``)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class _ArraySource:
    path: str
    key: str | None
    layout: str
    count: int


class Classifier:
    """An ONNX image classifier with keras-vit preprocessing, on onnxruntime.

    Args:
        model_path: the ``.onnx`` file, or a ``.tflite`` file (run with ai-edge-litert).
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default, all cores).
        providers: onnxruntime execution providers (default: CPU).
        warn: where warnings go (default: one line on stderr).

    Raises:
        InferenceError: missing, corrupt or unusable model.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
        path = os.fspath(model_path)
        if not os.path.exists(path):
            raise InferenceError(f"model file not found: {path}")
        if not os.path.isfile(path):
            raise InferenceError(f"model path is not a file: {path}")
        if threads is not None and int(threads) < 1:
            raise InferenceError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        if path.lower().endswith(".tflite") or is_tflite(path):
            if providers and list(providers) != ["CPUExecutionProvider"]:
                raise InferenceError("--provider applies to ONNX models; a .tflite runs on LiteRT's CPU (XNNPACK)")
            self.session = _LiteRTSession(path, threads)
        else:
            self.session = _onnx_session(path, threads, providers)
        self.info = read_model_info(self.session, path, self.warn)
        self.spec = self.info.spec

    # -- running the model ------------------------------------------------------------------------

    def _run(self, output: str, model_input: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(model_input, dtype=self.spec.dtype)
        if self.spec.layout == "NCHW":
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        try:
            (result,) = self.session.run([output], {self.info.input_name: batch})
        except Exception as err:  # a graph that loads but cannot run (bad op, shape clash inside)
            runtime = "LiteRT" if isinstance(self.session, _LiteRTSession) else "onnxruntime"
            raise InferenceError(f"{self.info.path}: {runtime} failed to run the model ({_short(err)})") from None
        return result

    def run(self, model_input: np.ndarray) -> np.ndarray:
        """Logits of an already-preprocessed ``(N, H, W, C)`` batch, exactly as the graph computes them."""
        return self._run(self.info.logits_name, model_input)

    def probabilities(self, model_input: np.ndarray) -> np.ndarray:
        """Class probabilities of a preprocessed batch: the graph's ``probabilities`` output, else softmax."""
        if self.info.probabilities_name:
            return self._run(self.info.probabilities_name, model_input).astype(np.float64)
        return _softmax(self._run(self.info.logits_name, model_input))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, classes)`` of raw-pixel images ``(N, H, W[, C])`` (uint8 or 0..255 floats)."""
        return self.probabilities(preprocess_arrays(images, self.spec))

    def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[Label, ...]]:
        """The ``k`` most likely labels of each row of ``probabilities``."""
        k = max(1, min(int(k), probabilities.shape[-1]))
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
        return [
            tuple(Label(self.info.label(int(i)), float(row[i]), int(i)) for i in idx)
            for row, idx in zip(probabilities, order, strict=True)
        ]

    # -- reading inputs ---------------------------------------------------------------------------

    def load_image(self, path: str) -> np.ndarray:
        """Read, decode and preprocess one image file; raises SkippedInput if it is not a readable image."""
        Image = _pil()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as image:
                    try:  # JPEG: decode at reduced size when the file is much larger than the model
                        image.draft("L" if self.spec.channels == 1 else "RGB", (self.spec.width, self.spec.height))
                    except Exception:
                        pass
                    image.load()
                    image = _exif_transpose(image)
                    return preprocess_image(image, self.spec)
        except InferenceError:
            raise
        except Exception as err:  # Pillow raises many types for broken files (OSError, SyntaxError...)
            if isinstance(err, OSError) and not isinstance(err, Image.UnidentifiedImageError) and err.strerror:
                raise SkippedInput(f"cannot read file ({err.strerror})") from None
            raise SkippedInput(f"not a readable image ({_short(err, 120)})") from None

    def _array_source(self, path: str, npz_key: str | None) -> _ArraySource:
        """Check an array file's header (shape, dtype) without reading its data."""
        try:
            if path.lower().endswith(".npy"):
                with open(path, "rb") as fp:
                    shape, dtype = _read_npy_header(fp)
                    stored = os.fstat(fp.fileno()).st_size - fp.tell()
                key = None
            else:
                with zipfile.ZipFile(path) as archive:
                    names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                    key = _choose_npz_key(path, names, npz_key)
                    with archive.open(key + ".npy") as fp:
                        shape, dtype = _read_npy_header(fp)
                        stored = archive.getinfo(key + ".npy").file_size - fp.tell()
        except InferenceError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise InferenceError(f"{path}: cannot read array file ({_short(err, 120)})") from None
        name = f"{path}['{key}']" if key else path
        layout = check_array(shape, dtype, self.spec, name)
        expected = math.prod(shape) * dtype.itemsize
        if stored < expected:
            raise InferenceError(f"{name}: truncated array file ({stored} of {expected} data bytes)")
        count = 1 if layout == "single" else int(shape[0])
        return _ArraySource(path, key, layout, count)

    def _iter_array(self, source: _ArraySource, on_skip) -> Iterator[tuple[str, np.ndarray]]:
        try:
            if source.key is None:
                try:
                    data = np.load(source.path, mmap_mode="r", allow_pickle=False)
                except ValueError:  # empty arrays cannot be memory-mapped
                    data = np.load(source.path, allow_pickle=False)
            else:
                with np.load(source.path, allow_pickle=False) as archive:
                    data = archive[source.key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise InferenceError(f"{source.path}: cannot read array file ({_short(err, 120)})") from None
        if source.layout == "single":
            data = data[None]
        warned = False
        for start in range(0, source.count, _ARRAY_CHUNK):
            chunk = np.asarray(data[start : start + _ARRAY_CHUNK])
            finite = np.ones(len(chunk), dtype=bool)
            if chunk.dtype.kind == "f":
                finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
                if not finite.all():
                    chunk = np.where(finite.reshape((-1,) + (1,) * (chunk.ndim - 1)), chunk, 0)
                if not warned and finite.any() and float(chunk[finite].max()) <= 1.0:
                    warned = True
                    self.warn(
                        f"{source.path}: float pixel values are all <= 1; arrays are read as raw 0..255 "
                        "pixels (multiply by 255 if they were scaled to [0, 1])"
                    )
            model_input = preprocess_arrays(chunk, self.spec)
            for offset in range(len(chunk)):
                label = f"{source.path}[{start + offset}]"
                if finite[offset]:
                    yield label, model_input[offset]
                else:
                    on_skip(label, "non-finite pixel values (NaN or inf)")

    def check_inputs(self, inputs: Iterable[str | os.PathLike], npz_key: str | None = None) -> None:
        """Fail early, before any output: every input exists, every array file has a usable shape/dtype.

        Reads only the ``.npy`` headers. Raises :class:`InferenceError` naming the first bad input.
        """
        for item in map(os.fspath, inputs):
            if not os.path.exists(item):
                raise InferenceError(f"input not found: {item}")
            if os.path.isfile(item) and _is_array_file(item):
                self._array_source(item, npz_key)

    def iter_inputs(
        self,
        inputs: Iterable[str | os.PathLike],
        on_skip: Callable[[str, str], None] | None = None,
        npz_key: str | None = None,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """``(path, preprocessed image)`` for every image in ``inputs`` (files, folders, arrays), lazily.

        ``inputs`` may itself be a generator (e.g. 100,000 paths): nothing is read ahead of the consumer.
        Unreadable or missing images go to ``on_skip(path, reason)`` (default: a warning) and are left
        out; an array file with the wrong shape or dtype raises :class:`InferenceError` when reached
        (call :meth:`check_inputs` first to fail before any output).
        """
        on_skip = on_skip or (lambda path, reason: self.warn(f"skipped {path}: {reason}"))
        for item in map(os.fspath, inputs):
            if os.path.isfile(item) and _is_array_file(item):
                yield from self._iter_array(self._array_source(item, npz_key), on_skip)
                continue
            paths = _iter_folder(item, on_skip) if os.path.isdir(item) else iter([item])
            for path in paths:
                if _is_array_file(path):
                    on_skip(path, "arrays inside folders are not read; pass the .npy/.npz file itself")
                    continue
                if not os.path.exists(path):
                    on_skip(path, "file not found")
                    continue
                try:
                    yield path, self.load_image(path)
                except SkippedInput as skipped:
                    on_skip(path, str(skipped))

    def classify_paths(
        self,
        inputs: Iterable[str | os.PathLike],
        batch_size: int = 32,
        top_k: int = 5,
        on_skip: Callable[[str, str], None] | None = None,
        npz_key: str | None = None,
    ) -> Iterator[Prediction]:
        """Classify files, folders and arrays in batches, yielding one :class:`Prediction` per image.

        Memory holds one batch at a time, so a folder of any size streams through.
        """
        if batch_size < 1:
            raise InferenceError("batch size must be at least 1")
        paths: list[str] = []
        images: list[np.ndarray] = []
        for path, image in self.iter_inputs(inputs, on_skip=on_skip, npz_key=npz_key):
            paths.append(path)
            images.append(image)
            if len(images) == batch_size:
                yield from self._classify_batch(paths, images, top_k)
                paths, images = [], []
        if images:
            yield from self._classify_batch(paths, images, top_k)

    def _classify_batch(self, paths: list[str], images: list[np.ndarray], top_k: int) -> Iterator[Prediction]:
        probabilities = self.probabilities(np.stack(images))
        for path, labels in zip(paths, self.top_k(probabilities, top_k), strict=True):
            yield Prediction(path, labels)

    # -- benchmark --------------------------------------------------------------------------------

    def benchmark(self, batch_size: int = 1, runs: int = 100, warmup: int = 10, seed: int = 0) -> BenchmarkResult:
        """Time ``session.run`` on random images: ``warmup`` untimed runs, then ``runs`` timed ones."""
        if batch_size < 1 or runs < 1 or warmup < 0:
            raise InferenceError("batch size and runs must be at least 1, warm-up at least 0")
        rng = np.random.default_rng(seed)
        raw = rng.integers(0, 256, size=(batch_size, *self.spec.shape), dtype=np.uint8)
        model_input = preprocess_arrays(raw, self.spec)
        for _ in range(warmup):
            self.run(model_input)
        times = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            start = time.perf_counter()
            self.run(model_input)
            times[i] = time.perf_counter() - start
        p50, p90, p99 = np.percentile(times * 1e3, [50, 90, 99])
        return BenchmarkResult(
            model=self.info.path,
            batch_size=batch_size,
            threads=self.threads,
            runs=runs,
            warmup=warmup,
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(times.mean() * 1e3),
            images_per_s=float(batch_size * runs / times.sum()),
        )


def _exif_transpose(image):
    """Apply the EXIF orientation (phone photos); leave the image alone if its EXIF is broken."""
    try:
        from PIL import ImageOps

        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image


def _read_npy_header(fp) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), np.dtype(dtype)


def _choose_npz_key(path: str, names: list[str], requested: str | None) -> str:
    if requested is not None:
        if requested not in names:
            raise InferenceError(f"{path}: no array named {requested!r} (it holds {', '.join(names) or 'none'})")
        return requested
    if len(names) == 1:
        return names[0]
    if "images" in names:
        return "images"
    raise InferenceError(
        f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}); choose one with --npz-key NAME"
    )


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``infer.py`` / ``keras-vit-infer`` argument parser."""
    parser = _Parser(
        prog=prog,
        description="Classify images with a keras-vit ONNX or LiteRT model (numpy + onnxruntime or "
        "ai-edge-litert; Pillow for images).",
        epilog="Exit codes: 0 all classified, 1 inputs skipped (named on stderr), 2 bad model/option/array.",
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the exported model (.onnx or .tflite)")
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="*",
        help="image files, folders (recursive) or .npy/.npz arrays of raw pixels (N, H, W[, C])",
    )
    parser.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="classes per input (5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="images per model run (32; 1 with --benchmark)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="onnxruntime intra-op threads (default: all cores)",
    )
    parser.add_argument(
        "--npz-key",
        default=None,
        metavar="NAME",
        help="array to read from .npz files holding several (default: the only one, or 'images')",
    )
    parser.add_argument(
        "--provider",
        action="append",
        default=None,
        metavar="NAME",
        help="onnxruntime execution provider, repeatable (default: CPUExecutionProvider)",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="time the model on random images instead of classifying inputs",
    )
    parser.add_argument("--runs", type=_positive_int, default=100, metavar="N", help="timed benchmark runs (100)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed benchmark runs first (10)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 inputs skipped, 2 error)."""
    if prog is None:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "infer.py"
        if prog in ("", "-c", "__main__.py"):
            prog = "infer.py"
    try:
        args = build_parser(prog).parse_intermixed_args(argv)  # options anywhere: `M.onnx --top-k 3 a.png`
    except SystemExit as stop:  # --help (0) or a usage error (2, already reported on one line)
        return stop.code if isinstance(stop.code, int) else EXIT_ERROR

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    skipped = 0

    def on_skip(path: str, reason: str) -> None:
        nonlocal skipped
        skipped += 1
        warn(f"skipped {path}: {reason}")

    try:
        if args.benchmark and args.inputs:
            raise InferenceError("--benchmark runs on random images; give no INPUT with it")
        if not args.benchmark and not args.inputs:
            raise InferenceError("give at least one INPUT (image, folder, .npy/.npz), or --benchmark")
        if args.warmup < 0:
            raise InferenceError("--warmup must be 0 or more")
        classifier = Classifier(args.model, threads=args.threads, providers=args.provider, warn=warn)
        if args.benchmark:
            result = classifier.benchmark(args.batch_size or 1, args.runs, args.warmup)
            print(json.dumps(result.to_json()) if args.json else result.to_text())
            return EXIT_OK
        classifier.check_inputs(args.inputs, npz_key=args.npz_key)
        count = 0
        for prediction in classifier.classify_paths(
            args.inputs, args.batch_size or 32, args.top_k, on_skip=on_skip, npz_key=args.npz_key
        ):
            line = json.dumps(prediction.to_json(), ensure_ascii=False) if args.json else prediction.to_text()
            sys.stdout.write(line + "\n")
            count += 1
        sys.stdout.flush()
    except InferenceError as err:
        sys.stdout.flush()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SKIPPED
    if skipped:
        warn(f"{skipped} input(s) skipped, {count} classified")
        return EXIT_SKIPPED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
