"""The ONNX graph rewriter behind ``--optimize``: tf2onnx's graph of a Keras ViT -> onnxruntime's fused ops.

Modules: ``edit`` (:class:`~.edit.GraphEditor`, a small mutable view of an ONNX graph), ``passes``
(Dense-on-tokens, LayerNorm, GELU, BiasGelu rewrites), ``attention`` (each block's attention ->
``com.microsoft.Attention``), ``token_pruning`` (the last block for the class token only) and
``fusion`` (:func:`fuse_vit`, the passes in order, and the fused-op counts); ``portable``
(:func:`~.portable.portable_vit`: the same graph in standard ONNX ops only, opset 23, for ``--portable``).
"""

from __future__ import annotations

from keras_vit.export.graph.fusion import (
    FUSED_FAMILIES,
    fuse_attention,
    fuse_vit,
    fused_op_counts,
    transformer_optimizer_options,
)

__all__ = ["FUSED_FAMILIES", "fuse_attention", "fuse_vit", "fused_op_counts", "transformer_optimizer_options"]
