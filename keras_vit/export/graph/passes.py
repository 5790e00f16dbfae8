"""Elementwise and normalisation fusions on a tf2onnx graph of a Keras ViT.

Each pass takes a :class:`~keras_vit.export.graph.edit.GraphEditor`, rewrites every match it finds,
and returns how many it rewrote. Every pattern is checked down to its constants (axes, epsilon, the
GELU coefficients), so a pass leaves anything it does not fully recognise untouched.
"""

from __future__ import annotations

import math

import numpy as np

from keras_vit.export.graph.edit import MS_DOMAIN, GraphEditor

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _close(value: float | None, target: float, rel: float = 1e-5) -> bool:
    return value is not None and abs(value - target) <= rel * abs(target)


def _skip(editor: GraphEditor, name: str, op_types=("Cast", "Identity")) -> str:
    """Follow ``name`` back through ops that do not change values (shape-tensor casts, identities)."""
    node = editor.producer(name, op_types)
    while node is not None:
        name = node.input[0]
        node = editor.producer(name, op_types)
    return name


# --------------------------------------------------------------------------- tensordot
def unfold_tensordot(editor: GraphEditor) -> int:
    """``Reshape(x, [-1, K]) -> MatMul(W) -> Reshape(shape(x)[:-1] + [N])`` becomes ``MatMul(x, W)``.

    This is how TensorFlow's ``tensordot`` (a Keras ``Dense`` on 3-D tokens) arrives from tf2onnx: a
    flatten, a 2-D product and a reshape back to the leading dimensions of ``x``, computed at run time
    from ``Shape(x)``. ONNX ``MatMul`` broadcasts over leading dimensions, so one node does it all.
    """
    count = 0
    for matmul in [n for n in editor.nodes if n.op_type == "MatMul"]:
        weight = editor.constant(matmul.input[1])
        flatten = editor.producer(matmul.input[0], "Reshape")
        if weight is None or weight.ndim != 2 or flatten is None:
            continue
        flat_shape = editor.constant(flatten.input[1])
        if flat_shape is None or flat_shape.tolist() != [-1, weight.shape[0]]:
            continue
        restore = editor.only_consumer(matmul.output[0])
        source = flatten.input[0]
        if restore is None or restore.op_type != "Reshape":
            continue
        if not _is_leading_shape(editor, restore.input[1], source, weight.shape[1]):
            continue
        fused = editor.make_node("MatMul", [source, matmul.input[1]], [restore.output[0]], hint="MatMul")
        editor.replace(restore, [fused])
        count += 1
    return count


def _is_leading_shape(editor: GraphEditor, shape: str, source: str, last: int) -> bool:
    """True when ``shape`` is computed as ``Shape(source)[: rank - 1] + [last]``."""
    concat = editor.producer(_skip(editor, shape), "Concat")
    if concat is None or len(concat.input) != 2 or editor.attribute(concat, "axis") != 0:
        return False
    tail = editor.constant(concat.input[1])
    if tail is None or tail.tolist() != [last]:
        return False
    gather = editor.producer(_skip(editor, concat.input[0]), "Gather")
    if gather is None or editor.attribute(gather, "axis", 0) != 0:
        return False
    indices = editor.constant(gather.input[1])
    shape_node = editor.producer(_skip(editor, gather.input[0]), "Shape")
    if indices is None or shape_node is None or shape_node.input[0] != source or shape_node.attribute:
        return False
    rank = editor.rank(source)
    lead = len(indices.ravel())
    return indices.ravel().tolist() == list(range(lead)) and (rank is None or rank == lead + 1)


# --------------------------------------------------------------------------- layer norm
def fuse_layer_norm(editor: GraphEditor) -> int:
    """Keras' decomposed LayerNorm (TensorFlow lowering) becomes one ONNX ``LayerNormalization``.

    Matches ``x * g + (beta - mean * g)`` with ``g = gamma / sqrt(var + eps)``,
    ``mean = mean(x)``, ``var = mean((x - mean)^2)`` over the last axis, in the forms tf2onnx writes
    (``GlobalAveragePool`` or ``ReduceMean``, ``Sqrt`` + ``Reciprocal``, ``Neg`` or ``Sub``).
    """
    count = 0
    for sqrt in [n for n in editor.nodes if n.op_type == "Sqrt"]:
        match = _match_layer_norm(editor, sqrt)
        if match is None:
            continue
        out_node, x, gamma, beta, eps = match
        dim = gamma.size
        inputs = [x, editor.add_constant(gamma.reshape(dim).astype(np.float32), "ln_gamma"),
                  editor.add_constant(beta.reshape(dim).astype(np.float32), "ln_beta")]
        fused = editor.make_node("LayerNormalization", inputs, [out_node.output[0]], hint="LayerNorm",
                                 axis=-1, epsilon=float(eps))
        editor.replace(out_node, [fused])
        count += 1
    return count


def _mean_of(editor: GraphEditor, name: str) -> str | None:
    """If ``name`` is the mean of a tensor over its last axis (keepdims), that tensor's name."""
    node = editor.producer(name, ("GlobalAveragePool", "ReduceMean"))
    if node is None:
        return None
    source = node.input[0]
    rank = editor.rank(source)
    if node.op_type == "GlobalAveragePool":
        return source if rank == 3 else None
    axes = editor.attribute(node, "axes")
    if axes is None and len(node.input) > 1:
        value = editor.constant(node.input[1])
        axes = None if value is None else value.ravel().tolist()
    if editor.attribute(node, "keepdims", 1) != 1 or axes is None or len(axes) != 1 or rank is None:
        return None
    return source if axes[0] in (-1, rank - 1) else None


def _match_layer_norm(editor: GraphEditor, sqrt):
    """``(output_node, x, gamma, beta, epsilon)`` for the LayerNorm around ``sqrt``, or ``None``."""
    add_eps = editor.producer(sqrt.input[0], "Add")
    if add_eps is None or (split := editor.split_constant(add_eps)) is None or split[1].size != 1:
        return None
    variance, eps = split[0], float(split[1].reshape(()))
    squared_name = _mean_of(editor, variance)
    squared = editor.producer(squared_name, ("Mul", "Pow")) if squared_name else None
    if squared is None:
        return None
    if squared.op_type == "Mul" and squared.input[0] != squared.input[1]:
        return None
    if squared.op_type == "Pow" and not _close(editor.scalar(squared.input[1]), 2.0):
        return None
    centered = editor.producer(squared.input[0], "Sub")
    if centered is None:
        return None
    x, mean = centered.input
    if _mean_of(editor, mean) != x:
        return None
    reciprocal = editor.only_consumer(sqrt.output[0])
    if reciprocal is None or reciprocal.op_type != "Reciprocal":
        return None
    inv = reciprocal.output[0]
    gamma = None
    scale = editor.only_consumer(inv)
    if scale is not None and scale.op_type == "Mul" and (split := editor.split_constant(scale)) is not None:
        inv, gamma = scale.output[0], split[1]
    readers = editor.consumers.get(inv, [])
    if len(readers) != 2 or any(r.op_type != "Mul" for r in readers):
        return None
    x_term = next((r for r in readers if x in r.input), None)
    mean_term = next((r for r in readers if r is not x_term), None)
    if x_term is None or mean_term is None:
        return None
    offset, beta = _match_offset(editor, mean_term, inv, mean)
    if offset is None:
        return None
    out_node = editor.only_consumer(x_term.output[0])
    if out_node is None or out_node.op_type != "Add" or set(out_node.input) != {x_term.output[0], offset}:
        return None
    if gamma is None and beta is None:
        return None
    dim = (gamma if gamma is not None else beta).size
    if any(v is not None and (v.ndim == 0 or v.shape[-1] != dim) for v in (gamma, beta)):
        return None  # a scale or offset that varies along another axis: not a LayerNorm over the last axis
    gamma = np.ones(dim, np.float32) if gamma is None else gamma
    beta = np.zeros(dim, np.float32) if beta is None else beta
    if beta.size != dim:
        return None
    return out_node, x, gamma, beta, eps


def _match_offset(editor: GraphEditor, mean_term, inv: str, mean: str):
    """The ``beta - mean * g`` term: ``(its tensor name, beta or None)``, or ``(None, None)``."""
    other = mean_term.input[1] if mean_term.input[0] == inv else mean_term.input[0]
    negated = editor.producer(other, "Neg")
    follower = editor.only_consumer(mean_term.output[0])
    if negated is not None and negated.input[0] == mean:  # Add(Mul(Neg(mean), g), beta)
        if follower is not None and follower.op_type == "Add" and (split := editor.split_constant(follower)):
            return follower.output[0], split[1]
        return mean_term.output[0], None
    if other == mean and follower is not None and follower.op_type == "Sub":  # Sub(beta, Mul(mean, g))
        beta = editor.constant(follower.input[0])
        if beta is not None and follower.input[1] == mean_term.output[0]:
            return follower.output[0], beta
    return None, None


# --------------------------------------------------------------------------- GELU
def fuse_gelu(editor: GraphEditor) -> int:
    """Exact GELU written with ``erf`` (``0.5 * x * (1 + erf(x / sqrt(2)))``) becomes one ``Gelu``."""
    count = 0
    for erf in [n for n in editor.nodes if n.op_type == "Erf"]:
        match = _match_gelu(editor, erf)
        if match is None:
            continue
        out_node, x = match
        editor.replace(out_node, [editor.make_node("Gelu", [x], [out_node.output[0]], hint="Gelu",
                                                   domain=MS_DOMAIN)])
        count += 1
    return count


def _match_gelu(editor: GraphEditor, erf):
    scaled = editor.producer(erf.input[0], ("Mul", "Div"))
    if scaled is None or (split := editor.split_constant(scaled)) is None or split[1].size != 1:
        return None
    x, factor = split[0], float(split[1].reshape(()))
    if scaled.op_type == "Div" and (scaled.input[1] == x or not _close(factor, math.sqrt(2.0))):
        return None
    if scaled.op_type == "Mul" and not _close(factor, _INV_SQRT2):
        return None
    plus_one = editor.only_consumer(erf.output[0])
    if plus_one is None or plus_one.op_type != "Add" or (split := editor.split_constant(plus_one)) is None:
        return None
    if not _close(float(split[1].reshape(())) if split[1].size == 1 else None, 1.0):
        return None
    first = editor.only_consumer(plus_one.output[0])
    if first is None or first.op_type != "Mul":
        return None
    other = first.input[1] if first.input[0] == plus_one.output[0] else first.input[0]
    if other == x:  # (x * (1 + erf)) * 0.5
        second = editor.only_consumer(first.output[0])
        half = editor.split_constant(second) if second is not None and second.op_type == "Mul" else None
        return (second, x) if half and _close(_as_scalar(half[1]), 0.5) else None
    half_x = editor.producer(other, "Mul")
    if half_x is not None and (split := editor.split_constant(half_x)) and split[0] == x:  # (0.5 * x) * (1 + erf)
        return (first, x) if _close(_as_scalar(split[1]), 0.5) else None
    if _close(editor.scalar(other), 0.5):  # ((1 + erf) * 0.5) * x
        second = editor.only_consumer(first.output[0])
        if second is not None and second.op_type == "Mul" and x in second.input:
            return second, x
    return None


def _as_scalar(value: np.ndarray) -> float | None:
    return float(value.reshape(())) if value.size == 1 else None


# --------------------------------------------------------------------------- bias folding
def fuse_bias_gelu(editor: GraphEditor) -> int:
    """``Gelu(y + bias)`` with a constant 1-D ``bias`` becomes ``BiasGelu(y, bias)``."""
    count = 0
    for gelu in [n for n in editor.nodes if n.op_type == "Gelu" and n.domain == MS_DOMAIN]:
        add = editor.producer(gelu.input[0], "Add")
        if add is None or editor.only_consumer(add.output[0]) is not gelu:
            continue
        split = editor.split_constant(add)
        if split is None or split[1].ndim != 1 or editor.rank(split[0]) not in (2, 3):
            continue
        bias = editor.add_constant(split[1].astype(np.float32), "gelu_bias")
        editor.replace(gelu, [editor.make_node("BiasGelu", [split[0], bias], [gelu.output[0]], hint="BiasGelu",
                                               domain=MS_DOMAIN)])
        count += 1
    return count


def fuse_skip_layer_norm(editor: GraphEditor) -> int:
    """``LayerNormalization(a + b [+ bias])`` on 3-D tokens becomes ``SkipLayerNormalization``.

    The residual sum stays available (the fused node's fourth output) for the next residual. A
    constant 1-D bias added to either branch just before the sum is folded into the fused node.
    """
    count = 0
    for norm in [n for n in editor.nodes if n.op_type == "LayerNormalization"]:
        if editor.attribute(norm, "axis", -1) != -1 or len(norm.input) < 3 or any(norm.output[1:]):
            continue
        add = editor.producer(norm.input[0], "Add")
        if add is None or editor.split_constant(add) is not None or add.input[0] == add.input[1]:
            continue
        a, b = add.input
        if editor.rank(a) != 3 or editor.rank(b) != 3:
            continue
        bias = None
        for branch, skip in ((a, b), (b, a)):
            biased = editor.producer(branch, "Add")
            if biased is not None and editor.only_consumer(branch) is add:
                split = editor.split_constant(biased)
                if split is not None and split[1].ndim == 1 and editor.rank(split[0]) == 3:
                    a, b, bias = split[0], skip, editor.add_constant(split[1].astype(np.float32), "skip_bias")
                    break
        inputs = [a, b, norm.input[1], norm.input[2]] + ([bias] if bias else [])
        total = add.output[0] if editor.uses(add.output[0]) > 1 else ""
        fused = editor.make_node(
            "SkipLayerNormalization", inputs, [norm.output[0], "", "", total], hint="SkipLayerNorm",
            domain=MS_DOMAIN, epsilon=float(editor.attribute(norm, "epsilon", 1e-5)),
        )
        editor.replace(norm, [fused])
        if total:
            editor.remove([add])
        count += 1
    return count
