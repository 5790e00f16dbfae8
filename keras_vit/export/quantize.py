"""``--quantize int8-static`` and ``--quantize fp16`` for ONNX (dynamic ``int8`` is in :mod:`.optimize`).

``int8-static``: onnxruntime's ``quantize_static`` in QDQ format (standard ``QuantizeLinear`` /
``DequantizeLinear`` around each ``MatMul``), int8 weights per output channel, uint8 activations whose
ranges are calibrated on real images (:func:`keras_vit.export.verify.load_calibration_data`, the one
owner of calibration images). Only ``MatMul`` is quantised: LayerNorm, softmax (inside ``Attention``) and
GELU stay float32. The calibration method is chosen by measured top-1 agreement with the float graph on
the verify images: MinMax first, then Percentile and Entropy (on at most :data:`HISTOGRAM_LIMIT` of the
calibration images: they keep every activation in memory) while agreement is below
:data:`GOOD_AGREEMENT`. If none gets there, the MatMuls are ranked by the agreement of the graph with
only that one quantised (mean squared logit error; the best method's ranges, computed once), and the most
sensitive are kept float (1, 2, 3, 4, ...) until agreement reaches :data:`GOOD_AGREEMENT` (at most half of them).

``fp16``: onnxruntime's ``convert_float_to_float16`` with float32 inputs and outputs; the ops in
:data:`FP16_KEEP_FLOAT` (LayerNorm: its variance overflows float16 on large activations; softmax) stay
float32.

Both report agreement with the float graph, the max relative logit difference and accuracy before and
after; the pipeline (:mod:`keras_vit.export.onnx`) checks the written file again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from keras_vit.export.verify import (
    FP16_MIN_AGREEMENT,
    INT8_MIN_AGREEMENT,
    ExportVerificationError,
    accuracy,
    max_relative_diff,
    ort_session,
    run_onnx,
    top1_agreement,
)

#: Agreement at which the calibration search stops early (a margin above the 99 % requirement).
GOOD_AGREEMENT = 0.995
#: Calibration methods in the order tried.
CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")
#: Op types kept float32 in an fp16 file.
FP16_KEEP_FLOAT = ("LayerNormalization", "SkipLayerNormalization", "Softmax")
#: Images the histogram calibrations (Percentile, Entropy) read at most: they keep every activation in memory.
HISTOGRAM_LIMIT = 64
#: Verify images on which each MatMul's sensitivity is measured (when no calibration agrees enough).
SENSITIVITY_SAMPLES = 256
#: How many of the most sensitive MatMuls are kept float, in the order tried (at most half of them).
_KEPT_FLOAT_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
_CALIBRATION_BATCH = 16


def _comparison(logits: np.ndarray, float_logits: np.ndarray, labels) -> dict:
    return {"agreement": top1_agreement(logits, float_logits),
            "max_relative_diff": max_relative_diff(logits, float_logits),
            "accuracy_after": accuracy(logits, labels)}


@contextlib.contextmanager
def _quiet():
    """Silence onnxruntime.quantization's root-logger warnings and its calibrators' prints for the duration."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------------
# int8-static


def quantize_int8_static(model_proto, calibration: np.ndarray, feed: np.ndarray, float_logits: np.ndarray,
                         labels: np.ndarray | None = None, min_agreement: float = INT8_MIN_AGREEMENT,
                         calibration_description: str = "", search_kept_float: bool = True):
    """QDQ static INT8 of ``model_proto`` calibrated on ``calibration`` (what the graph takes as ``images``).

    ``feed`` / ``float_logits``: the verify images and the float graph's logits on them, which choose the
    calibration method and, when no method agrees enough, which MatMuls stay float (the most sensitive
    first, measured one by one). Returns ``(int8_proto, report)``; raises :class:`ExportVerificationError`
    when no setting reaches ``min_agreement``. ``search_kept_float=False`` skips the search for MatMuls
    to keep float (benchmarks of random-weight models, where agreement means little).
    """
    report = {
        "mode": "int8-static", "size_before": len(model_proto.SerializeToString()), "samples": int(len(feed)),
        "calibration_samples": int(len(calibration)), "calibration_data": calibration_description,
        "accuracy_before": accuracy(float_logits, labels), "min_agreement": min_agreement, "tried": [],
    }
    target_agreement = max(GOOD_AGREEMENT, min_agreement)
    with tempfile.TemporaryDirectory(prefix="keras_vit_int8s_") as tmp, _quiet():
        import onnx

        folder = Path(tmp)
        source = folder / "float.onnx"
        onnx.save(model_proto, source)

        def attempt(method: str, exclude: list[str], check=feed, reference=float_logits):
            target = folder / "int8.onnx"
            _quantize_static_file(source, target, calibration, method, exclude, folder / f"{method}.json")
            logits = run_onnx(ort_session(target), check)["logits"]
            return onnx.load(target), logits, top1_agreement(logits, reference)

        best = None
        for method in CALIBRATION_METHODS:
            quantized, logits, agreement = attempt(method, [])
            report["tried"].append({"calibration": method, "kept_float": 0, "agreement": agreement})
            if best is None or agreement > best[2]:
                best = (quantized, logits, agreement, method, [])
            if agreement >= target_agreement:
                break
        if best[2] < target_agreement and search_kept_float:
            method = best[3]
            ranked = _most_sensitive_first(model_proto, lambda exclude, f, r: attempt(method, exclude, f, r)[1],
                                           feed[:SENSITIVITY_SAMPLES], float_logits[:SENSITIVITY_SAMPLES])
            for count in _KEPT_FLOAT_STEPS:
                if count > len(ranked) // 2:
                    break
                quantized, logits, agreement = attempt(method, ranked[:count])
                report["tried"].append({"calibration": method, "kept_float": count, "agreement": agreement})
                if agreement > best[2]:
                    best = (quantized, logits, agreement, method, ranked[:count])
                if agreement >= target_agreement:
                    break
    quantized, logits, agreement, method, excluded = best
    report.update(settings={"calibration": method, "per_channel": True, "matmuls_kept_float": len(excluded)},
                  **_comparison(logits, float_logits, labels), size_after=len(quantized.SerializeToString()))
    if agreement < min_agreement:
        raise ExportVerificationError(
            f"int8-static export agrees with the float model on only {agreement:.1%} of top-1 "
            f"predictions (< {min_agreement:.0%}) on {len(feed)} images, with every calibration tried"
        )
    return quantized, report


def _most_sensitive_first(model_proto, logits_with, feed: np.ndarray, float_logits: np.ndarray) -> list[str]:
    """The MatMuls, largest logit error first when each alone is quantised (``logits_with(exclude, feed, ref)``).

    The mean squared logit error ranks finer than agreement, which a few hundred images barely resolve.
    """
    names = [n.name for n in model_proto.graph.node if n.op_type == "MatMul"]
    errors = {}
    for name in names:
        logits = logits_with([other for other in names if other != name], feed, float_logits)
        errors[name] = float(np.mean(np.square(logits - float_logits)))
    return sorted(names, key=lambda name: -errors[name])


class _Reader:
    """A ``CalibrationDataReader`` over an array of graph inputs, in batches."""

    def __init__(self, images: np.ndarray):
        self._batches = iter([{"images": images[i : i + _CALIBRATION_BATCH]}
                              for i in range(0, len(images), _CALIBRATION_BATCH)])

    def get_next(self):
        return next(self._batches, None)


def _quantize_static_file(source: Path, target: Path, calibration: np.ndarray, method: str, exclude: list[str],
                          cache: Path):
    """One ``quantize_static`` run; the ranges of ``method`` are computed once and cached in ``cache``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method != "MinMax":  # histogram methods hold every activation of every image in memory
        calibration = calibration[:HISTOGRAM_LIMIT]
    quantize_static(
        source, target, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude or None, calibrate_method=getattr(CalibrationMethod, method),
        calibration_cache_path=cache,
    )


# --------------------------------------------------------------------------------------------------
# fp16


def _fuse_layer_norms(model_proto):
    """Decomposed LayerNorms (no ``--optimize``) as ``LayerNormalization`` (opset >= 17): they stay float32.

    Returns ``(proto, how many were fused)``; a graph below opset 17 is returned as it is.
    """
    from keras_vit.export.graph.edit import GraphEditor
    from keras_vit.export.graph.passes import fuse_layer_norm

    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        return model_proto, 0
    editor = GraphEditor(model_proto)
    count = fuse_layer_norm(editor)
    return (editor.to_model(), count) if count else (model_proto, 0)


def quantize_fp16(model_proto, feed: np.ndarray, float_logits: np.ndarray, labels: np.ndarray | None = None,
                  min_agreement: float = FP16_MIN_AGREEMENT):
    """Float16 weights and activations, float32 ``images`` in and outputs out; :data:`FP16_KEEP_FLOAT` stay float32.

    Returns ``(fp16_proto, report)``; raises :class:`ExportVerificationError` below ``min_agreement``.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    report = {"mode": "fp16", "size_before": len(model_proto.SerializeToString()), "samples": int(len(feed)),
              "accuracy_before": accuracy(float_logits, labels), "min_agreement": min_agreement,
              "settings": {"keep_float": list(FP16_KEEP_FLOAT)}}
    model_proto, report["settings"]["layer_norms_fused"] = _fuse_layer_norms(model_proto)
    with _quiet():
        converted = convert_float_to_float16(
            model_proto, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FLOAT],
        )
    logits = run_onnx(ort_session(converted.SerializeToString()), feed)["logits"]
    report.update(**_comparison(logits, float_logits, labels), size_after=len(converted.SerializeToString()))
    if report["agreement"] < min_agreement:
        raise ExportVerificationError(
            f"fp16 export agrees with the float model on only {report['agreement']:.1%} of top-1 predictions "
            f"(< {min_agreement:.1%}) on {len(feed)} images"
        )
    return converted, report

