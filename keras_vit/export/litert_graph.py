"""The graph the LiteRT converter is given: the serving function frozen, then rewritten for LiteRT's kernels.

Only the ``.tflite`` path uses this (ONNX, SavedModel and web exports convert the serving function as
it is), and the model, its layers and its saved format are untouched: the rewrites act on the frozen
``GraphDef`` of :func:`~keras_vit.export.source.serving_function`, recognise TensorFlow op patterns
(not Keras internals), and each computes the same values (up to float rounding).

The batch stays dynamic (shape signature ``-1``). Without the rewrites the converter keeps shape
arithmetic on it (``SHAPE``, ``GATHER``, ``REDUCE_PROD``, ``PACK``, ``CONCATENATION`` of shapes) and
shrinking ``STRIDED_SLICE`` ops, which XNNPACK does not run: ViT-Ti/16's float file ran as 113 XNNPACK
partitions with those ops between them (``vit_mnist``: 53); with them, 2 (the ``ZEROS_LIKE`` of the class
token's broadcast stays outside). Figures in ``benchmarks/results/litert.md``.

- :func:`rewrite_tensordot`: ``tf.tensordot`` over the last axis with a constant 2-D kernel (Keras'
  TensorFlow backend's ``Dense`` on ``[batch, tokens, dim]``) -> one ``BatchMatMulV2(x, kernel)``, which
  the converter writes as ``FULLY_CONNECTED`` (``keep_num_dims``).
- :func:`rewrite_shrinking_slices`: ``x[0]``, ``x[:, 0]`` -> the slice keeping the axis, then a
  ``Reshape`` to a constant shape.
- :func:`rewrite_dynamic_reshapes`: a ``Reshape`` to a shape computed at run time (``Flatten``) -> a
  constant shape, when only the batch is unknown.
- ``int16x8`` only, LayerNorm: :func:`rewrite_squared_difference` (``SquaredDifference(a, b)``, the
  variance -> ``d = Sub(a, b); Mul(d, d)``) and :func:`rewrite_negation` (``Neg(x)`` -> ``Mul(x, -1)``):
  LiteRT has no int16 ``SQUARED_DIFFERENCE`` kernel (the file could not run) and no int16 ``NEG`` (it ran
  in float between ``DEQUANTIZE`` and ``QUANTIZE``); :func:`rewrite_rsqrt`, as the int16 ``RSQRT`` is too
  coarse near zero. Float files keep all three: XNNPACK runs each as one op.
"""

from __future__ import annotations

import numpy as np


def litert_concrete_function(concrete, *, int16_kernels: bool = False):
    """``concrete`` frozen (variables as constants) with the rewrites of this module applied.

    :func:`rewrite_tensordot`, :func:`rewrite_shrinking_slices` and :func:`rewrite_dynamic_reshapes`
    always; with ``int16_kernels`` (``--quantize int16x8``) also :func:`rewrite_squared_difference`,
    :func:`rewrite_negation` and :func:`rewrite_rsqrt`.
    Returns ``(function, counts)``: a concrete function with the same input and output tensor names
    (``images``, ``Identity``, ...) and how many of each pattern were rewritten
    (``{"tensordot": ..., "shrinking_slice": ..., "dynamic_reshape": ..., "squared_difference": ...,
    "negation": ..., "rsqrt": ...}``).
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    # The traced graph, not the frozen one: freezing re-imports a GraphDef, which loses set_shape.
    hints = {op.name: op.outputs[0].shape for op in concrete.graph.get_operations() if op.outputs}
    counts = {"tensordot": rewrite_tensordot(graph_def),
              "shrinking_slice": rewrite_shrinking_slices(graph_def, hints),
              "dynamic_reshape": rewrite_dynamic_reshapes(graph_def, hints),
              "squared_difference": rewrite_squared_difference(graph_def) if int16_kernels else 0,
              "negation": rewrite_negation(graph_def) if int16_kernels else 0,
              "rsqrt": rewrite_rsqrt(graph_def) if int16_kernels else 0}
    inputs = [tensor.name for tensor in frozen.inputs]
    outputs = [tensor.name for tensor in frozen.outputs]

    def imported():
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    function = wrapped.prune([wrapped.graph.get_tensor_by_name(name) for name in inputs],
                             [wrapped.graph.get_tensor_by_name(name) for name in outputs])
    return function, counts


# --------------------------------------------------------------------------------------------------
# GraphDef helpers


class _Graph:
    """A ``GraphDef``'s nodes by name, and each node's consumers."""

    def __init__(self, graph_def):
        self.graph_def = graph_def
        self.nodes = {node.name: node for node in graph_def.node}
        self.consumers: dict[str, list] = {}
        for node in graph_def.node:
            for name in node.input:
                self.consumers.setdefault(_node_name(name), []).append(node)

    def producer(self, node, index: int):
        """The node making ``node``'s input ``index``, or ``None`` for a non-zero output slot."""
        name = node.input[index]
        if name.startswith("^") or (":" in name and not name.endswith(":0")):
            return None
        return self.nodes.get(_node_name(name))

    def constant(self, node) -> np.ndarray | None:
        """The value of a ``Const`` node (through ``Identity`` nodes), else ``None``."""
        while node is not None and node.op == "Identity":
            node = self.producer(node, 0)
        if node is None or node.op != "Const":
            return None
        from tensorflow import make_ndarray

        return make_ndarray(node.attr["value"].tensor)

    def concat_constant(self, node) -> np.ndarray | None:
        """The value of a ``Const`` or of a ``ConcatV2`` of ``Const`` nodes (a permutation, a shape), else ``None``."""
        value = self.constant(node)
        if value is not None or node is None or node.op != "ConcatV2":
            return value
        parts = [self.constant(self.producer(node, i)) for i in range(len(node.input) - 1)]
        axis = self.constant(self.producer(node, len(node.input) - 1))
        if any(part is None for part in parts) or axis is None:
            return None
        return np.concatenate(parts, axis=int(axis))

    def is_shape_of(self, node, source: str) -> bool:
        return node is not None and node.op == "Shape" and _tensor_name(node.input[0]) == _tensor_name(source)

    def gathered_dims(self, node, source: str) -> np.ndarray | None:
        """The indices ``i`` of ``GatherV2(Shape(source), i, axis=0)`` with constant ``i``, else ``None``."""
        if node is None or node.op != "GatherV2" or not self.is_shape_of(self.producer(node, 0), source):
            return None
        axis = self.constant(self.producer(node, 2))
        indices = self.constant(self.producer(node, 1))
        return indices if axis is not None and int(axis) == 0 else None


def _node_name(name: str) -> str:
    return name.lstrip("^").split(":")[0]


def _tensor_name(name: str) -> str:
    node, _, slot = name.partition(":")
    return f"{node}:{slot or 0}"


def _is(value: np.ndarray | None, expected) -> bool:
    return value is not None and np.array_equal(np.asarray(value).reshape(-1), np.asarray(expected).reshape(-1))


# --------------------------------------------------------------------------------------------------
# The rewrites


def rewrite_tensordot(graph_def) -> int:
    """Replace each last-axis ``tf.tensordot(x, kernel)`` with a constant 2-D kernel by ``BatchMatMulV2``.

    The pattern (``tf.tensordot``'s graph for ``axes=[[rank-1], [0]]``)::

        t  = Transpose(x, ConcatV2(free, axes))          # free = [0 .. rank-2], axes = [rank-1]: identity
        r1 = Reshape(t, Pack(Prod(GatherV2(Shape(x), free)), Prod(GatherV2(Shape(x), axes))))
        m  = MatMul(r1, kernel)                          # kernel: Const [D, U], no transposes
        y  = Reshape(m, ConcatV2(GatherV2(Shape(x), free), [U]))

    becomes ``y = BatchMatMulV2(x, kernel)`` (the same values: a matrix product over the last axis),
    under ``y``'s name so that its consumers are unchanged; the dead nodes are pruned later. Edits
    ``graph_def`` in place and returns how many were rewritten.
    """
    graph = _Graph(graph_def)
    rewritten = 0
    for node in list(graph_def.node):
        if node.op != "Reshape":
            continue
        matmul = graph.producer(node, 0)
        if matmul is None or matmul.op != "MatMul" or matmul.attr["transpose_a"].b or matmul.attr["transpose_b"].b:
            continue
        if len(graph.consumers.get(matmul.name, [])) != 1:
            continue
        kernel = graph.constant(graph.producer(matmul, 1))
        flatten = graph.producer(matmul, 0)
        if kernel is None or kernel.ndim != 2 or flatten is None or flatten.op != "Reshape":
            continue
        transposed = graph.producer(flatten, 0)
        if transposed is None or transposed.op != "Transpose":
            continue
        x = transposed.input[0]  # tensordot's Shape is of x, before its transpose to (free, axes)
        rank = _tensordot_rank(graph, flatten, node, x, kernel.shape[1])
        if rank is None or not _is(graph.concat_constant(graph.producer(transposed, 1)), range(rank)):
            continue
        dtype = matmul.attr["T"].type
        node.op = "BatchMatMulV2"
        del node.input[:]
        node.input.extend([x, matmul.input[1]])
        node.attr.clear()
        node.attr["T"].type = dtype
        node.attr["adj_x"].b = False
        node.attr["adj_y"].b = False
        rewritten += 1
    return rewritten


def _tensordot_rank(graph: _Graph, flatten, restore, source: str, units: int) -> int | None:
    """The rank of ``source`` when ``flatten``/``restore`` are tensordot's reshapes over its last axis."""
    pack = graph.producer(flatten, 1)
    if pack is None or pack.op != "Pack" or len(pack.input) != 2:
        return None
    prods = [graph.producer(pack, i) for i in range(2)]
    if any(p is None or p.op != "Prod" or not _is(graph.constant(graph.producer(p, 1)), [0]) for p in prods):
        return None
    free = graph.gathered_dims(graph.producer(prods[0], 0), source)
    axes = graph.gathered_dims(graph.producer(prods[1], 0), source)
    if free is None or axes is None or axes.size != 1:
        return None
    rank = int(free.size) + 1
    if not _is(free, range(rank - 1)) or not _is(axes, [rank - 1]):
        return None
    concat = graph.producer(restore, 1)
    if concat is None or concat.op != "ConcatV2" or len(concat.input) != 3:
        return None
    if not _is(graph.gathered_dims(graph.producer(concat, 0), source), range(rank - 1)):
        return None
    if not _is(graph.constant(graph.producer(concat, 1)), [units]) or not _is(
            graph.constant(graph.producer(concat, 2)), [0]):
        return None
    return rank


def rewrite_shrinking_slices(graph_def, shape_hints: dict | None = None) -> int:
    """Replace each ``StridedSlice`` that drops axes (``shrink_axis_mask``, e.g. ``x[0]``, ``x[:, 0]``) by
    the same slice keeping them, then a ``Reshape`` to the static shape of the result.

    XNNPACK does not take a shrinking ``STRIDED_SLICE`` (attention's ``q, k, v = qkv[0], qkv[1], qkv[2]``
    and the class-token pooling), which split its graph three times per encoder block. Only slices
    whose result has at most one unknown dimension (the batch: ``-1`` in the new shape) and no ellipsis
    or new axis are rewritten (``shape_hints``: see :func:`_static_shapes`). Edits ``graph_def`` in place
    and returns how many were rewritten.
    """
    shapes = _static_shapes(graph_def, shape_hints)
    names = {node.name for node in graph_def.node}
    rewritten = 0
    for node in list(graph_def.node):
        if node.op != "StridedSlice" or not node.attr["shrink_axis_mask"].i:
            continue
        if node.attr["ellipsis_mask"].i or node.attr["new_axis_mask"].i:
            continue
        shape = shapes.get(node.name)
        if shape is None or sum(d is None for d in shape) > 1:
            continue
        sliced = graph_def.node.add()
        sliced.CopyFrom(node)
        sliced.name = _unique(f"{node.name}/keep_dims", names)
        sliced.attr["shrink_axis_mask"].i = 0
        target = _add_shape_constant(graph_def, names, f"{node.name}/shape", shape)
        controls = [name for name in node.input if name.startswith("^")]
        dtype = node.attr["T"].type
        node.op = "Reshape"
        del node.input[:]
        node.input.extend([sliced.name, target.name, *controls])
        node.attr.clear()
        node.attr["T"].type = dtype
        node.attr["Tshape"].type = _int32_enum()
        rewritten += 1
    return rewritten


def _static_shapes(graph_def, hints: dict | None = None) -> dict[str, list[int | None]]:
    """Each node's first output shape as TensorFlow's shape inference sees it in ``graph_def``, merged with
    ``hints`` (node name -> ``TensorShape``: the shapes of the graph before the rewrites, which kept each
    node's values, include what Keras set with ``set_shape``). Nodes of unknown rank are left out."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    shapes = {}
    for op in graph.get_operations():
        if not op.outputs:
            continue
        shape = op.outputs[0].shape
        hint = (hints or {}).get(op.name)
        if hint is not None and shape.is_compatible_with(hint):
            shape = shape.merge_with(hint)
        if shape.rank is not None:
            shapes[op.name] = shape.as_list()
    return shapes


def _int32_enum() -> int:
    import tensorflow as tf

    return tf.int32.as_datatype_enum


def _tensor_proto(values):
    import tensorflow as tf

    return tf.make_tensor_proto(np.asarray(values, dtype=np.int32))


def _add_node(graph_def, names: set[str], name: str, op: str, inputs: list[str], like=None):
    """A new node ``op`` on ``inputs``, named ``name`` (made unique in ``names``); with ``like``, that node's
    ``T`` attribute and device."""
    node = graph_def.node.add()
    node.name = _unique(name, names)
    node.op = op
    node.input.extend(inputs)
    if like is not None:
        node.attr["T"].CopyFrom(like.attr["T"])
        if like.device:
            node.device = like.device
    return node


def _add_shape_constant(graph_def, names: set[str], name: str, shape: list[int | None]):
    """A new int32 ``Const`` node holding ``shape`` with ``-1`` for its unknown dimension (for a ``Reshape``)."""
    node = _add_node(graph_def, names, name, "Const", [])
    node.attr["dtype"].type = _int32_enum()
    node.attr["value"].tensor.CopyFrom(_tensor_proto([-1 if d is None else d for d in shape]))
    return node


def _become_square(node, operand: str) -> None:
    """Turn ``node`` into ``Mul(operand, operand)``, keeping its name, ``T`` and control inputs (so its
    consumers are unchanged)."""
    controls = [name for name in node.input if name.startswith("^")]
    node.op = "Mul"
    del node.input[:]
    node.input.extend([operand, operand, *controls])


def rewrite_dynamic_reshapes(graph_def, shape_hints: dict | None = None) -> int:
    """Give each ``Reshape`` whose new shape is computed at run time a constant one, when TensorFlow's shape
    inference knows every dimension of its result but the batch (``-1`` in the constant).

    E.g. Keras' ``Flatten`` reshapes to ``Pack(StridedSlice(Shape(x)), -1)``; the ``SHAPE``,
    ``STRIDED_SLICE`` and ``PACK`` ops it leaves in a dynamic-batch file go. Run after
    :func:`rewrite_tensordot` (whose reshapes it cannot fix: their result shape is not inferred;
    ``shape_hints``: see :func:`_static_shapes`). Edits ``graph_def`` in place and returns how many were
    rewritten.
    """
    shapes = _static_shapes(graph_def, shape_hints)
    graph = _Graph(graph_def)
    names = {node.name for node in graph_def.node}
    rewritten = 0
    for node in list(graph_def.node):
        if node.op != "Reshape" or graph.constant(graph.producer(node, 1)) is not None:
            continue
        shape = shapes.get(node.name)
        if shape is None or sum(d is None for d in shape) > 1:
            continue
        target = _add_shape_constant(graph_def, names, f"{node.name}/static_shape", shape)
        node.input[1] = target.name
        node.attr["Tshape"].type = _int32_enum()
        rewritten += 1
    return rewritten


def rewrite_squared_difference(graph_def) -> int:
    """Replace each ``SquaredDifference(a, b)`` by ``d = Sub(a, b); Mul(d, d)`` (the ``Mul`` keeps the name).

    Edits ``graph_def`` in place and returns how many were rewritten.
    """
    names = {node.name for node in graph_def.node}
    rewritten = 0
    for node in list(graph_def.node):
        if node.op != "SquaredDifference":
            continue
        difference = _add_node(graph_def, names, f"{node.name}/difference", "Sub", node.input[:2], like=node)
        _become_square(node, difference.name)
        rewritten += 1
    return rewritten


def rewrite_negation(graph_def) -> int:
    """Replace each floating-point ``Neg(x)`` by ``Mul(x, -1)`` (the ``Mul`` keeps the name; exact in float).

    LayerNorm's ``-mean`` is a ``NEG``, which has no int16 kernel: in an ``int16x8`` file it would run in
    float between a ``DEQUANTIZE`` and a ``QUANTIZE``. Edits ``graph_def`` in place and returns how many
    were rewritten.
    """
    import tensorflow as tf

    names = {node.name for node in graph_def.node}
    rewritten = 0
    for node in list(graph_def.node):
        if node.op != "Neg" or not tf.as_dtype(node.attr["T"].type).is_floating:
            continue
        minus_one = _add_node(graph_def, names, f"{node.name}/minus_one", "Const", [])
        minus_one.attr["dtype"].type = node.attr["T"].type
        minus_one.attr["value"].tensor.CopyFrom(
            tf.make_tensor_proto(-1.0, dtype=tf.as_dtype(node.attr["T"].type), shape=[]))
        node.op = "Mul"
        node.input.insert(1, minus_one.name)
        rewritten += 1
    return rewritten


def rewrite_rsqrt(graph_def) -> int:
    """Replace each ``Rsqrt(v)`` by ``r * r`` with ``r = Rsqrt(Sqrt(v))`` (the ``Mul`` keeps the name).

    For ``int16x8``: LiteRT's int16 ``RSQRT`` is inaccurate over LayerNorm's variance range (measured on
    a briefly trained ``vit_mnist``: 21 % relative RMS error at the first block's LayerNorm, whose variance
    spans 0.0008 to 4), which cost about 2 points of top-1 agreement. ``SQRT`` has no int16 kernel, so it
    runs in float (between ``DEQUANTIZE`` and ``QUANTIZE``) and the int16 ``RSQRT`` then sees ``sqrt(v)``,
    a range whose square root it handles. (``1 / Sqrt(v)`` would not do: the converter folds it back into
    ``RSQRT``.) Edits ``graph_def`` in place and returns how many were rewritten.
    """
    names = {node.name for node in graph_def.node}
    rewritten = 0
    for node in list(graph_def.node):
        if node.op != "Rsqrt":
            continue
        root = _add_node(graph_def, names, f"{node.name}/sqrt", "Sqrt", node.input[:1], like=node)
        half = _add_node(graph_def, names, f"{node.name}/rsqrt_of_sqrt", "Rsqrt", [root.name], like=node)
        _become_square(node, half.name)
        rewritten += 1
    return rewritten


def _unique(name: str, names: set[str]) -> str:
    candidate, i = name, 1
    while candidate in names:
        candidate, i = f"{name}_{i}", i + 1
    names.add(candidate)
    return candidate
