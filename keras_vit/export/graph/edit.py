"""A small mutable view of an ONNX graph for pattern rewrites (producers, consumers, constants).

Rewrites follow one rule that keeps them safe: a fused node takes over the *name* of the output it
replaces, the replaced node is dropped, and :meth:`GraphEditor.prune` then removes whatever no longer
feeds a graph output. An intermediate value that something else still reads therefore survives a
rewrite; whether the fused node computes the same values is each pattern's job (and the export's
parity check).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

MS_DOMAIN = "com.microsoft"


class GraphEditor:
    """Indexes one ``onnx.ModelProto``'s main graph; edit with :meth:`replace`, :meth:`remove`, :meth:`rename_uses`.

    Call :meth:`to_model` to get a new, pruned and topologically sorted ``ModelProto``; the proto passed
    in is not modified.
    """

    def __init__(self, model_proto):
        import onnx

        self.model = onnx.ModelProto()
        self.model.CopyFrom(model_proto)
        graph = self.model.graph
        self.nodes: list = list(graph.node)
        self.initializers: dict = {t.name: t for t in graph.initializer}
        self.outputs = [o.name for o in graph.output]
        self.inputs = [i.name for i in graph.input]
        self._counter = 0
        self._constants: dict[str, np.ndarray] = {}
        self.value_info = _inferred_value_info(self.model)
        self.ranks = {name: len(info.type.tensor_type.shape.dim) for name, info in self.value_info.items()
                      if info.type.tensor_type.HasField("shape")}
        self.reindex()

    # ----------------------------------------------------------------- lookup
    def reindex(self) -> None:
        """Rebuild the producer/consumer maps after edits."""
        self.producers = {}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def producer(self, name: str, op_type: str | tuple[str, ...] | None = None):
        """The node that computes ``name`` (``None`` for inputs/constants or when its type is not ``op_type``)."""
        node = self.producers.get(name)
        if node is None or op_type is None:
            return node
        types = (op_type,) if isinstance(op_type, str) else op_type
        return node if node.op_type in types else None

    def uses(self, name: str) -> int:
        """How many node inputs and graph outputs read ``name``."""
        return len(self.consumers.get(name, ())) + self.outputs.count(name)

    def only_consumer(self, name: str):
        """The single node reading ``name``, or ``None`` if there are several or it is a graph output."""
        readers = self.consumers.get(name, ())
        if len(readers) != 1 or name in self.outputs:
            return None
        return readers[0]

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is an initializer or a ``Constant`` node's output, else ``None``."""
        from onnx import numpy_helper

        if name in self._constants:
            return self._constants[name]
        value = None
        if name in self.initializers and name not in self.inputs:
            value = numpy_helper.to_array(self.initializers[name])
        else:
            node = self.producer(name, "Constant")
            if node is not None and node.attribute and node.attribute[0].name == "value":
                value = numpy_helper.to_array(node.attribute[0].t)
        if value is not None:
            self._constants[name] = value
        return value

    def scalar(self, name: str) -> float | None:
        """A constant holding a single number, as a float; ``None`` otherwise."""
        value = self.constant(name)
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.number):
            return None
        return float(value.reshape(()))

    def split_constant(self, node) -> tuple[str, np.ndarray] | None:
        """For a binary node with exactly one constant input: ``(other_input, constant_value)``."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        ca, cb = self.constant(a), self.constant(b)
        if (ca is None) == (cb is None):
            return None
        return (b, ca) if ca is not None else (a, cb)

    def attribute(self, node, name: str, default=None):
        from onnx import helper

        for attr in node.attribute:
            if attr.name == name:
                return helper.get_attribute_value(attr)
        return default

    def rank(self, name: str) -> int | None:
        return self.ranks.get(name)

    def declare(self, name: str, like: str, dims: dict[int, int] | None = None) -> None:
        """Give the new tensor ``name`` the type and shape of ``like``, with ``dims`` (axis -> size) replaced.

        onnx's shape inference cannot see through ``com.microsoft`` ops; tools that need tensor types
        downstream of them (onnxruntime's quantizer) read these declarations instead.
        """
        from onnx import helper

        source = self.value_info.get(like)
        if source is None:
            return
        declared = helper.make_empty_tensor_value_info(name)
        declared.type.CopyFrom(source.type)
        for axis, size in (dims or {}).items():
            dim = declared.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_value = size
        self.value_info[name] = declared
        self.ranks[name] = len(declared.type.tensor_type.shape.dim)

    # ------------------------------------------------------------------ edits
    def fresh(self, hint: str) -> str:
        """A tensor/node name not used yet."""
        self._counter += 1
        return f"{hint}__kvf{self._counter}"

    def add_constant(self, value: np.ndarray, hint: str) -> str:
        """Add ``value`` as an initializer; returns its name."""
        from onnx import numpy_helper

        name = self.fresh(hint)
        value = np.asarray(value)
        self.initializers[name] = numpy_helper.from_array(value, name)
        self._constants[name] = value
        return name

    def make_node(self, op_type: str, inputs: Iterable[str], outputs: Iterable[str], hint: str,
                  domain: str = "", **attributes):
        from onnx import helper

        return helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(hint), domain=domain,
                                **attributes)

    def replace(self, old, new_nodes: list) -> None:
        """Put ``new_nodes`` where ``old`` was and drop ``old``."""
        index = self.nodes.index(old)
        self.nodes[index : index + 1] = new_nodes
        self.reindex()

    def remove(self, nodes) -> None:
        doomed = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in doomed]
        self.reindex()

    def rename_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` read ``new``; call after removing the node that computed ``old``.

        A graph output named ``old`` keeps its name: an ``Identity`` copies ``new`` into it.
        """
        for node in self.consumers.get(old, ()):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        if old in self.outputs:
            self.nodes.append(self.make_node("Identity", [new], [old], hint="output"))
        self.reindex()

    def prune(self) -> int:
        """Drop nodes and initializers that no graph output depends on; returns the number of nodes dropped."""
        live = set(self.outputs)
        kept = []
        for node in reversed(self.nodes):
            if any(name in live for name in node.output if name):
                kept.append(node)
                live.update(name for name in node.input if name)
        dropped = len(self.nodes) - len(kept)
        self.nodes = kept[::-1]
        self.initializers = {k: v for k, v in self.initializers.items() if k in live or k in self.inputs}
        self.reindex()
        return dropped

    def to_model(self):
        """A new ``ModelProto``: pruned, topologically sorted, with the ``com.microsoft`` opset when used."""
        from onnx import helper

        self.prune()
        graph = self.model.graph
        del graph.node[:]
        graph.node.extend(_topological(self.nodes, set(self.inputs) | set(self.initializers)))
        del graph.initializer[:]
        graph.initializer.extend(self.initializers.values())
        del graph.value_info[:]
        boundary = set(self.inputs) | set(self.outputs) | set(self.initializers)
        computed = {name for node in self.nodes for name in node.output if name and name not in boundary}
        graph.value_info.extend(info for name, info in self.value_info.items() if name in computed)
        if any(n.domain == MS_DOMAIN for n in self.nodes) and not any(
            o.domain == MS_DOMAIN for o in self.model.opset_import
        ):
            self.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        return self.model


def _inferred_value_info(model_proto) -> dict:
    """Type and shape of every tensor ONNX shape inference can work out (empty when it fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model_proto)
    except Exception:  # noqa: BLE001 - types and ranks are optional hints
        return {}
    graph = inferred.graph
    infos = {info.name: info for info in list(graph.value_info) + list(graph.input) + list(graph.output)}
    for init in graph.initializer:
        infos[init.name] = onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
    return {name: info for name, info in infos.items() if info.type.HasField("tensor_type")}


def _topological(nodes: list, available: set[str]) -> list:
    """``nodes`` in an order where every input is computed before it is read (stable where possible)."""
    ready = set(available)
    pending = list(nodes)
    ordered = []
    while pending:
        progressed = []
        rest = []
        for node in pending:
            if all(not name or name in ready for name in node.input):
                progressed.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if not progressed:
            raise ValueError("graph rewrite left a cycle or a missing input: " + ", ".join(
                f"{n.op_type}({', '.join(i for i in n.input if i not in ready)})" for n in rest[:3]))
        ordered.extend(progressed)
        pending = rest
    return ordered
