"""What ``--optimize`` and ``--quantize int8`` do to a converted ONNX graph, and how they are timed.

``--optimize``: the keras-vit fusions (:mod:`keras_vit.export.graph`), onnxruntime's transformer
optimizer and its offline graph optimisation; the result is kept only if it keeps parity and is not
slower at batch 1 (interleaved medians). ``--quantize int8``: dynamic INT8 weight quantisation, the
settings tried in order until top-1 agreement with the float graph is >= 99 %.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_vit.export.graph.edit import MS_DOMAIN
from keras_vit.export.graph.fusion import FUSED_FAMILIES
from keras_vit.export.source import ModelDescription
from keras_vit.export.verify import (
    INT8_MIN_AGREEMENT,
    PARITY_TOLERANCE,
    ExportVerificationError,
    accuracy,
    max_relative_diff,
    onnx_parity,
    ort_session,
    run_onnx,
    top1_agreement,
)

# --------------------------------------------------------------------------------------------------
# Latency measurement


def time_calls(call: Callable[[], object], runs: int, warmup: int = 3) -> np.ndarray:
    """Seconds taken by each of ``runs`` calls of ``call`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    out = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        out[i] = time.perf_counter() - start
    return out


def interleaved_median_ms(
    sessions: dict[str, object], feed: np.ndarray, rounds: int = 10, runs_per_round: int = 10
) -> dict[str, float]:
    """Median latency (ms) of each session on ``feed``, runs interleaved round by round.

    Interleaving spreads the load of a busy machine evenly over the candidates being compared.
    """
    times: dict[str, list] = {name: [] for name in sessions}
    calls = {name: (lambda s=s: s.run(None, {"images": feed})) for name, s in sessions.items()}
    for call in calls.values():
        time_calls(call, runs=0, warmup=3)
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].extend(time_calls(call, runs_per_round, warmup=0))
    return {name: float(np.median(values) * 1e3) for name, values in times.items()}


# --------------------------------------------------------------------------------------------------
# Dynamic INT8 weight quantisation (--quantize int8)


ATTEMPTS = (
    {"per_channel": False, "reduce_range": True, "keep_first_last_float": False},
    {"per_channel": False, "reduce_range": True, "keep_first_last_float": True},
    {"per_channel": True, "reduce_range": True, "keep_first_last_float": True},
    {"per_channel": False, "reduce_range": False, "keep_first_last_float": False},
)
#: Agreement at which the search stops early (a margin above the 99 % requirement).
GOOD_AGREEMENT = 0.995
OP_TYPES = ["MatMul", "Attention"]


def first_last_matmuls(model_proto) -> list[str]:
    """Names of the first and last MatMul nodes with a constant weight (graph order is topological)."""
    initializers = {t.name for t in model_proto.graph.initializer}
    names = [
        n.name for n in model_proto.graph.node
        if n.op_type == "MatMul" and any(i in initializers for i in n.input)
    ]
    return sorted({names[0], names[-1]}) if names else []


def quantize_once(model_proto, per_channel: bool, reduce_range: bool, keep_first_last_float: bool):
    """One ``quantize_dynamic`` run; returns the INT8 ``onnx.ModelProto``."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns on the root logger about pre-processing
    try:
        with tempfile.TemporaryDirectory(prefix="keras_vit_int8_") as tmp:
            return _quantize_file(tmp, model_proto, per_channel, reduce_range, keep_first_last_float)
    finally:
        root.setLevel(level)


def _quantize_file(tmp: str, model_proto, per_channel: bool, reduce_range: bool, keep_first_last_float: bool):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
    onnx.save(model_proto, source)
    # onnxruntime's quantizer turns any "Attention" into com.microsoft.QAttention, which reads x, W, b: only
    # the contrib Attention has that signature (the standard one of a --portable graph reads q, k, v).
    contrib_attention = any(n.op_type == "Attention" and n.domain == MS_DOMAIN for n in model_proto.graph.node)
    quantize_dynamic(
        source, target, op_types_to_quantize=OP_TYPES if contrib_attention else ["MatMul"],
        per_channel=per_channel, reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=first_last_matmuls(model_proto) if keep_first_last_float else None,
    )
    return onnx.load(target)


def quantize_int8(model_proto, feed: np.ndarray, float_logits: np.ndarray, labels: np.ndarray | None = None,
                  min_agreement: float = INT8_MIN_AGREEMENT):
    """Quantise with the first of :data:`ATTEMPTS` that reaches ``GOOD_AGREEMENT``, else the best one.

    ``float_logits`` are the float graph's logits on ``feed``. Returns ``(int8_proto, report)``; raises
    :class:`ExportVerificationError` when no setting agrees enough.
    """
    report = {
        "size_before": len(model_proto.SerializeToString()),
        "samples": int(len(feed)),
        "accuracy_before": accuracy(float_logits, labels),
        "min_agreement": min_agreement,
        "tried": [],
    }
    best = None
    for settings in ATTEMPTS:
        quantized = quantize_once(model_proto, **settings)
        logits = run_onnx(ort_session(quantized.SerializeToString()), feed)["logits"]
        agreement = top1_agreement(logits, float_logits)
        report["tried"].append({**settings, "agreement": agreement})
        if best is None or agreement > best[1]:
            best = (quantized, agreement, settings, logits)
        if agreement >= max(GOOD_AGREEMENT, min_agreement):
            break
    quantized, agreement, settings, logits = best
    report.update(
        settings=settings, agreement=agreement, accuracy_after=accuracy(logits, labels),
        max_relative_diff=max_relative_diff(logits, float_logits),
        size_after=len(quantized.SerializeToString()),
    )
    if agreement < min_agreement:
        raise ExportVerificationError(
            f"INT8 export agrees with the float model on only {agreement:.1%} of top-1 predictions "
            f"(< {min_agreement:.0%}) on {len(feed)} images, with every setting tried"
        )
    return quantized, report


# --------------------------------------------------------------------------------------------------
# Fusion and offline graph optimisation (--optimize)


#: The optimised graph may be this much slower (relative) and still count as "not slower" (timer noise).
SPEED_TOLERANCE = 0.02


def op_counts(model_proto) -> Counter:
    """Node count per op type (top-level graph)."""
    return Counter(node.op_type for node in model_proto.graph.node)


def fusion_counts(model_proto) -> dict[str, int]:
    """Number of fused ops per family, with the op types found, e.g. ``{"LayerNormalization": 13, ...}``."""
    counts = op_counts(model_proto)
    out: dict[str, int] = {}
    for family in ("LayerNormalization", "Gelu", "Attention"):
        types = FUSED_FAMILIES[family]
        out[family] = int(sum(counts.get(t, 0) for t in types))
        for t in types:
            if counts.get(t):
                out[t] = int(counts[t])
    return out


def optimize_graph(model_proto, info: ModelDescription):
    """The transformer optimizer then ORT offline optimisation; returns a new ``onnx.ModelProto``."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from keras_vit.export.graph.fusion import fuse_vit, transformer_optimizer_options

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model_proto, _ = fuse_vit(model_proto)  # attention/LayerNorm/GELU fusions ORT's optimizer misses in tf2onnx graphs
    with tempfile.TemporaryDirectory(prefix="keras_vit_opt_") as tmp:
        plain = Path(tmp) / "plain.onnx"
        onnx.save(model_proto, plain)
        fused = optimize_model(
            str(plain), model_type="vit", num_heads=info.num_heads, hidden_size=info.hidden_dim, opt_level=0,
            optimization_options=transformer_optimizer_options(),
        )
        fused_path = Path(tmp) / "fused.onnx"
        fused.save_model_to_file(str(fused_path))
        ort_session(fused_path, optimized_model_path=Path(tmp) / "optimized.onnx")
        optimized = onnx.load(Path(tmp) / "optimized.onnx")
    del optimized.metadata_props[:]
    return optimized


def portable_graph(model_proto):
    """``--optimize --portable``: the keras-vit fusions in standard ONNX ops only (opset 23), no onnxruntime pass.

    onnxruntime's offline optimisation would write its contrib ops back, so it is not run here; it still
    runs when the file is loaded (:mod:`keras_vit.export.graph.portable`).
    """
    from keras_vit.export.graph.portable import portable_vit

    return portable_vit(model_proto)[0]


def choose_graph(plain, optimized, feed: np.ndarray, reference: np.ndarray, timing_rounds: int = 10):
    """Pick the optimised graph if it keeps parity and is not slower than ``plain``.

    Returns ``(chosen_proto, report)``; the report holds the fusions, node counts, parity and the two
    batch-1 medians, ``kept`` (``"optimized"`` or ``"plain"``) and ``reason``.
    """
    plain_bytes, optimized_bytes = plain.SerializeToString(), optimized.SerializeToString()
    report = {
        "fusions": fusion_counts(optimized),
        "nodes_plain": len(plain.graph.node),
        "nodes_optimized": len(optimized.graph.node),
    }
    try:
        parity = onnx_parity(ort_session(optimized_bytes), feed, reference, PARITY_TOLERANCE)
        report["max_abs_diff"] = parity["max_abs_diff"]
    except ExportVerificationError as err:
        report.update(kept="plain", reason=f"the optimized graph broke parity: {err}")
        return plain, report
    sessions = {"plain": ort_session(plain_bytes, threads=1), "optimized": ort_session(optimized_bytes, threads=1)}
    medians = interleaved_median_ms(sessions, feed[:1], rounds=timing_rounds)
    report["plain_ms"], report["optimized_ms"] = medians["plain"], medians["optimized"]
    if medians["optimized"] > medians["plain"] * (1 + SPEED_TOLERANCE):
        report.update(
            kept="plain",
            reason=f"the optimized graph was slower: {medians['optimized']:.3f} vs {medians['plain']:.3f} ms "
            "at batch 1, 1 thread",
        )
        return plain, report
    report.update(kept="optimized", reason="parity kept and not slower")
    return optimized, report
