"""The fused ViT graph in standard ONNX ops only: the file any runtime with opset 23 can read (``--portable``).

:func:`portable_vit` runs the same fusions as ``--optimize`` (:func:`~keras_vit.export.graph.fusion.fuse_vit`,
class-token pruning of the last block included), then replaces onnxruntime's ``com.microsoft`` ops by
their standard equivalents:

- ``Attention(x, W, b)`` -> ``MatMul(x, W) + b`` -> ``Split`` into q, k, v -> ``Attention`` (opset 23,
  3-D q/k/v with ``q_num_heads``/``kv_num_heads``);
- the last block's one-token ``MultiHeadAttention(q, k, v, bias)`` -> the bias added to q and to the
  packed k/v -> ``Attention`` with a one-row query (the class-token pruning stays);
- ``Gelu`` -> ``Gelu`` (opset 20), ``BiasGelu(x, b)`` -> ``Add`` + ``Gelu``;
- ``LayerNormalization`` is standard already (opset 17).

The default-domain opset is then raised to :data:`PORTABLE_OPSET`; the ops whose signature changed since
the opset tf2onnx wrote (the ``Reduce*`` ops take ``axes`` as an input from opset 18) are rewritten, and
the result is checked with ``onnx.checker`` (full check, with shape inference), so every node is valid at
that opset. Any other non-standard op left is an error (:class:`PortabilityError`), never a silent leftover.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_vit.errors import KerasViTError
from keras_vit.export.graph.edit import MS_DOMAIN, GraphEditor
from keras_vit.export.graph.fusion import fuse_vit

#: The default-domain opset of a portable file: the first with a standard ``Attention``.
PORTABLE_OPSET = 23
#: Reduce ops whose ``axes`` moved from an attribute to an input at opset 18 (ReduceSum did at 13).
_AXES_INPUT_AT_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


class PortabilityError(KerasViTError):
    """The graph still holds an op outside the standard ONNX domain after the rewrite."""


def portable_vit(model_proto, prune_class_token: bool = True) -> tuple[Any, dict[str, Any]]:
    """``model_proto`` (a tf2onnx graph of a Keras ViT; not modified) fused into standard ONNX ops, opset 23.

    Returns ``(portable_proto, report)``: the report of :func:`fuse_vit` plus ``standard_ops`` (how many
    contrib ops were rewritten, per type), ``opset`` and ``nodes_after``. Raises :class:`PortabilityError`
    when a non-standard op is left.
    """
    fused, report = fuse_vit(model_proto, prune_class_token=prune_class_token)
    portable, rewritten = to_standard_ops(fused)
    report.update(standard_ops=rewritten, opset=PORTABLE_OPSET, nodes_after=len(portable.graph.node))
    return portable, report


def to_standard_ops(model_proto, opset: int = PORTABLE_OPSET) -> tuple[Any, dict[str, int]]:
    """Replace the ``com.microsoft`` ops :func:`fuse_vit` writes by standard ones and raise the opset to ``opset``."""
    import onnx

    editor = GraphEditor(model_proto)
    rewritten: dict[str, int] = {}
    for node in list(editor.nodes):
        if node.domain != MS_DOMAIN:
            continue
        rewrite = _REWRITES.get(node.op_type)
        if rewrite is None or not rewrite(editor, node):
            continue
        rewritten[node.op_type] = rewritten.get(node.op_type, 0) + 1
    leftover = sorted({f"{n.domain}.{n.op_type}" for n in editor.nodes if n.domain not in ("", "ai.onnx")})
    if leftover:
        raise PortabilityError(f"the graph keeps non-standard ops after the portable rewrite: {', '.join(leftover)}")
    _axes_to_inputs(editor, _default_opset(model_proto))
    editor.prune()
    model = editor.to_model()
    _set_opset(model, opset)
    del model.graph.value_info[:]  # the declarations were for contrib ops; shape inference redoes the rest
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001 - onnx raises several types
        raise PortabilityError(f"the portable graph is not valid ONNX at opset {opset}: {err}") from None
    return model, rewritten


def is_standard(model_proto) -> bool:
    """True when every node of the main graph is in the default ONNX domain."""
    return all(node.domain in ("", "ai.onnx") for node in model_proto.graph.node)


# --------------------------------------------------------------------------------------------------
# One rewrite per contrib op; each returns True when it replaced the node


def _attention(editor: GraphEditor, node) -> bool:
    """``com.microsoft.Attention(x, W, b)`` -> ``Split(x @ W + b)`` -> ``Attention``."""
    weight = editor.constant(node.input[1])
    if weight is None or weight.ndim != 2 or weight.shape[1] % 3 or any(node.input[3:]):
        return False
    if editor.attribute(node, "qkv_hidden_sizes") or editor.attribute(node, "unidirectional", 0):
        return False
    width = weight.shape[1] // 3
    projected, biased, query, key, value = (editor.fresh(f"attention_{p}") for p in ("qkv", "qkv_b", "q", "k", "v"))
    new_nodes = [editor.make_node("MatMul", [node.input[0], node.input[1]], [projected], hint="QKV")]
    source = projected
    if len(node.input) > 2 and node.input[2]:
        new_nodes.append(editor.make_node("Add", [projected, node.input[2]], [biased], hint="QKVBias"))
        source = biased
    split = editor.add_constant(np.array([width] * 3, np.int64), "attention_qkv_split")
    new_nodes.append(editor.make_node("Split", [source, split], [query, key, value], hint="SplitQKV", axis=-1))
    new_nodes.append(_standard_attention(editor, node, query, key, value))
    editor.replace(node, new_nodes)
    return True


def _multi_head_attention(editor: GraphEditor, node) -> bool:
    """``MultiHeadAttention(q, k, v, bias)`` (3-D q/k/v, as class-token pruning writes it) -> ``Attention``."""
    if len(node.input) < 3 or any(node.input[4:]) or any(editor.rank(n) not in (None, 3) for n in node.input[:3]):
        return False
    query, key, value = node.input[:3]
    new_nodes = []
    if len(node.input) > 3 and node.input[3]:
        bias = editor.constant(node.input[3])
        if bias is None or bias.ndim != 1 or bias.size % 3:
            return False
        width = bias.size // 3
        query, key, value, new_nodes = _add_biases(editor, node, np.split(bias.astype(np.float32), 3), width)
    new_nodes.append(_standard_attention(editor, node, query, key, value))
    editor.replace(node, new_nodes)
    return True


def _add_biases(editor: GraphEditor, node, biases: list[np.ndarray], width: int):
    """q + b_q, k + b_k, v + b_v; when k and v come from one ``Split``, its input gets [b_k | b_v] once."""
    query, key, value = node.input[:3]
    new_nodes = []
    q_out = editor.fresh("attention_q_b")
    new_nodes.append(editor.make_node("Add", [query, editor.add_constant(biases[0], "attention_q_bias")], [q_out],
                                      hint="QueryBias"))
    split = editor.producer(key, "Split")
    if split is not None and list(split.output) == [key, value] and editor.only_consumer(split.input[0]) is split:
        packed = editor.fresh("attention_kv_b")
        kv_bias = editor.add_constant(np.concatenate(biases[1:]), "attention_kv_bias")
        editor.replace(split, [editor.make_node("Add", [split.input[0], kv_bias], [packed], hint="KVBias"), split])
        split.input[0] = packed
        editor.reindex()
        return q_out, key, value, new_nodes
    outputs = [q_out]
    for name, bias, hint in ((key, biases[1], "key"), (value, biases[2], "value")):
        out = editor.fresh(f"attention_{hint}_b")
        new_nodes.append(editor.make_node("Add", [name, editor.add_constant(bias, f"attention_{hint}_bias")], [out],
                                          hint=f"{hint.title()}Bias"))
        outputs.append(out)
    return (*outputs, new_nodes)


def _standard_attention(editor: GraphEditor, node, query: str, key: str, value: str):
    heads = int(editor.attribute(node, "num_heads"))
    attributes = {"q_num_heads": heads, "kv_num_heads": heads}
    scale = editor.attribute(node, "scale")
    if scale:
        attributes["scale"] = float(scale)
    return editor.make_node("Attention", [query, key, value], [node.output[0]], hint="Attention", **attributes)


def _gelu(editor: GraphEditor, node) -> bool:
    editor.replace(node, [editor.make_node("Gelu", [node.input[0]], [node.output[0]], hint="Gelu")])
    return True


def _bias_gelu(editor: GraphEditor, node) -> bool:
    biased = editor.fresh("gelu_input")
    editor.replace(node, [
        editor.make_node("Add", list(node.input[:2]), [biased], hint="GeluBias"),
        editor.make_node("Gelu", [biased], [node.output[0]], hint="Gelu"),
    ])
    return True


_REWRITES = {
    "Attention": _attention,
    "MultiHeadAttention": _multi_head_attention,
    "Gelu": _gelu,
    "BiasGelu": _bias_gelu,
}


# --------------------------------------------------------------------------------------------------
# Opset


def _default_opset(model_proto) -> int:
    return next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _axes_to_inputs(editor: GraphEditor, old_opset: int) -> None:
    """From opset 18 the ``Reduce*`` ops read ``axes`` as an input: move the attribute there."""
    if old_opset >= 18:
        return
    for node in editor.nodes:
        if node.domain or node.op_type not in _AXES_INPUT_AT_18:
            continue
        attributes = {a.name: a for a in node.attribute}
        if "axes" in attributes:
            axes = editor.attribute(node, "axes")
            node.attribute.remove(attributes["axes"])
            node.input.append(editor.add_constant(np.array(axes, np.int64), f"{node.op_type.lower()}_axes"))
    editor.reindex()


def _set_opset(model, opset: int) -> None:
    from onnx import helper

    kept = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", MS_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", opset), *kept])
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
