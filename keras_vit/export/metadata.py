"""The metadata every export carries, so that runtimes need nothing but the exported file.

Keys (all always present) and their meaning:

- ``class_names``: JSON list of strings, one per logit (``["0", "1", ...]`` when the model has none).
- ``image_size``: JSON ``[H, W]``.
- ``channels``: number of image channels (``1`` grayscale, ``3`` RGB), NHWC layout.
- ``preprocessing``: JSON ``{"scale": s, "mean": [...], "std": [...]}`` meaning
  ``input = (raw * scale - mean) / std`` per channel for raw 0..255 pixels; ``{}`` when that
  preprocessing is inside the graph and the input is raw pixels.
- ``input_dtype``: dtype of the ``images`` input (``float32``, or ``uint8`` with preprocessing inside).
- ``preset``: the keras-vit preset the model was built from (``""`` when none).
- ``keras_vit_version``: version of keras-vit that wrote the file.
- ``opset``: ONNX opset of the file (``null`` in a SavedModel's JSON).

Extra keys: ``num_classes``, ``outputs`` (JSON list of output names, ``logits`` first) and ``format``.

Where it lives: the ONNX file's ``metadata_props`` (string values: the text strings as they are, all
other values as JSON text), and for a SavedModel the JSON file ``keras_vit_metadata.json`` inside
the SavedModel directory (typed JSON values).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from keras_vit.errors import UserInputError

#: Name of the metadata file written inside a SavedModel directory.
SAVED_MODEL_METADATA_FILE = "keras_vit_metadata.json"

#: The keys other tools may rely on.
REQUIRED_KEYS = (
    "class_names", "image_size", "channels", "preprocessing", "input_dtype", "preset",
    "keras_vit_version", "opset",
)
_TEXT_KEYS = {"input_dtype", "preset", "keras_vit_version", "format"}


def build_metadata(
    info,
    *,
    export_format: str,
    opset: int | None,
    include_preprocessing: bool = False,
    input_dtype: str = "float32",
    outputs: tuple[str, ...] = ("logits",),
) -> dict[str, Any]:
    """The metadata dict (typed values) for a model described by a ``ModelDescription``."""
    from keras_vit import __version__

    return {
        "class_names": list(info.class_names),
        "image_size": [int(info.image_size[0]), int(info.image_size[1])],
        "channels": int(info.channels),
        "preprocessing": {} if include_preprocessing else dict(info.preprocessing),
        "input_dtype": input_dtype,
        "preset": info.preset,
        "keras_vit_version": __version__,
        "opset": opset,
        "num_classes": int(info.num_classes),
        "outputs": list(outputs),
        "format": export_format,
    }


def encode_props(metadata: dict[str, Any]) -> dict[str, str]:
    """Typed metadata -> ONNX ``metadata_props`` strings."""
    out = {}
    for key, value in metadata.items():
        if key in _TEXT_KEYS:
            out[key] = "" if value is None else str(value)
        else:
            out[key] = json.dumps(value)
    return out


def decode_props(props: dict[str, str]) -> dict[str, Any]:
    """ONNX ``metadata_props`` strings -> typed metadata (the inverse of :func:`encode_props`)."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        if key in _TEXT_KEYS:
            out[key] = text if (text or key != "preset") else None
        else:
            try:
                out[key] = json.loads(text)
            except json.JSONDecodeError:
                out[key] = text
    return out


def set_onnx_metadata(model_proto, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into an ``onnx.ModelProto``'s ``metadata_props`` (replacing same-named keys)."""
    props = encode_props(metadata)
    kept = [p for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for prop in kept:
        model_proto.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in props.items():
        model_proto.metadata_props.add(key=key, value=value)


def write_saved_model_metadata(directory: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write ``keras_vit_metadata.json`` inside a SavedModel directory; returns its path."""
    path = Path(directory) / SAVED_MODEL_METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read the metadata of an exported ONNX file or SavedModel directory (typed values)."""
    path = Path(path)
    if path.is_dir():
        meta_file = path / SAVED_MODEL_METADATA_FILE
        if not meta_file.is_file():
            raise UserInputError(f"{path} has no {SAVED_MODEL_METADATA_FILE}: not a keras-vit SavedModel export.")
        return json.loads(meta_file.read_text(encoding="utf-8"))
    if not path.is_file():
        raise UserInputError(f"{path} does not exist.")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise UserInputError(f"{path} is not a readable ONNX file: {err}") from None
    return decode_props({p.key: p.value for p in model.metadata_props})
