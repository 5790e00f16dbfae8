"""Checking an exported file against the Keras model on real images.

Float32 exports must match the Keras logits to ``PARITY_TOLERANCE`` (max abs difference) on a batch
run as sub-batches of 17, 1 and the rest (which also proves the dynamic batch axis); INT8 exports must
agree with the float model's top-1 on at least ``INT8_MIN_AGREEMENT`` of the verify images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_vit.export.errors import ExportVerificationError, KerasViTError
from keras_vit.preprocessing import softmax

PARITY_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.99
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


def ort_session(model: bytes | str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an ONNX file or serialized model; :class:`KerasViTError` if it fails."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
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


def onnx_parity(session, feed: np.ndarray, reference: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Run the ONNX session on ``feed`` (sub-batches 17, 1, rest) and compare with ``reference`` logits.

    Returns ``{"max_abs_diff", "samples", "batch_sizes"}`` (plus ``probabilities_max_abs_diff``);
    raises :class:`ExportVerificationError` past ``tolerance``.
    """
    bounds = split_batches(len(feed))
    outputs = run_onnx(session, feed, bounds)
    result = {
        "max_abs_diff": max_abs_diff(outputs["logits"], reference),
        "samples": int(len(feed)),
        "batch_sizes": [stop - start for start, stop in bounds],
        "tolerance": tolerance,
    }
    if "probabilities" in outputs:
        result["probabilities_max_abs_diff"] = max_abs_diff(outputs["probabilities"], softmax(reference))
    require_parity(result["max_abs_diff"], tolerance)
    require_parity(result.get("probabilities_max_abs_diff", 0.0), tolerance)
    return result


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose argmax matches."""
    return float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))


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
