"""The ONNX files compared: keras-vit's (through the library) and timm's (``torch.onnx``), same weights.

Both sides get the same random weights: a timm model is built with ``pretrained=False`` and perturbed
(:func:`keras_vit.testing.timm_reference.perturb_parameters`: no zero biases, no unit LayerNorms,
which tf2onnx and optimizers would otherwise fold away), and keras-vit loads its state dict with
:func:`keras_vit.weights.load_timm`. Every file is checked against its own framework's logits.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.specs import ModelSpec
from keras_vit.export.graph.fusion import FUSED_FAMILIES, fuse_attention, transformer_optimizer_options


@dataclass
class Candidate:
    """One ONNX file in the comparison and what is known about it."""

    name: str
    side: str  # "keras-vit" or "timm"
    kind: str  # "fp32", "optimized" or "int8"
    path: str
    layout: str  # "NHWC" (keras-vit) or "NCHW" (timm)
    how: str
    nodes: int = 0
    nodes_in_session: int = 0
    fused_ops: dict[str, int] = field(default_factory=dict)
    max_abs_diff: float | None = None  # float files: vs their own framework's logits
    top1_agreement: float | None = None  # INT8 files: vs the float file, on random images
    file_size: int = 0
    export_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_images(spec_model, batch: int, seed: int = 1) -> np.ndarray:
    """NHWC float32 images (already "preprocessed": standard normal)."""
    height, width = spec_model.image_size
    return np.random.default_rng(seed).standard_normal((batch, height, width, spec_model.channels)).astype("float32")


def nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def build_candidates(spec: ModelSpec, workdir: Path, log=print) -> tuple[list[Candidate], dict[str, Any]]:
    """Build both models, export every candidate into ``workdir``; returns ``(candidates, info)``."""
    from keras_vit.testing.timm_reference import timm_logits, timm_state_dict
    from keras_vit.weights import load_timm

    workdir.mkdir(parents=True, exist_ok=True)
    reference = spec.timm_model()
    model = spec.keras_model()
    load_timm(model, timm_state_dict(reference), replace_head=False)
    images = random_images(model, 17)
    keras_logits = np.asarray(model.predict_on_batch(images))
    torch_logits = timm_logits(reference, images)
    info = {
        "preset": spec.preset, "overrides": spec.overrides, "timm": spec.timm,
        "image_size": list(model.image_size), "patch_size": model.patch_size, "channels": model.channels,
        "hidden_dim": model.hidden_dim, "depth": model.depth, "num_heads": model.num_heads,
        "mlp_dim": model.mlp_dim, "num_classes": model.num_classes, "train_batch": spec.train_batch,
        "keras_vs_timm_max_abs_diff": float(np.max(np.abs(keras_logits - torch_logits))),
    }
    log(f"  keras-vit vs timm logits (same weights): max abs diff {info['keras_vs_timm_max_abs_diff']:.2e}")
    candidates = _ours(model, workdir, images, keras_logits, log)
    candidates += _timm(reference, model, workdir, images, torch_logits, log)
    for candidate in candidates:
        _describe(candidate)
    return candidates, info


def _ours(model, workdir: Path, images, keras_logits, log) -> list[Candidate]:
    import onnx

    from keras_vit.export import to_onnx
    from keras_vit.export.optimize import quantize_once

    out = []
    for kind, optimize in (("fp32", False), ("optimized", True)):
        path = workdir / f"keras_vit_{kind}.onnx"
        start = time.perf_counter()
        report = to_onnx(model, path, optimize=optimize)
        how = "keras_vit.export.to_onnx" + ("(optimize=True)" if optimize else "()")
        candidate = Candidate(f"keras-vit {kind}", "keras-vit", kind, str(path), "NHWC", how,
                              export_seconds=time.perf_counter() - start)
        if report.optimization:
            candidate.extra["optimization"] = {k: v for k, v in report.optimization.items() if k != "fusions"}
        candidate.max_abs_diff = _max_diff(path, images, keras_logits)
        out.append(candidate)
        log(f"  {candidate.name}: {candidate.export_seconds:.0f} s, parity {candidate.max_abs_diff:.2e}")
    # The same fusions without computing the last block for the class token only, to show each part's share.
    all_tokens = workdir / "keras_vit_fused_all_tokens.onnx"
    onnx.save(fuse_attention(onnx.load(out[0].path))[0], all_tokens)
    candidate = Candidate("keras-vit fused, all tokens", "keras-vit", "optimized", str(all_tokens), "NHWC",
                          "keras_vit.export.graph.fusion.fuse_attention(fp32): no class-token pruning")
    candidate.max_abs_diff = _max_diff(all_tokens, images, keras_logits)
    out.append(candidate)
    int8_path = workdir / "keras_vit_int8.onnx"
    onnx.save(quantize_once(onnx.load(out[1].path), per_channel=False, reduce_range=True,
                            keep_first_last_float=False), int8_path)
    out.append(Candidate("keras-vit int8", "keras-vit", "int8", str(int8_path), "NHWC",
                         "quantize_dynamic(optimized, reduce_range) as keras_vit.export.optimize"))
    return out


def _timm(reference, model, workdir: Path, images, torch_logits, log) -> list[Candidate]:
    import onnx
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from keras_vit.export.optimize import quantize_once

    fp32 = workdir / "timm_fp32.onnx"
    start = time.perf_counter()
    example = torch.from_numpy(nchw(images[:1]))
    with torch.no_grad():
        torch.onnx.export(reference, (example,), str(fp32), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    out = [Candidate("timm fp32", "timm", "fp32", str(fp32), "NCHW", "torch.onnx.export(dynamo=False, opset 17)",
                     export_seconds=time.perf_counter() - start)]
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    for suffix, options, how in (
        ("optimized", None, "onnxruntime optimize_model(model_type='vit')"),
        ("optimized-noskip", transformer_optimizer_options(),
         "onnxruntime optimize_model(model_type='vit', no SkipLayerNormalization)"),
    ):
        path = workdir / f"timm_{suffix}.onnx"
        optimized = optimize_model(str(fp32), model_type="vit", num_heads=model.num_heads,
                                   hidden_size=model.hidden_dim, opt_level=0, optimization_options=options)
        optimized.save_model_to_file(str(path))
        out.append(Candidate(f"timm {suffix}", "timm", "optimized", str(path), "NCHW", how))
    for candidate in out:
        candidate.max_abs_diff = _max_diff(candidate.path, nchw(images), torch_logits)
        log(f"  {candidate.name}: parity vs torch {candidate.max_abs_diff:.2e}")
    int8_path = workdir / "timm_int8.onnx"
    onnx.save(quantize_once(onnx.load(fp32), per_channel=False, reduce_range=True, keep_first_last_float=False),
              int8_path)
    out.append(Candidate("timm int8", "timm", "int8", str(int8_path), "NCHW",
                         "quantize_dynamic(fp32, reduce_range) as keras_vit.export.optimize"))
    return out


def _run(path: str, feed: np.ndarray) -> np.ndarray:
    from benchmarks.timing import ort_session

    session = ort_session(path, threads=1)
    return np.concatenate([session.run(None, {"images": feed[s : s + 17]})[0] for s in (0, 17) if s < len(feed)])


def _max_diff(path, feed: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference over a batch of 17 and a batch of 1 (the dynamic batch axis)."""
    session_out = _run(str(path), feed)
    single = _run(str(path), feed[:1])
    return float(max(np.max(np.abs(session_out - expected)), np.max(np.abs(single - expected[:1]))))


def int8_agreement(candidates: list[Candidate], images_nhwc: np.ndarray) -> None:
    """Top-1 agreement of each INT8 file with its side's float file (optimized for keras-vit, fp32 for timm)."""
    by_name = {c.name: c for c in candidates}
    for candidate in candidates:
        if candidate.kind != "int8":
            continue
        source = by_name["keras-vit optimized" if candidate.side == "keras-vit" else "timm fp32"]
        feed = images_nhwc if candidate.layout == "NHWC" else nchw(images_nhwc)
        float_top = np.argmax(_run(source.path, feed), -1)
        int8_top = np.argmax(_run(candidate.path, feed), -1)
        candidate.top1_agreement = float(np.mean(float_top == int8_top))


def _describe(candidate: Candidate) -> None:
    import onnx

    proto = onnx.load(candidate.path)
    candidate.nodes = len(proto.graph.node)
    candidate.file_size = Path(candidate.path).stat().st_size
    session_graph = _session_graph(candidate.path)
    candidate.nodes_in_session = len(session_graph.graph.node)
    counts = Counter(n.op_type for n in session_graph.graph.node)
    candidate.fused_ops = {family: int(sum(counts[t] for t in types)) for family, types in FUSED_FAMILIES.items()}
    candidate.fused_ops["SkipLayerNormalization"] = int(counts["SkipLayerNormalization"])
    candidate.fused_ops["QAttention"] = int(counts["QAttention"])


def _session_graph(path: str):
    """The graph onnxruntime actually runs (its default optimisation level, as in the timings)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kvit_bench_") as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "session.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)
