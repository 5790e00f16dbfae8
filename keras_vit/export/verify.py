"""Verification of an exported graph against Keras, the real images it is checked on, and its errors.

Errors say what went wrong in one sentence, with the exit code to use (1: the file would not match; 2: bad input).

Parity: the max abs logit difference on a fixed sample of the verify images, over batch sizes 17, 1 and
the rest, must stay <= 1e-4; INT8 files instead need >= 99 % top-1 agreement with the float graph.
The onnxruntime session set-up of the library lives here (:func:`ort_session`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit.datasets import DATA_ENV, NAMED_DATASETS, load_dataset
from keras_vit.errors import KerasViTError, UserInputError
from keras_vit.preprocessing import convert_channels, preprocess, resize_images, softmax

# --------------------------------------------------------------------------------------------------
# Errors and exit codes


__all__ = ["ExportVerificationError", "KerasViTError", "UserInputError", "error_from_exit_code"]


class ExportVerificationError(KerasViTError):
    """The exported file does not compute what the Keras model computes (exit code 1); no file is left."""

    exit_code = 1


def error_from_exit_code(message: str, exit_code: int) -> KerasViTError:
    """Rebuild the error a child export process reported, keeping its message and exit code."""
    if exit_code == UserInputError.exit_code:
        return UserInputError(message)
    if message.startswith("export does not match") or "agreement" in message:
        return ExportVerificationError(message)
    return KerasViTError(message)


# --------------------------------------------------------------------------------------------------
# Checks of an exported graph against Keras


PARITY_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.99
#: Top-1 agreement an fp16 file needs with the float graph (every format).
FP16_MIN_AGREEMENT = 0.995
#: Sub-batch sizes every parity check runs (dynamic batch: 1 and 17 both run); the rest follows.
CHECK_BATCH_SIZES = (17, 1)
PARITY_SAMPLES = 64


def parity_indices(count: int, samples: int = PARITY_SAMPLES) -> np.ndarray:
    """Indices of the parity batch: the first ``samples`` images, repeated if fewer than 18 exist."""
    n = max(sum(CHECK_BATCH_SIZES), min(samples, count))
    return np.arange(n) % count


def split_batches(count: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of sub-batches of sizes 17, 1, then the rest."""
    bounds, start = [], 0
    for size in CHECK_BATCH_SIZES:
        bounds.append((start, start + size))
        start += size
    if start < count:
        bounds.append((start, count))
    return bounds


def ort_session(model: bytes | str | os.PathLike, threads: int | None = None,
                optimized_model_path: str | os.PathLike | None = None):
    """An onnxruntime CPU session for an ONNX file or serialized model; :class:`KerasViTError` if it fails.

    The library's one onnxruntime set-up. ``threads`` pins the intra-op threads (timing);
    ``optimized_model_path`` makes onnxruntime write the graph it runs there, after its extended
    (offline-safe) optimisations (``--optimize``).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized_model_path)
    source = model if isinstance(model, bytes) else str(Path(model))
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise KerasViTError(f"onnxruntime cannot load the exported graph: {' '.join(str(err).split())[:300]}") from None


def check_graph_io(model_proto, expected_outputs: tuple[str, ...]) -> None:
    """The graph's inputs must be exactly ``["images"]`` and its outputs ``expected_outputs``."""
    initializers = {t.name for t in model_proto.graph.initializer}
    inputs = [i.name for i in model_proto.graph.input if i.name not in initializers]
    outputs = [o.name for o in model_proto.graph.output]
    if inputs != ["images"]:
        raise KerasViTError(
            f"the exported graph's inputs are {inputs}, expected exactly ['images'] "
            "(a dangling input from a shape-dependent constant in the model's call?)."
        )
    if outputs != list(expected_outputs):
        raise KerasViTError(f"the exported graph's outputs are {outputs}, expected {list(expected_outputs)}.")


def run_onnx(session, feed: np.ndarray, bounds: list[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Run ``session`` on ``feed`` in sub-batches; returns every output, concatenated."""
    names = [o.name for o in session.get_outputs()]
    bounds = bounds or [(s, min(s + 64, len(feed))) for s in range(0, len(feed), 64)]
    parts = {name: [] for name in names}
    for start, stop in bounds:
        results = session.run(names, {"images": feed[start:stop]})
        for name, value in zip(names, results, strict=True):
            if value.shape[0] != stop - start:
                raise KerasViTError(f"output {name} has batch {value.shape[0]} for an input batch of {stop - start}.")
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def keras_logits(model, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The Keras model's float32 logits (inference mode), batch by batch."""
    outs = [np.asarray(model.predict_on_batch(inputs[s : s + batch_size])) for s in range(0, len(inputs), batch_size)]
    return np.concatenate(outs).astype("float32")


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise KerasViTError(f"exported output shape {a.shape} differs from the Keras model's {b.shape}.")
    return float(np.max(np.abs(a.astype("float64") - b.astype("float64"))))


def format_tolerance(tolerance: float) -> str:
    """``1e-4`` rather than ``0.0001``."""
    return f"{tolerance:.0e}".replace("e-0", "e-").replace("e+0", "e")


def require_parity(diff: float, tolerance: float = PARITY_TOLERANCE) -> None:
    """Raise :class:`ExportVerificationError` when ``diff`` exceeds ``tolerance`` (or is not finite)."""
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportVerificationError(
            f"export does not match the Keras model: max abs diff {diff:.3g} > {format_tolerance(tolerance)}"
        )


def check_parity(outputs: dict[str, np.ndarray], reference: np.ndarray, bounds: list[tuple[int, int]],
                 tolerance: float = PARITY_TOLERANCE) -> dict:
    """Compare an exported file's ``outputs`` (run in sub-batches ``bounds``) with Keras' ``reference`` logits.

    Returns ``{"max_abs_diff", "samples", "batch_sizes", "tolerance"}`` (plus ``probabilities_max_abs_diff``);
    raises :class:`ExportVerificationError` past ``tolerance``. Every format's float check (ONNX, LiteRT).
    """
    result = {
        "max_abs_diff": max_abs_diff(outputs["logits"], reference),
        "samples": int(len(reference)),
        "batch_sizes": [stop - start for start, stop in bounds],
        "tolerance": tolerance,
    }
    if "probabilities" in outputs:
        result["probabilities_max_abs_diff"] = max_abs_diff(outputs["probabilities"], softmax(reference))
    require_parity(result["max_abs_diff"], tolerance)
    require_parity(result.get("probabilities_max_abs_diff", 0.0), tolerance)
    return result


def onnx_parity(session, feed: np.ndarray, reference: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Run the ONNX session on ``feed`` (sub-batches 17, 1, rest) and :func:`check_parity` against ``reference``."""
    bounds = split_batches(len(feed))
    return check_parity(run_onnx(session, feed, bounds), reference, bounds, tolerance)


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose argmax matches."""
    return float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))


def max_relative_diff(logits: np.ndarray, reference: np.ndarray) -> float:
    """Max abs difference relative to the reference's largest magnitude (a quantised file's logit error)."""
    scale = float(np.max(np.abs(reference))) or 1.0
    return max_abs_diff(logits, reference) / scale


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or len(labels) != len(logits):
        return None
    return float(np.mean(np.argmax(logits, -1) == labels))


def saved_model_outputs(path: str | os.PathLike, feed: np.ndarray) -> dict[str, np.ndarray]:
    """Run a SavedModel's ``serving_default`` signature on ``feed`` in sub-batches 17, 1, rest."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    parts: dict[str, list] = {}
    for start, stop in split_batches(len(feed)):
        for name, value in serve(images=tf.constant(feed[start:stop])).items():
            if value.shape[0] != stop - start:
                raise KerasViTError(f"SavedModel output {name} has batch {value.shape[0]} for {stop - start} images.")
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


# --------------------------------------------------------------------------------------------------
# Real images to verify on
#
# ``--verify-data`` takes a name (``mnist``, ``fashion_mnist``, ``cifar10``, ``usps``, ``mnist_sample``),
# loaded as :func:`keras_vit.datasets.load_dataset` loads it (``$KERAS_VIT_DATA``, else Keras' dataset
# cache or download; ``usps`` only from ``$KERAS_VIT_DATA/usps/usps_holdout.npz``; ``mnist_sample`` is the
# 1,000 test digits shipped in ``keras_vit/data``), or a path to an ``.npz`` with images under ``x_test``,
# ``x`` or ``images`` and optional labels under ``y_test``, ``y`` or ``labels``. Integer images are raw
# 0..255 pixels and go through the model's preprocessing; float images are taken as the model's input as
# they are. Without ``--verify-data`` the packaged MNIST sample is used, resized and converted to the
# model's image size and channels when they differ, so that every export is checked on real-looking
# images rather than noise.


PACKAGED_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mnist_sample.npz"
DATASETS = {
    "mnist": "mnist/mnist.npz",
    "fashion_mnist": "fashion_mnist/fashion_mnist.npz",
    "cifar10": "cifar10_jpeg/cifar10_jpeg.npz",
    "usps": "usps/usps_holdout.npz",
}
_IMAGE_KEYS = ("x_test", "x", "images")
_LABEL_KEYS = ("y_test", "y", "labels")


@dataclass
class VerifyData:
    """Images in the model's ``(N, H, W, C)`` shape.

    ``raw`` holds uint8 pixels (``None`` when the data came as float model inputs), ``inputs`` the
    float32 model inputs, ``labels`` the integer labels if known.
    """

    raw: np.ndarray | None
    inputs: np.ndarray
    labels: np.ndarray | None
    description: str

    def __len__(self) -> int:
        return len(self.inputs)

    def feed(self, include_preprocessing: bool, raw_input_dtype: str = "uint8") -> np.ndarray:
        """What the exported graph takes: raw pixels when preprocessing is inside, else model inputs."""
        if not include_preprocessing:
            return self.inputs
        if self.raw is None:
            raise UserInputError(
                "--include-preprocessing needs raw integer pixels in --verify-data, got float model inputs."
            )
        return self.raw.astype(raw_input_dtype)


def resolve_dataset(name: str, role: str = "verify data") -> Path | str:
    """The ``.npz`` file for a path, or the dataset name to load; :class:`UserInputError` if there is none.

    ``mnist``, ``fashion_mnist`` and ``cifar10`` are returned as names and loaded by
    :func:`keras_vit.datasets.load_dataset` (``$KERAS_VIT_DATA``, else Keras' own dataset cache or
    download); ``usps`` has no Keras loader and is looked up as ``usps/usps_holdout.npz`` under
    ``$KERAS_VIT_DATA``.
    """
    if name == "mnist_sample":
        return PACKAGED_SAMPLE
    candidate = Path(name).expanduser()
    if name.endswith(".npz") or candidate.is_file():
        if not candidate.is_file():
            raise UserInputError(f"{role} file {candidate} does not exist.")
        return candidate
    if name not in DATASETS:
        raise UserInputError(
            f"unknown {role} {name!r}: give an .npz file or one of {', '.join([*DATASETS, 'mnist_sample'])}."
        )
    if name in NAMED_DATASETS:
        return name
    root = os.environ.get(DATA_ENV)
    if root and (Path(root) / DATASETS[name]).is_file():
        return Path(root) / DATASETS[name]
    where = f"${DATA_ENV} is {root}" if root else f"${DATA_ENV} is not set"
    raise UserInputError(
        f"dataset {name!r} not found: it is read from {DATASETS[name]} under ${DATA_ENV} ({where}); "
        "or give the path of an .npz file."
    )


def _read_images(path: Path | str, limit: int, role: str = "verify data") -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``limit`` test images (and labels, if any) of a named dataset or an ``.npz`` file."""
    if isinstance(path, str):  # a named dataset: the library's loader and its error messages
        dataset = load_dataset(path)
        return np.asarray(dataset.x_test[:limit]), np.asarray(dataset.y_test[:limit]).astype("int64")
    try:
        with np.load(path, allow_pickle=False) as data:
            image_key = next((k for k in _IMAGE_KEYS if k in data.files), None)
            if image_key is None:
                raise UserInputError(f"{path} has no images under any of {', '.join(_IMAGE_KEYS)}.")
            images = np.asarray(data[image_key][:limit])
            label_key = next((k for k in _LABEL_KEYS if k in data.files), None)
            labels = np.asarray(data[label_key][:limit]).reshape(-1).astype("int64") if label_key else None
    except UserInputError:
        raise
    except Exception as err:
        raise UserInputError(f"could not read {role} {path}: {err}") from None
    return images, labels


def load_verify_data(
    source: str | os.PathLike | None,
    image_size: tuple[int, int],
    channels: int,
    preprocessing: dict[str, Any],
    limit: int = 1000,
    role: str = "verify data",
) -> VerifyData:
    """Up to ``limit`` test images from ``source`` (default: the packaged MNIST sample), model-shaped.

    ``role`` names the images in error messages (``"verify data"``, ``"calibration data"``).
    """
    path = PACKAGED_SAMPLE if source is None else resolve_dataset(str(source), role)
    images, labels = _read_images(path, limit, role)
    if len(images) == 0:
        raise UserInputError(f"{role} {path} holds no images.")
    description = f"{len(images)} images from {PACKAGED_SAMPLE.name if source is None else source}"
    is_raw = np.issubdtype(images.dtype, np.integer)
    images = _to_nhwc(images.astype("float32"), path, role)
    changed = images.shape[1:] != (*image_size, channels)
    images = _match_shape(images, image_size, channels)
    if changed:
        description += f" resized to {image_size[0]}x{image_size[1]}x{channels}"
    if is_raw:
        raw = np.clip(np.rint(images), 0, 255).astype("uint8")
        return VerifyData(raw, preprocess(raw, preprocessing), labels, description)
    return VerifyData(None, images.astype("float32"), labels, description + " (float model inputs)")


def _to_nhwc(images: np.ndarray, path: Path, role: str = "verify data") -> np.ndarray:
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise UserInputError(
            f"{role} {path} has images of shape {images.shape}: expected (N, H, W) or (N, H, W, C) with C 1, 3 or 4."
        )
    return images


def load_calibration_data(
    source: str | os.PathLike | None,
    verify: VerifyData,
    image_size: tuple[int, int],
    channels: int,
    preprocessing: dict[str, Any],
    limit: int,
) -> VerifyData:
    """The images a calibrated quantisation (``int8-static``, ``int16x8``) reads, shaped like ``verify``.

    ``source`` is a dataset name or an ``.npz`` file, read and resized to the model exactly as the verify
    images are (:func:`load_verify_data`); ``None`` takes the first ``limit`` verify images. The one owner
    of calibration data for every format (ONNX, LiteRT).
    """
    if source is None:
        raw = None if verify.raw is None else verify.raw[:limit]
        labels = None if verify.labels is None else verify.labels[:limit]
        inputs = verify.inputs[:limit]
        return VerifyData(raw, inputs, labels, f"the first {len(inputs)} verify images")
    return load_verify_data(source, image_size, channels, preprocessing, limit=limit, role="calibration data")


def _match_shape(images: np.ndarray, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """Resize and convert grayscale <-> colour to the model's input shape (:mod:`keras_vit.preprocessing`)."""
    return convert_channels(resize_images(images, tuple(image_size)), channels)
