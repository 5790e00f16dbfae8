"""The ``.tflite`` file itself: its signature, keras-vit metadata, operator list, and running it with LiteRT.

The converter is given a frozen concrete function (no trackable object: that path keeps resource
variables), so its file has no SignatureDef and generic tensor names. :func:`finish_flatbuffer` names
the input ``images`` and the outputs ``logits`` (``probabilities``), adds the ``serving_default``
signature, and stores the keras-vit metadata as JSON under :data:`METADATA_NAME` in the flatbuffer's
metadata map. Reading and running use ``ai-edge-litert`` only (no TensorFlow).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit.errors import KerasViTError, UserInputError

#: The name of the keras-vit entry in a ``.tflite`` file's metadata map (JSON, UTF-8).
METADATA_NAME = "keras_vit"
SIGNATURE_KEY = "serving_default"
_IDENTIFIER = b"TFL3"


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def is_tflite(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose flatbuffer identifier is ``TFL3``."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8)[4:8] == _IDENTIFIER
    except OSError:
        return False


def finish_flatbuffer(content: bytes, input_name: str, output_names: dict[str, str],
                      metadata: dict[str, Any]) -> bytes:
    """``content`` with named tensors, a ``serving_default`` signature and keras-vit metadata.

    ``input_name`` / ``output_names`` give the converter's tensor names (``output_names``: converter
    name -> exported name, e.g. ``{"Identity": "logits"}``).
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph = model.subgraphs[0]
    names = {i: _text(graph.tensors[i].name) for i in [*graph.inputs, *graph.outputs]}
    if len(graph.inputs) != 1 or _text(graph.tensors[graph.inputs[0]].name) != input_name:
        raise KerasViTError(f"the converted .tflite has inputs {[names[i] for i in graph.inputs]}, "
                            f"expected exactly {input_name!r}.")
    found = {names[i]: i for i in graph.outputs}
    if set(found) != set(output_names):
        raise KerasViTError(f"the converted .tflite has outputs {sorted(found)}, expected {sorted(output_names)}.")
    graph.tensors[graph.inputs[0]].name = b"images"
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map("images", graph.inputs[0])]
    signature.outputs = []
    for converter_name, exported in output_names.items():
        graph.tensors[found[converter_name]].name = exported.encode()
        signature.outputs.append(_tensor_map(exported, found[converter_name]))
    model.signatureDefs = [signature]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output())


def _tensor_map(name: str, index: int):
    item = _schema().TensorMapT()
    item.name = name
    item.tensorIndex = int(index)
    return item


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tflite_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The keras-vit metadata stored in a ``.tflite`` file (typed values); :class:`UserInputError` if none."""
    path = Path(path)
    try:
        content = path.read_bytes()
        model = _schema().Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _text(entry.Name()) == METADATA_NAME:
                data = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(data).decode("utf-8"))
    except Exception as err:  # a truncated or foreign flatbuffer raises struct.error, IndexError, ...
        raise UserInputError(f"{path} is not a readable .tflite file: {err}") from None
    raise UserInputError(f"{path} has no keras-vit metadata: not a keras-vit LiteRT export.")


def operators(content: bytes | str | os.PathLike) -> list[str]:
    """The sorted builtin (and custom) operator names a ``.tflite`` file uses, e.g. ``["ADD", "GELU", ...]``."""
    schema = _schema()
    data = content if isinstance(content, bytes) else Path(content).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{_text(code.CustomCode())}")
        else:
            names.add(builtin_names.get(op, str(op)))
    return sorted(names)


def not_builtin(ops: list[str]) -> list[str]:
    """The operators in ``ops`` a plain LiteRT runtime cannot run: custom ones (``Flex...`` included)."""
    return [op for op in ops if op.startswith("CUSTOM:")]


# --------------------------------------------------------------------------------------------------
# Running a .tflite with ai-edge-litert (verification)


class LiteRTRunner:
    """A ``.tflite`` file (or bytes) run with ``ai_edge_litert``'s interpreter through its signature."""

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            if isinstance(model, bytes):
                self.interpreter = Interpreter(model_content=model, num_threads=threads)
            else:
                self.interpreter = Interpreter(model_path=str(model), num_threads=threads)
            self.runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        except Exception as err:
            raise KerasViTError(f"LiteRT cannot load the exported file: {' '.join(str(err).split())[:300]}") from None
        self.output_names = list(self.runner.get_output_details())

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outputs = self.runner(images=images)
        except Exception as err:
            raise KerasViTError(f"LiteRT could not run the exported file: {' '.join(str(err).split())[:300]}") from None
        return {name: np.array(outputs[name]) for name in self.output_names}

    def run(self, feed: np.ndarray, bounds: list[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
        """Run on ``feed`` in sub-batches (``bounds``; default 64 at a time), outputs concatenated."""
        bounds = bounds or [(s, min(s + 64, len(feed))) for s in range(0, len(feed), 64)]
        parts: dict[str, list] = {name: [] for name in self.output_names}
        for start, stop in bounds:
            for name, value in self(feed[start:stop]).items():
                if value.shape[0] != stop - start:
                    raise KerasViTError(f"output {name} has batch {value.shape[0]} for an input batch of "
                                        f"{stop - start}.")
                parts[name].append(value)
        return {name: np.concatenate(values) for name, values in parts.items()}
