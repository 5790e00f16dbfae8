"""Rewrite a tf2onnx graph of a Keras ViT into onnxruntime's fused transformer ops.

onnxruntime's own transformer optimizer recognises none of the attention in a tf2onnx graph of a
Keras model and leaves its LayerNorms decomposed, so :func:`fuse_vit` does it, pass by pass:

1. ``Dense`` on tokens (TensorFlow ``tensordot``: reshape, 2-D MatMul, reshape back) -> one ``MatMul``;
2. Keras' decomposed LayerNorm -> ``LayerNormalization``; ``erf`` GELU -> ``Gelu``;
3. each block's attention -> ``com.microsoft.Attention`` (:mod:`keras_vit.export.graph.attention`);
4. bias + GELU -> ``BiasGelu``;
5. the last block computed for the class token only when nothing else reads it
   (:mod:`keras_vit.export.graph.token_pruning`; exact, it only skips rows nobody reads).

``SkipLayerNormalization`` (residual sum + LayerNorm in one op) is off by default: onnxruntime's CPU
kernel is slower than ``Add`` + ``LayerNormalization`` on ViT token tensors, so
:func:`transformer_optimizer_options` turns it off in onnxruntime's own transformer optimizer too.

Every pass checks its pattern down to the constants and leaves what it does not recognise as it was;
callers still verify the result against the Keras model (the export pipeline does, to 1e-4).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from keras_vit.export.graph.attention import fuse_attention as _fuse_attention_pass
from keras_vit.export.graph.edit import GraphEditor
from keras_vit.export.graph.passes import (
    fuse_bias_gelu,
    fuse_gelu,
    fuse_layer_norm,
    fuse_skip_layer_norm,
    unfold_tensordot,
)
from keras_vit.export.graph.token_pruning import prune_to_class_token

#: Op types counted as fused, by family (the names onnxruntime reports).
FUSED_FAMILIES = {
    "Attention": ("Attention", "MultiHeadAttention"),
    "LayerNormalization": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                           "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"),
    "Gelu": ("Gelu", "BiasGelu", "FastGelu", "GemmFastGelu"),
}


def fuse_vit(
    model_proto, prune_class_token: bool = True, skip_layer_norm: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Fuse ``model_proto`` (an ``onnx.ModelProto``; not modified) into onnxruntime's transformer ops.

    Returns ``(fused_proto, report)``; the report counts each rewrite (``tensordot``, ``layer_norm``,
    ``gelu``, ``attention``, ``bias_gelu``, ``skip_layer_norm``, ``class_token_blocks``), the fused
    ops per family and the node counts before and after. The fused graph needs onnxruntime (its
    ``com.microsoft`` contrib ops) and opset >= 17 for ``LayerNormalization``.

    Args:
        model_proto: a tf2onnx graph of a Keras ViT (any graph is accepted; unmatched parts stay).
        prune_class_token: compute the last block for the class token only where that is all the
            graph reads (class-token pooling).
        skip_layer_norm: also fuse residual sums into ``SkipLayerNormalization`` (slower on CPU).
    """
    editor = GraphEditor(model_proto)
    report: dict[str, Any] = {"nodes_before": len(model_proto.graph.node)}
    steps = [
        ("tensordot", unfold_tensordot),
        ("layer_norm", fuse_layer_norm),
        ("gelu", fuse_gelu),
        ("attention", _fuse_attention_pass),
        ("bias_gelu", fuse_bias_gelu),
    ]
    if skip_layer_norm:
        steps.append(("skip_layer_norm", fuse_skip_layer_norm))
    if prune_class_token:
        steps.append(("class_token_blocks", prune_to_class_token))
    for name, step in steps:
        report[name] = step(editor)
        editor.prune()
    fused = editor.to_model()
    report["nodes_after"] = len(fused.graph.node)
    report["fused_ops"] = fused_op_counts(fused)
    return fused, report


def fuse_attention(model_proto) -> tuple[Any, dict[str, Any]]:
    """:func:`fuse_vit` without class-token pruning: every block keeps all its rows."""
    return fuse_vit(model_proto, prune_class_token=False)


def fused_op_counts(model_proto) -> dict[str, int]:
    """Number of fused ops per family in ``model_proto``'s main graph."""
    counts = Counter(node.op_type for node in model_proto.graph.node)
    return {family: sum(counts[t] for t in types) for family, types in FUSED_FAMILIES.items()}


def transformer_optimizer_options(model_type: str = "vit"):
    """``FusionOptions`` for onnxruntime's transformer optimizer that keep a fused graph fast on CPU.

    The same fusions as ``model_type``'s defaults, less ``SkipLayerNormalization`` (see the module
    docstring): pass as ``optimize_model(..., optimization_options=transformer_optimizer_options())``.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    return options
