"""``--optimize``: onnxruntime's transformer optimizer plus ORT's offline graph optimisation.

Two steps, saved into the file: ``onnxruntime.transformers.optimizer.optimize_model(model_type="vit")``
(pattern fusions of LayerNorm, Gelu and attention into onnxruntime's contrib ops), then an
onnxruntime session at ``ORT_ENABLE_EXTENDED`` that writes its optimised graph out (constant folding,
redundant node elimination, CPU-independent fusions; not ``ORT_ENABLE_ALL``, whose layout changes are
tied to the machine that runs them). The result only runs in onnxruntime.

:func:`choose_graph` keeps the optimised graph only if it keeps parity and is not slower than the
plain one (batch 1, one thread, interleaved medians, ``SPEED_TOLERANCE`` for timer noise).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from keras_vit.export.errors import ExportVerificationError
from keras_vit.export.model_info import ModelDescription
from keras_vit.export.timing import interleaved_median_ms
from keras_vit.export.verify import PARITY_TOLERANCE, onnx_parity, ort_session

#: Fused op types reported, by family.
FUSED_OP_FAMILIES = {
    "LayerNormalization": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                           "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"),
    "Gelu": ("Gelu", "FastGelu", "BiasGelu", "GemmFastGelu"),
    "Attention": ("Attention", "MultiHeadAttention"),
}
#: The optimised graph may be this much slower (relative) and still count as "not slower" (timer noise).
SPEED_TOLERANCE = 0.02


def op_counts(model_proto) -> Counter:
    """Node count per op type (top-level graph)."""
    return Counter(node.op_type for node in model_proto.graph.node)


def fusion_counts(model_proto) -> dict[str, int]:
    """Number of fused ops per family, with the op types found, e.g. ``{"LayerNormalization": 13, ...}``."""
    counts = op_counts(model_proto)
    out: dict[str, int] = {}
    for family, types in FUSED_OP_FAMILIES.items():
        out[family] = int(sum(counts.get(t, 0) for t in types))
        for t in types:
            if counts.get(t):
                out[t] = int(counts[t])
    return out


def optimize_graph(model_proto, info: ModelDescription):
    """The transformer optimizer then ORT offline optimisation; returns a new ``onnx.ModelProto``."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    from keras_vit.export.fusion import fuse_vit, transformer_optimizer_options

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
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    del optimized.metadata_props[:]
    return optimized


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
