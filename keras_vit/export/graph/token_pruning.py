"""Compute the last block for the class token only, when only the class token is read.

With class-token pooling the logits depend on one row of the last block's output. Every op after the
last attention works row by row (LayerNorm, the MLP, residual sums), so selecting token 0 can move up
the graph to the attention, which then needs its queries for token 0 only (its keys and values still
cover all tokens). The result is exact: the same numbers from a fraction of the last block's work.

The pass moves a ``Slice`` that keeps token 0 (axis 1, ``[0:1]``) above any row-wise node whose
outputs are read only by such slices, and turns a fused ``Attention`` whose output is read only by
such slices into ``MultiHeadAttention`` with a one-token query.
"""

from __future__ import annotations

import numpy as np

from keras_vit.export.graph.edit import MS_DOMAIN, GraphEditor

_BIG = 2**31 - 1
#: Row-wise ops: input indices that carry tokens, and outputs allowed to be read.
_ROWWISE = {
    ("", "LayerNormalization"): ((0,), (0,)),
    (MS_DOMAIN, "SkipLayerNormalization"): ((0, 1), (0, 3)),
    (MS_DOMAIN, "Gelu"): ((0,), (0,)),
    (MS_DOMAIN, "BiasGelu"): ((0,), (0,)),
    ("", "Erf"): ((0,), (0,)),
    ("", "Relu"): ((0,), (0,)),
    ("", "Tanh"): ((0,), (0,)),
    ("", "Sigmoid"): ((0,), (0,)),
}
_BINARY = ("Add", "Mul", "Sub", "Div")


def prune_to_class_token(editor: GraphEditor) -> int:
    """Push token-0 slices up to the attention that feeds them; returns the number of attentions pruned."""
    pruned = 0
    progress = True
    while progress:
        progress = False
        for node in list(editor.nodes):
            if not _is_token_slice(editor, node):
                continue
            producer = editor.producer(node.input[0])
            if producer is None or not _only_sliced(editor, producer):
                continue
            if producer.op_type == "Attention" and producer.domain == MS_DOMAIN:
                if _prune_attention(editor, producer):
                    pruned += 1
                    progress = True
                    break
                continue
            inputs = _row_inputs(editor, producer)
            if inputs is not None:
                _push_through(editor, producer, inputs)
                progress = True
                break
    return pruned


def _is_token_slice(editor: GraphEditor, node) -> bool:
    """A ``Slice`` of a 3-D tensor that keeps token 0 along axis 1 and everything along other axes."""
    if node.op_type != "Slice" or node.domain or editor.rank(node.input[0]) not in (None, 3):
        return False
    consts = [editor.constant(name) for name in node.input[1:]]
    if len(consts) < 3 or any(c is None for c in consts):
        return False
    starts, ends, axes = (c.ravel().tolist() for c in consts[:3])
    steps = consts[3].ravel().tolist() if len(consts) > 3 else [1] * len(axes)
    kept = False
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step != 1 or start != 0:
            return False
        if axis in (1, -2):
            if end != 1 or kept:
                return False
            kept = True
        elif end < _BIG:
            return False
    return kept


def _only_sliced(editor: GraphEditor, node) -> bool:
    """Every output of ``node`` that is read is read only by token-0 slices (and is no graph output)."""
    read = False
    for name in node.output:
        if not name:
            continue
        if name in editor.outputs:
            return False
        for reader in editor.consumers.get(name, ()):
            if not _is_token_slice(editor, reader) or reader.input[0] != name:
                return False
            read = True
    return read


def _row_inputs(editor: GraphEditor, node) -> tuple[int, ...] | None:
    """Input indices to slice when ``node`` is row-wise (``None`` when it is not, or not provably)."""
    spec = _ROWWISE.get((node.domain, node.op_type))
    if spec is not None:
        inputs, allowed = spec
        used = [i for i, name in enumerate(node.output) if name and editor.uses(name)]
        if any(i not in allowed for i in used):
            return None
        if node.op_type == "LayerNormalization" and editor.attribute(node, "axis", -1) not in (-1, 2):
            return None
        return inputs if all(editor.rank(node.input[i]) in (None, 3) for i in inputs) else None
    if node.domain:
        return None
    if node.op_type == "MatMul":
        weight = editor.constant(node.input[1])
        return (0,) if weight is not None and weight.ndim == 2 and editor.rank(node.input[0]) == 3 else None
    if node.op_type in _BINARY:
        rows = []
        for i, name in enumerate(node.input):
            value = editor.constant(name)
            if value is None:
                if editor.rank(name) != 3:
                    return None
                rows.append(i)
            elif value.ndim >= 2 and value.shape[-2] != 1:
                return None  # differs from token to token (e.g. a position embedding)
        return tuple(rows) if rows else None
    return None


def _slice_constants(editor: GraphEditor) -> list[str]:
    cached = getattr(editor, "_token_slice_constants", None)
    if cached is None:
        cached = [editor.add_constant(np.array([v], np.int64), hint) for v, hint in
                  ((0, "token_start"), (1, "token_end"), (1, "token_axis"))]
        editor._token_slice_constants = cached
    return cached


def _sliced(editor: GraphEditor, name: str, new_nodes: list) -> str:
    """The token-0 slice of ``name``: an existing one, or a new ``Slice`` appended to ``new_nodes``."""
    for reader in editor.consumers.get(name, ()):
        if reader.input[0] == name and _is_token_slice(editor, reader):
            return reader.output[0]
    for node in new_nodes:
        if node.op_type == "Slice" and node.input[0] == name:
            return node.output[0]
    output = editor.fresh(name + "_token0")
    new_nodes.append(editor.make_node("Slice", [name, *_slice_constants(editor)], [output], hint="TokenSlice"))
    editor.declare(output, like=name, dims={1: 1})
    editor.ranks[output] = 3
    return output


def _adopt_outputs(editor: GraphEditor, old, new_outputs: list[str]) -> None:
    """Route the readers of ``old``'s token slices to ``new_outputs`` (same index), then drop those slices."""
    slices = [r for name in old.output if name for r in editor.consumers.get(name, ())]
    editor.remove(slices)
    for reader in slices:
        index = list(old.output).index(reader.input[0])
        editor.rename_uses(reader.output[0], new_outputs[index])


def _push_through(editor: GraphEditor, node, rows: tuple[int, ...]) -> None:
    new_nodes: list = []
    inputs = [(_sliced(editor, name, new_nodes) if i in rows else name) for i, name in enumerate(node.input)]
    outputs = [editor.fresh(name) if name else "" for name in node.output]
    clone = editor.make_node(node.op_type, inputs, outputs, hint=node.op_type, domain=node.domain)
    clone.attribute.extend(node.attribute)
    for name, old in zip(outputs, node.output, strict=True):
        if name:
            editor.declare(name, like=old, dims={1: 1})
            editor.ranks[name] = 3
    editor.replace(node, [*new_nodes, clone])
    _adopt_outputs(editor, node, outputs)


def _prune_attention(editor: GraphEditor, attention) -> bool:
    """``Attention(x, W, b)`` read at token 0 only -> ``MultiHeadAttention(x[:, :1] @ Wq, x @ Wk, x @ Wv, b)``."""
    weight = editor.constant(attention.input[1])
    if weight is None or len(attention.input) < 3 or editor.constant(attention.input[2]) is None:
        return False
    if any(attention.input[3:]) or editor.attribute(attention, "qkv_hidden_sizes") or editor.attribute(
        attention, "unidirectional", 0
    ):
        return False
    width = weight.shape[1] // 3
    x, bias = attention.input[0], attention.input[2]
    new_nodes: list = []
    query_rows = _sliced(editor, x, new_nodes)
    query, keys_values, key, value = (editor.fresh(f"attention_{part}") for part in ("q", "kv", "k", "v"))
    w_query = editor.add_constant(weight[:, :width].astype(np.float32), "attention_q_weight")
    w_kv = editor.add_constant(weight[:, width:].astype(np.float32), "attention_kv_weight")
    split = editor.add_constant(np.array([width, width], np.int64), "attention_kv_split")
    new_nodes += [
        editor.make_node("MatMul", [query_rows, w_query], [query], hint="QueryToken0"),
        editor.make_node("MatMul", [x, w_kv], [keys_values], hint="KeyValue"),
        editor.make_node("Split", [keys_values, split], [key, value], hint="SplitKV", axis=-1),
    ]
    output = editor.fresh(attention.output[0])
    attributes = {"num_heads": int(editor.attribute(attention, "num_heads"))}
    scale = editor.attribute(attention, "scale")
    if scale:
        attributes["scale"] = float(scale)
    new_nodes.append(editor.make_node("MultiHeadAttention", [query, key, value, bias], [output],
                                      hint="MultiHeadAttentionToken0", domain=MS_DOMAIN, **attributes))
    full = attention.output[0]
    for name, like, dims in ((query, full, {1: 1}), (keys_values, full, {2: 2 * width}), (key, full, None),
                             (value, full, None), (output, full, {1: 1})):
        editor.declare(name, like=like, dims=dims)
    editor.ranks[output] = 3
    editor.replace(attention, new_nodes)
    _adopt_outputs(editor, attention, [output])
    return True
