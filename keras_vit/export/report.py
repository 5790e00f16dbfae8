"""What an export wrote and checked: the report (:class:`ExportReport`) and the file's keras-vit metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_vit.errors import UserInputError
from keras_vit.export.verify import format_tolerance

# --------------------------------------------------------------------------------------------------
# keras-vit metadata in ONNX files and SavedModels


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
    """Read the metadata of an exported ONNX file, ``.tflite`` file or SavedModel directory (typed values)."""
    path = Path(path)
    if path.is_dir():
        meta_file = path / SAVED_MODEL_METADATA_FILE
        if not meta_file.is_file():
            raise UserInputError(f"{path} has no {SAVED_MODEL_METADATA_FILE}: not a keras-vit SavedModel export.")
        return json.loads(meta_file.read_text(encoding="utf-8"))
    if not path.is_file():
        raise UserInputError(f"{path} does not exist.")
    from keras_vit.export.litert_ops import is_tflite, read_tflite_metadata

    if path.suffix == ".tflite" or is_tflite(path):
        return read_tflite_metadata(path)
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise UserInputError(f"{path} is not a readable ONNX file: {err}") from None
    return decode_props({p.key: p.value for p in model.metadata_props})


def readable_by(model_proto) -> str:
    """Which runtimes can read ``model_proto``: ``"onnxruntime only (...)"`` or ``"any ONNX runtime with opset N"``."""
    custom = sorted({node.domain for node in model_proto.graph.node if node.domain not in ("", "ai.onnx")})
    if custom:
        return f"onnxruntime only ({', '.join(custom)} ops)"
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return f"any ONNX runtime with opset {opset}"


# --------------------------------------------------------------------------------------------------
# The export report


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


@dataclass
class ExportReport:
    """The result of :func:`keras_vit.export.to_onnx` or :func:`~keras_vit.export.to_saved_model`.

    ``parity``: ``max_abs_diff``, ``samples``, ``batch_sizes``, ``tolerance`` of the float check of the
    written file against Keras (absent for INT8 files, whose check is ``quantization["agreement"]``).
    ``optimization`` / ``quantization``: what ``--optimize`` / ``--quantize int8`` did (or ``None``).
    ``source_parity``: the check against the caller's in-memory model when the conversion ran in a
    TensorFlow subprocess for a model living under another backend. ``operators``: the operator names
    of a ``.tflite`` file (LiteRT exports).
    """

    format: str
    path: str
    metadata: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    file_size: int
    seconds: float
    verify_data: str
    parity: dict[str, Any] | None = None
    optimization: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    source_parity: dict[str, Any] | None = None
    converted_in: str = "tensorflow"
    operators: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    #: Which runtimes can read the file (:func:`readable_by`); ``None`` for SavedModels.
    runtimes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary_lines(self) -> list[str]:
        """What was written and every figure that was checked, one line each."""
        meta = self.metadata
        where = f"opset {meta.get('opset')}, " if self.format == "onnx" else ""
        lines = [
            f"wrote {self.path} ({self.format}, {where}{_size(self.file_size)}) in {self.seconds:.1f} s"
            f" [converted in {self.converted_in}]",
            f"input images {meta.get('input_dtype')} [N, {meta['image_size'][0]}, {meta['image_size'][1]}, "
            f"{meta['channels']}] -> outputs {', '.join(self.outputs)}; graph inputs {self.inputs}; "
            "batch 1 and 17 run",
        ]
        if self.parity:
            p = self.parity
            sizes = ", ".join(str(b) for b in p["batch_sizes"])
            lines.append(
                f"parity vs Keras on {p['samples']} of the verify images (verify data: {self.verify_data}; "
                f"batches {sizes}): "
                f"max abs logit diff {p['max_abs_diff']:.3g} <= {format_tolerance(p['tolerance'])}"
                + (f" ({p['relative_diff']:.2g} of the logit scale {p['logit_scale']:.3g})"
                   if "relative_diff" in p else "")
            )
        if self.source_parity:
            s = self.source_parity
            lines.append(
                f"parity vs the {s['backend']} model in this process: max abs logit diff {s['max_abs_diff']:.3g}"
                f" <= {format_tolerance(s['tolerance'])}"
            )
        if self.optimization:
            o = self.optimization
            fusions = ", ".join(f"{k} {o['fusions'].get(k, 0)}" for k in ("LayerNormalization", "Gelu", "Attention"))
            timing = ""
            if "plain_ms" in o:
                timing = (f"; batch-1 latency (1 thread) {o['plain_ms']:.3f} ms plain vs "
                          f"{o['optimized_ms']:.3f} ms optimized")
            lines.append(f"optimize: fused ops {fusions}; nodes {o['nodes_plain']} -> {o['nodes_optimized']}{timing}")
            lines.append(f"optimize: kept the {o['kept']} graph ({o['reason']})")
        if self.runtimes:
            lines.append(f"readable by: {self.runtimes}")
        if self.quantization and self.format == "litert":  # LiteRT: agreement with the Keras model
            q = self.quantization
            lines.append(
                f"{q['mode']} ({q['settings']}): top-1 agreement with Keras {_pct(q['agreement'])} on "
                f"{q['samples']} images (>= {q['min_agreement']:.0%}); accuracy {_pct(q['accuracy_before'])}"
                f" -> {_pct(q['accuracy_after'])}; max abs logit diff {q['max_abs_diff']:.3g}"
            )
        elif self.quantization:
            q = self.quantization
            s = q["settings"]
            if "float_max_abs_diff" in q:
                lines.append(
                    f"float graph before quantisation: max abs logit diff vs Keras {q['float_max_abs_diff']:.3g} "
                    f"<= 1e-4 ({self.verify_data})"
                )
            mode = q.get("mode", "int8")
            if mode != "int8":
                rel = q.get("max_relative_diff")
                settings = ", ".join(f"{k}={v}" for k, v in s.items())
                lines.append(
                    f"{mode}: size {_size(q['size_before'])} -> {_size(q['size_after'])}; top-1 agreement with "
                    f"float {_pct(q['agreement'])} on {q['samples']} images (>= {_pct(q['min_agreement'])}); "
                    f"max relative logit diff {'n/a' if rel is None else f'{rel:.3g}'}; {settings}; "
                    f"accuracy {_pct(q['accuracy_before'])} -> {_pct(q['accuracy_after'])}"
                )
        if self.quantization and self.format != "litert" and self.quantization.get("mode", "int8") == "int8":
            q = self.quantization
            s = q["settings"]
            lines.append(
                f"int8: size {_size(q['size_before'])} -> {_size(q['size_after'])}; top-1 agreement with float "
                f"{_pct(q['agreement'])} on {q['samples']} images (>= {q['min_agreement']:.0%}; per_channel="
                f"{s['per_channel']}, reduce_range={s['reduce_range']}, first/last MatMul float="
                f"{s['keep_first_last_float']}); accuracy {_pct(q['accuracy_before'])} -> {_pct(q['accuracy_after'])}"
            )
        if self.operators:
            lines.append(f"operators ({len(self.operators)}): {', '.join(self.operators)}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines
