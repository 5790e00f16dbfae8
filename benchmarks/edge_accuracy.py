"""Figures for the edge runtime (export/README.md): accuracy and latency of ``export/infer.py``.

1. Trains ``vit_mnist`` briefly on real MNIST (the recipe of ``tests/conftest.py``'s ``trained_mnist_model``:
   AdamW 1e-3, batch 128, 12,000 training images, 2 epochs, seed 0) and exports it with
   ``keras_vit.export.to_onnx``: fp32, and INT8 (``quantize="int8"``).
2. Writes the MNIST test set (10,000 images) as PNG files and classifies the folder with the real command
   line, ``python export/infer.py MODEL.onnx FOLDER --json --top-k 1`` (a subprocess, as on a device).
3. Compares its top-1 accuracy with the Keras model's on the same PNG files (read back with Pillow).
4. Runs ``infer.py --benchmark`` at batch 1 (latency p50) and batch 64 (images/s) for fp32 and INT8.

Run (about 5 minutes on 2 busy cores):

    KERAS_BACKEND=tensorflow python benchmarks/edge_accuracy.py [--threads N] [--json results.json]

Not a test: it prints a Markdown table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
INFER = REPO_ROOT / "export" / "infer.py"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"


def log(message: str) -> None:
    print(f"[edge_accuracy] {message}", file=sys.stderr, flush=True)


def train(data_path: Path, out: Path, train_samples: int, epochs: int) -> Path:
    """The ``trained_mnist_model`` recipe; returns the ``.keras`` path."""
    import keras

    import keras_vit

    keras.utils.set_random_seed(0)
    with np.load(data_path, allow_pickle=False) as d:
        x_train, y_train = d["x_train"][:train_samples], d["y_train"][:train_samples]
    x = (x_train.astype("float32")[..., None] / 255.0 - 0.1307) / 0.3081
    model = keras_vit.create_model("vit_mnist", class_names=[str(i) for i in range(10)])
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y_train.astype("int32"), batch_size=128, epochs=epochs, verbose=0)
    path = out / "vit_mnist.keras"
    model.save(path)
    return path


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def keras_predictions(model_path: Path, paths: list[Path]) -> np.ndarray:
    """Top-1 classes of the Keras model on the PNG files, preprocessed as in training."""
    import keras
    from PIL import Image

    model = keras.saving.load_model(model_path)
    raw = np.stack([np.asarray(Image.open(p)) for p in paths])
    x = (raw.astype("float32")[..., None] / 255.0 - 0.1307) / 0.3081
    return np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)


def infer_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(INFER), *args], capture_output=True, text=True, check=False)


def infer_predictions(onnx_path: Path, folder: Path, count: int, threads: int | None) -> tuple[np.ndarray, float]:
    """Top-1 classes from ``infer.py`` on the PNG folder (by file index), and end-to-end images/s."""
    extra = ["--threads", str(threads)] if threads else []
    start = time.perf_counter()
    result = infer_cli([str(onnx_path), str(folder), "--json", "--top-k", "1", "--batch-size", "64", *extra])
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"infer.py failed ({result.returncode}): {result.stderr.strip()}")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    if len(records) != count:
        raise SystemExit(f"infer.py classified {len(records)} of {count} images")
    predicted = np.empty(count, dtype=int)
    for record in records:
        predicted[int(Path(record["path"]).stem)] = int(record["top_k"][0]["label"])
    return predicted, len(records) / seconds


def benchmark(onnx_path: Path, batch_size: int, runs: int, threads: int | None) -> dict:
    extra = ["--threads", str(threads)] if threads else []
    result = infer_cli(
        [str(onnx_path), "--benchmark", "--batch-size", str(batch_size), "--runs", str(runs), "--warmup", "20",
         "--json", *extra]
    )
    if result.returncode != 0:
        raise SystemExit(f"infer.py --benchmark failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="mnist.npz (keras.datasets layout)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model and PNGs here (default: temp)")
    parser.add_argument("--train-samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--runs-batch1", type=int, default=500)
    parser.add_argument("--runs-batch64", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the model, ONNX files and PNGs already in --workdir (re-measure only)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edge_accuracy_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        from keras_vit.export import to_onnx

        keras_path, fp32, int8 = work / "vit_mnist.keras", work / "vit_mnist.onnx", work / "vit_mnist.int8.onnx"
        folder = work / "mnist_test_png"
        with np.load(args.data, allow_pickle=False) as d:
            x_test, y_test = d["x_test"], d["y_test"].astype(int)
        train_seconds = None
        if not (args.reuse and keras_path.is_file() and fp32.is_file() and int8.is_file()):
            log(f"training vit_mnist on {args.train_samples} images for {args.epochs} epochs")
            start = time.perf_counter()
            train(args.data, work, args.train_samples, args.epochs)
            train_seconds = round(time.perf_counter() - start, 1)
            log("exporting fp32 and INT8 ONNX")
            for line in to_onnx(keras_path, fp32, verify_data=args.data).summary_lines():
                log(line)
            for line in to_onnx(keras_path, int8, quantize="int8", verify_data=args.data).summary_lines():
                log(line)
        paths = [folder / f"{i:05d}.png" for i in range(len(x_test))]
        if not (args.reuse and all(p.is_file() for p in paths)):
            log(f"writing {len(x_test)} test images as PNG")
            paths = write_pngs(x_test, folder)

        log("Keras accuracy on the PNG files")
        keras_top1 = keras_predictions(keras_path, paths)
        keras_acc = float((keras_top1 == y_test).mean())
        figures: dict = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
            "threads": args.threads,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "train_seconds": train_seconds,
            "test_images": int(len(y_test)),
            "keras_top1": keras_acc,
            "models": {},
        }
        for name, path in (("fp32", fp32), ("int8", int8)):
            log(f"infer.py accuracy and benchmark: {name}")
            predicted, e2e = infer_predictions(path, folder, len(y_test), args.threads)
            accuracy = float((predicted == y_test).mean())
            b1 = benchmark(path, 1, args.runs_batch1, args.threads)
            b64 = benchmark(path, 64, args.runs_batch64, args.threads)
            figures["models"][name] = {
                "file": path.name,
                "size_kb": round(path.stat().st_size / 1024, 1),
                "infer_top1": accuracy,
                "diff_vs_keras_points": round(100 * (accuracy - keras_acc), 3),
                "top1_agreement_with_keras": float((predicted == keras_top1).mean()),
                "end_to_end_images_per_s": round(e2e, 1),
                "batch1": b1,
                "batch64": b64,
            }

    print(f"\nKeras top-1 on the {figures['test_images']} MNIST test PNGs: {100 * keras_acc:.2f} %\n")
    print("| model | size | infer.py top-1 | vs Keras | same top-1 as Keras | p50 batch 1 | p90 batch 1 | "
          "images/s batch 64 | end-to-end PNG images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in figures["models"].items():
        print(
            f"| {name} | {m['size_kb']:.0f} KB | {100 * m['infer_top1']:.2f} % | {m['diff_vs_keras_points']:+.2f} pt | "
            f"{100 * m['top1_agreement_with_keras']:.2f} % | "
            f"{m['batch1']['latency_ms']['p50']:.3f} ms | {m['batch1']['latency_ms']['p90']:.3f} ms | "
            f"{m['batch64']['images_per_s']:.0f} | {m['end_to_end_images_per_s']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = abs(figures["models"]["fp32"]["diff_vs_keras_points"]) <= 0.1
    print(f"\nfp32 infer.py within 0.1 point of Keras: {'yes' if ok else 'NO'}; "
          f"threads {args.threads or 'default'}, load average {figures['load_average_1min']} on {os.cpu_count()} cores")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
