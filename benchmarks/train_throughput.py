"""Training throughput (images/s) of ``vit_mnist`` on the TensorFlow, JAX and PyTorch backends.

Each (backend, jit_compile) case runs in its own process (the Keras backend is fixed at import):
``vit_mnist`` compiled with the recipe of :mod:`keras_vit.training` (AdamW, warm-up + cosine, label
smoothing, gradient clipping), fed by the same input pipeline as ``keras-vit train`` (``tf.data``,
preprocessing in the pipeline, augmentation off by default), one warm-up epoch (compilation), then
``--epochs`` timed epochs over ``--images`` real MNIST images (rounded down to whole batches so no
retracing happens for a last partial batch).

Not a test. Run from the repository root (about 10-20 minutes on 2 busy CPU cores)::

    python benchmarks/train_throughput.py --data-dir ../shared/data [--batch-size 64] [--images 10000]
        [--epochs 2] [--cases tensorflow:auto,tensorflow:off,jax:auto,torch:off,torch:on] [--json out.json]

A case is ``backend:jit`` or ``backend:jit:threads``; with ``threads`` the child process runs with
``OMP_NUM_THREADS=threads`` and ``torch.set_num_threads`` / TensorFlow's intra-op pool set to it.
On a CPU shared with other work, PyTorch's eager mode with one OpenMP thread per core collapses
(spinning threads wait for descheduled ones): measured 69 images/s with 2 threads vs 745 with 1 on a
busy 2-core machine, so the default cases include ``torch:off:1``.

``jit`` per case: ``auto`` (Keras' default: XLA on TensorFlow where supported, ``jax.jit`` on JAX,
eager on PyTorch), ``on`` (TensorFlow XLA / ``torch.compile``), ``off`` (TensorFlow graph without XLA,
PyTorch eager). JAX with ``off`` runs un-jitted and is not a meaningful figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

DEFAULT_CASES = "tensorflow:auto,tensorflow:off,jax:auto,torch:off,torch:off:1,torch:on"


def child(args: argparse.Namespace) -> dict:
    """Runs inside one backend's process; returns the figures of one case."""
    import keras

    import keras_vit
    from keras_vit.augment import build_augmentation
    from keras_vit.datasets import load_dataset
    from keras_vit.training import TrainConfig, build_optimizer, make_pipeline

    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    if args.threads:
        if keras.backend.backend() == "torch":
            import torch

            torch.set_num_threads(args.threads)
        elif keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    ds = load_dataset("mnist" if args.data_dir else "sample", args.data_dir)
    n = min(args.images, len(ds.x_train)) // args.batch_size * args.batch_size
    x, y = ds.x_train[:n], ds.y_train[:n]
    keras.utils.set_random_seed(0)
    model = keras_vit.create_model("vit_mnist")
    config = TrainConfig(epochs=1 + args.epochs, batch_size=args.batch_size)
    model.compile(
        optimizer=build_optimizer(config, n // args.batch_size),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit,
    )
    data = make_pipeline(x, y, batch_size=args.batch_size, preprocessing=model.preprocessing, num_classes=10,
                         augmentation=build_augmentation(args.augment, 0), shuffle=True, seed=0)
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)  # warm-up: tracing / compilation
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    history = model.fit(data, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "backend": keras.backend.backend(), "jit_compile": args.jit, "threads": args.threads or "default",
        "batch_size": args.batch_size,
        "images_per_epoch": n, "epochs": args.epochs, "augment": args.augment,
        "seconds": round(seconds, 2), "images_per_s": round(n * args.epochs / seconds, 1),
        "warmup_epoch_s": round(warmup, 2), "final_loss": round(float(history.history["loss"][-1]), 4),
        "keras": keras.__version__, "backend_version": _backend_version(),
    }


def _backend_version() -> str:
    import keras

    name = keras.backend.backend()
    module = __import__(name)
    return f"{name} {getattr(module, '__version__', '?')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder with mnist/mnist.npz (default: the packaged 5,000-image sample)")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64, the recipe's")
    parser.add_argument("--augment", default="none", choices=["none", "digits"])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"backend:jit list, default {DEFAULT_CASES}")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--jit", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.jit:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    results = []
    for case in args.cases.split(","):
        backend, jit, *threads = case.split(":")
        argv = [sys.executable, __file__, "--jit", jit, *(["--threads", threads[0]] if threads else []),
                "--images", str(args.images), "--epochs", str(args.epochs),
                "--batch-size", str(args.batch_size), "--augment", args.augment]
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
               **({"OMP_NUM_THREADS": threads[0]} if threads else {})}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=args.timeout)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = json.loads(lines[-1][7:]) if lines else {
                "backend": backend, "jit_compile": jit, "threads": threads[0] if threads else "default",
                "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        except subprocess.TimeoutExpired:
            result = {"backend": backend, "jit_compile": jit, "threads": threads[0] if threads else "default",
                      "error": f"timed out after {args.timeout} s"}
        results.append(result)
        print(json.dumps(result), flush=True)

    print(f"\nvit_mnist training throughput, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, batch {args.batch_size}, augmentation {args.augment}\n")
    print("| backend | jit_compile | threads | images/s | warm-up epoch (s) |")
    print("| --- | --- | --- | ---: | ---: |")
    for r in results:
        head = f"| {r['backend']} | {r['jit_compile']} | {r['threads']} |"
        if "error" in r:
            print(f"{head} failed: {r['error']} | |")
        else:
            print(f"{head} {r['images_per_s']:,.0f} | {r['warmup_epoch_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
