"""LiteRT figures: parity, agreement and accuracy of every ``--quantize`` mode, file sizes, and batch-1
1-thread latency of the ``.tflite`` files (ai-edge-litert, XNNPACK) beside our optimised ONNX on onnxruntime.

Not a test. Run from the repository root::

    KERAS_BACKEND=tensorflow python benchmarks/litert.py [--mnist-model M.keras] [--verify-data mnist]
        [--json benchmarks/results/litert.json]

``vit_mnist`` is trained briefly on MNIST (as in ``export_figures.py``) unless a ``.keras`` is given;
``vit_tiny_patch16_224`` has random weights (perturbed so that no bias is zero) and is checked on MNIST
digits resized to 224x224x3, so its agreement figures say how faithful the file is, not how accurate.
Latencies are medians of interleaved rounds (:func:`keras_vit.export.optimize.interleaved_median_ms`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = (None, "fp16", "int8", "int8-static", "int16x8")


class _LiteRTSession:
    """A LiteRT runner that looks like an onnxruntime session to ``interleaved_median_ms``."""

    def __init__(self, path: Path):
        from keras_vit.export.litert_ops import LiteRTRunner

        self.runner = LiteRTRunner(path, threads=1)

    def run(self, _names, feeds):
        return self.runner(feeds["images"])


def measure(name: str, keras_path: Path, workdir: Path, verify_data: str | None, limit: int, rounds: int) -> dict:
    from keras_vit.export import ExportOptions, export, to_onnx
    from keras_vit.export.optimize import interleaved_median_ms
    from keras_vit.export.verify import ort_session

    result: dict = {"model": name, "verify_data": verify_data, "verify_limit": limit, "modes": {}}
    files: dict[str, Path] = {}
    for mode in MODES:
        label = mode or "float32"
        path = workdir / f"{name}.{label}.tflite"
        start = time.perf_counter()
        try:
            report = export(keras_path, path, ExportOptions(format="litert", quantize=mode, verify_data=verify_data,
                                                            verify_limit=limit))
        except Exception as err:  # a failed mode is a figure too
            result["modes"][label] = {"error": f"{type(err).__name__}: {err}"}
            print(name, label, "FAILED", err, flush=True)
            continue
        entry = {"seconds": time.perf_counter() - start, "size": report.file_size, "operators": report.operators,
                 "parity": report.parity, "quantization": report.quantization}
        result["modes"][label] = entry
        files[label] = path
        print(name, label, json.dumps({k: v for k, v in entry.items() if k != "operators"}), flush=True)
    onnx_path = workdir / f"{name}.optimized.onnx"
    onnx_report = to_onnx(keras_path, onnx_path, optimize=True, verify_data=verify_data, verify_limit=64)
    int8_onnx = workdir / f"{name}.int8.onnx"
    to_onnx(keras_path, int8_onnx, optimize=True, quantize="int8", verify_data=verify_data, verify_limit=limit)
    result["onnx_sizes"] = {"optimized": onnx_report.file_size, "int8": int8_onnx.stat().st_size}
    image = _one_image(onnx_report)
    sessions = {"onnx optimized": ort_session(onnx_path, threads=1), "onnx int8": ort_session(int8_onnx, threads=1)}
    sessions.update({f"tflite {label}": _LiteRTSession(path) for label, path in files.items()})
    result["latency_ms_batch1_1thread"] = interleaved_median_ms(sessions, image, rounds=rounds)
    print(name, json.dumps(result["latency_ms_batch1_1thread"]), flush=True)
    return result


def _one_image(report):
    import numpy as np

    height, width = report.metadata["image_size"]
    rng = np.random.default_rng(0)
    return rng.normal(size=(1, height, width, report.metadata["channels"])).astype("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-model", type=Path, help="a trained vit_mnist .keras (default: train one)")
    parser.add_argument("--verify-data", default="mnist")
    parser.add_argument("--mnist-limit", type=int, default=10000, help="MNIST test images for vit_mnist")
    parser.add_argument("--tiny-limit", type=int, default=200, help="MNIST test images for ViT-Ti/16")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import keras

    import keras_vit
    from benchmarks.export_figures import perturb, train_mnist

    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)", "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mnist = args.mnist_model or train_mnist(workdir / "vit_mnist.keras", [])
        out["models"].append(measure("vit_mnist", Path(mnist), workdir, args.verify_data, args.mnist_limit,
                                     args.rounds))
        if not args.skip_tiny:
            keras.utils.set_random_seed(0)
            tiny = keras_vit.create_model("vit_tiny_patch16_224", num_classes=10)
            perturb(tiny)
            tiny.save(workdir / "vit_tiny.keras")
            out["models"].append(measure("vit_tiny_patch16_224 (random weights)", workdir / "vit_tiny.keras",
                                         workdir, args.verify_data, args.tiny_limit, args.rounds))
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
