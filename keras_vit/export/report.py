"""What an export did and checked, for people (``summary_lines``) and programs (``to_dict``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from keras_vit.export.verify import format_tolerance


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
    TensorFlow subprocess for a model living under another backend.
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
    warnings: list[str] = field(default_factory=list)

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
        if self.quantization:
            q = self.quantization
            s = q["settings"]
            if "float_max_abs_diff" in q:
                lines.append(
                    f"float graph before quantisation: max abs logit diff vs Keras {q['float_max_abs_diff']:.3g} "
                    f"<= 1e-4 ({self.verify_data})"
                )
            lines.append(
                f"int8: size {_size(q['size_before'])} -> {_size(q['size_after'])}; top-1 agreement with float "
                f"{_pct(q['agreement'])} on {q['samples']} images (>= {q['min_agreement']:.0%}; per_channel="
                f"{s['per_channel']}, reduce_range={s['reduce_range']}, first/last MatMul float="
                f"{s['keep_first_last_float']}); accuracy {_pct(q['accuracy_before'])} -> {_pct(q['accuracy_after'])}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines
