"""Self-attention with a fused q/k/v projection becomes onnxruntime's ``com.microsoft.Attention``.

The pattern is what tf2onnx writes for :class:`keras_vit.layers.MultiHeadSelfAttention` (and any
attention built the same way, like timm's)::

    qkv = x @ W (+ b)                                   W: (D_in, 3 * H * d), ordered [q | k | v] x heads
    t   = transpose(reshape(qkv, [-1, T, 3, H, d]), [2, 0, 3, 1, 4])
    q, k, v = t[0], t[1], t[2]                          Slice + Squeeze, Gather or Split
    p   = softmax((q * s) @ transpose(k, [0, 1, 3, 2]))  the scale s on q, k or the scores
    y   = reshape(transpose(p @ v, [0, 2, 1, 3]), [-1, T, H * d])

``Attention(x, W, b, num_heads=H, scale=s)`` computes exactly this, with one GEMM for q/k/v and the
per-head products, softmax and head merge inside one kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_vit.export.graph.edit import MS_DOMAIN, GraphEditor


@dataclass
class _Match:
    output_node: object
    source: str
    weight: np.ndarray
    bias: np.ndarray | None
    num_heads: int
    scale: float


def fuse_attention(editor: GraphEditor) -> int:
    """Replace every matching attention subgraph by one ``Attention`` node; returns how many."""
    count = 0
    for softmax in [n for n in editor.nodes if n.op_type == "Softmax"]:
        match = _match(editor, softmax)
        if match is None:
            continue
        weight = editor.add_constant(match.weight.astype(np.float32), "attention_qkv_weight")
        bias_value = match.bias if match.bias is not None else np.zeros(match.weight.shape[1], np.float32)
        bias = editor.add_constant(bias_value.astype(np.float32), "attention_qkv_bias")
        fused = editor.make_node(
            "Attention", [match.source, weight, bias], [match.output_node.output[0]], hint="Attention",
            domain=MS_DOMAIN, num_heads=match.num_heads, scale=float(match.scale),
        )
        editor.replace(match.output_node, [fused])
        count += 1
    return count


def _strip_scale(editor: GraphEditor, name: str) -> tuple[str, float]:
    """Follow multiplications/divisions by scalar constants back; ``(source, product of factors)``."""
    factor = 1.0
    while (node := editor.producer(name, ("Mul", "Div"))) is not None:
        split = editor.split_constant(node)
        if split is None or split[1].size != 1 or (node.op_type == "Div" and node.input[1] == split[0]):
            break
        value = float(split[1].reshape(()))
        factor *= value if node.op_type == "Mul" else 1.0 / value
        name = split[0]
    return name, factor


def _qkv_part(editor: GraphEditor, name: str) -> tuple[str, int] | None:
    """``(t, i)`` when ``name`` is ``t[i]`` along axis 0 (Slice+Squeeze, Gather or Split+Squeeze)."""
    node = editor.producer(name)
    if node is None:
        return None
    if node.op_type == "Gather" and editor.attribute(node, "axis", 0) == 0:
        index = editor.constant(node.input[1])
        return (node.input[0], int(index)) if index is not None and index.size == 1 and index.ndim == 0 else None
    if node.op_type != "Squeeze":
        return None
    axes = editor.attribute(node, "axes")
    if axes is None and len(node.input) > 1:
        value = editor.constant(node.input[1])
        axes = None if value is None else value.ravel().tolist()
    if axes != [0]:
        return None
    inner = editor.producer(node.input[0])
    if inner is not None and inner.op_type == "Slice":
        consts = [editor.constant(i) for i in inner.input[1:]]
        if any(c is None for c in consts) or len(consts) < 3:
            return None
        starts, ends, axes = (c.ravel().tolist() for c in consts[:3])
        steps = consts[3].ravel().tolist() if len(consts) > 3 else [1]
        if axes == [0] and steps == [1] and len(starts) == 1 and ends == [starts[0] + 1]:
            return inner.input[0], starts[0]
    if inner is not None and inner.op_type == "Split" and editor.attribute(inner, "axis", 0) == 0:
        return inner.input[0], list(inner.output).index(node.input[0])
    return None


def _match(editor: GraphEditor, softmax) -> _Match | None:
    rank = editor.rank(softmax.input[0])
    if editor.attribute(softmax, "axis", -1) not in (-1, 3) or rank not in (None, 4):
        return None
    context = editor.only_consumer(softmax.output[0])
    if context is None or context.op_type != "MatMul" or context.input[0] != softmax.output[0]:
        return None
    scores_name, scale = _strip_scale(editor, softmax.input[0])
    scores = editor.producer(scores_name, "MatMul")
    if scores is None:
        return None
    query, q_scale = _strip_scale(editor, scores.input[0])
    key_t, k_scale = _strip_scale(editor, scores.input[1])
    transpose_k = editor.producer(key_t, "Transpose")
    if transpose_k is None or editor.attribute(transpose_k, "perm") != [0, 1, 3, 2]:
        return None
    key, k_scale2 = _strip_scale(editor, transpose_k.input[0])
    parts = [_qkv_part(editor, name) for name in (query, key, context.input[1])]
    if any(p is None for p in parts) or len({p[0] for p in parts}) != 1 or [p[1] for p in parts] != [0, 1, 2]:
        return None
    split = editor.producer(parts[0][0], "Transpose")
    if split is None or editor.attribute(split, "perm") != [2, 0, 3, 1, 4]:
        return None
    heads = _match_heads(editor, split.input[0])
    if heads is None:
        return None
    source, weight, bias, tokens, num_heads, head_dim = heads
    output_node = _match_merge(editor, context, tokens, num_heads * head_dim)
    if output_node is None or editor.rank(source) not in (None, 3):
        return None
    return _Match(output_node, source, weight, bias, num_heads, scale * q_scale * k_scale * k_scale2)


def _match_heads(editor: GraphEditor, name: str):
    """``reshape(x @ W + b, [-1, T, 3, H, d])`` -> ``(x, W, b, T, H, d)``."""
    reshape = editor.producer(name, "Reshape")
    shape = editor.constant(reshape.input[1]) if reshape is not None else None
    if shape is None or shape.size != 5 or shape[0] not in (-1, 0) or shape[2] != 3 or min(shape[1:]) < 1:
        return None
    tokens, num_heads, head_dim = (int(v) for v in shape[[1, 3, 4]])
    projected, bias = reshape.input[0], None
    add = editor.producer(projected, "Add")
    if add is not None:
        split = editor.split_constant(add)
        if split is None or split[1].ndim != 1:
            return None
        projected, bias = split
    matmul = editor.producer(projected, "MatMul")
    weight = editor.constant(matmul.input[1]) if matmul is not None else None
    width = 3 * num_heads * head_dim
    if weight is None or weight.ndim != 2 or weight.shape[1] != width or (bias is not None and bias.size != width):
        return None
    source = matmul.input[0]
    flatten = editor.producer(source, "Reshape")
    if flatten is not None and editor.rank(source) == 2 and editor.rank(flatten.input[0]) == 3:
        # tf2onnx folds "flatten tokens, MatMul, restore (B, T, 3D)" into the head reshape when there is no bias.
        flat_shape = editor.constant(flatten.input[1])
        if flat_shape is not None and flat_shape.tolist() == [-1, weight.shape[0]]:
            source = flatten.input[0]
    return source, weight, bias, tokens, num_heads, head_dim


def _match_merge(editor: GraphEditor, context, tokens: int, width: int):
    """``reshape(transpose(context, [0, 2, 1, 3]), [-1, T, H * d])``: the final Reshape node."""
    transpose = editor.only_consumer(context.output[0])
    if transpose is None or transpose.op_type != "Transpose" or editor.attribute(transpose, "perm") != [0, 2, 1, 3]:
        return None
    reshape = editor.only_consumer(transpose.output[0])
    shape = editor.constant(reshape.input[1]) if reshape is not None and reshape.op_type == "Reshape" else None
    if shape is None or shape.tolist()[1:] != [tokens, width] or shape[0] not in (-1, 0):
        return None
    return reshape
