"""Export figures: export time, file sizes and onnxruntime CPU speed of fp32 / optimized / INT8 ONNX,
next to Keras' own ``predict_on_batch``, for ``vit_mnist`` and ``vit_tiny_patch16_224``.

Not a test. Run from the repository root::

    KERAS_BACKEND=tensorflow python benchmarks/export_figures.py [--mnist-model M.keras] [--json out.json]

Batch-1 latency is the median of ``--runs`` (>= 200) calls, throughput at batch 64 the images/s of the
median of ``--batch-runs`` calls; candidates are interleaved round by round so that the load of a busy
machine falls on all of them alike. onnxruntime runs with its default threads (all cores) and, for the
1-thread column, ``intra_op_num_threads=1``. ``vit_mnist`` is trained briefly on MNIST unless a
``.keras`` is given (INT8 is judged on real digits); ``vit_tiny_patch16_224`` has random weights
(perturbed so that no bias is zero), so its INT8 agreement is reported but not required.
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

import numpy as np  # noqa: E402


def train_mnist(path: Path, seconds_note: list) -> Path:
    """A ``vit_mnist`` trained 2 epochs on 12,000 MNIST digits like the test fixture (real data if found)."""
    import keras

    import keras_vit
    from keras_vit.datasets import load_dataset

    try:
        mnist = load_dataset("mnist")  # $KERAS_VIT_DATA, else Keras' cache or download
    except keras_vit.UserInputError:
        mnist = load_dataset("sample")
    x, y = mnist.x_train[:12000, ..., 0], mnist.y_train[:12000]
    keras.utils.set_random_seed(0)
    model = keras_vit.create_model("vit_mnist", class_names=[str(i) for i in range(10)])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit((x[..., None].astype("float32") / 255.0 - 0.1307) / 0.3081, y.astype("int32"),
              batch_size=128, epochs=2, verbose=0)
    seconds_note.append(time.perf_counter() - start)
    model.save(path)
    return path


def perturb(model, scale: float = 0.02, seed: int = 0) -> None:
    """Add N(0, scale) noise to every weight, so that no bias is zero.

    A freshly initialised model has all-zero biases, which tf2onnx folds away; that graph fuses in ways
    a trained model's does not, so random-weight figures would flatter --optimize.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        variable.assign(value + rng.normal(0.0, scale, value.shape).astype(value.dtype))


def ort_session(path_or_bytes, threads: int | None):
    from keras_vit.export.verify import ort_session as make

    return make(path_or_bytes, threads=threads)


def interleaved(calls: dict, runs: int, rounds: int = 20) -> dict[str, np.ndarray]:
    """Per-call seconds of each candidate, ``runs`` in all, interleaved over ``rounds``."""
    from keras_vit.export.optimize import time_calls

    per_round = max(1, runs // rounds)
    times: dict[str, list] = {name: [] for name in calls}
    for call in calls.values():
        time_calls(call, runs=0, warmup=3)
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].extend(time_calls(call, per_round, warmup=0))
    return {name: np.asarray(values) for name, values in times.items()}


def measure_model(name: str, keras_path: Path, workdir: Path, verify_data: str | None, runs: int,
                  batch_runs: int) -> dict:
    import keras
    import onnx

    from keras_vit.export import to_onnx
    from keras_vit.export.optimize import fusion_counts, optimize_graph, quantize_int8
    from keras_vit.export.source import describe_model
    from keras_vit.export.verify import load_verify_data, max_abs_diff, run_onnx

    fp32_path = workdir / f"{name}.onnx"
    start = time.perf_counter()
    report = to_onnx(keras_path, fp32_path, verify_data=verify_data)
    export_seconds = time.perf_counter() - start
    model = keras.saving.load_model(keras_path)
    info = describe_model(model)
    limit = 1000 if info.image_size[0] * info.image_size[1] <= 64 * 64 else 300  # INT8 check images
    data = load_verify_data(verify_data, info.image_size, info.channels, info.preprocessing, limit=limit)
    plain = onnx.load(fp32_path)

    start = time.perf_counter()
    optimized = optimize_graph(plain, info)
    optimize_seconds = time.perf_counter() - start
    opt_path = workdir / f"{name}.optimized.onnx"
    onnx.save(optimized, opt_path)

    float_logits = run_onnx(ort_session(fp32_path, None), data.inputs)["logits"]
    start = time.perf_counter()
    int8, qreport = quantize_int8(plain, data.inputs, float_logits, data.labels, min_agreement=0.0)
    quantize_seconds = time.perf_counter() - start
    int8_path = workdir / f"{name}.int8.onnx"
    onnx.save(int8, int8_path)

    x1, x64 = data.inputs[:1], np.resize(data.inputs, (64, *data.inputs.shape[1:]))
    reference = np.asarray(model.predict_on_batch(x64))
    files = {"fp32": fp32_path, "optimized": opt_path, "int8": int8_path}
    rows = {}
    sessions = {}
    for kind, path in files.items():
        sessions[kind] = {t: ort_session(path, t) for t in (None, 1)}
        logits = sessions[kind][None].run(["logits"], {"images": x64})[0]
        rows[kind] = {
            "file_bytes": path.stat().st_size,
            "nodes": len(onnx.load(path).graph.node),
            "max_abs_diff_vs_keras": max_abs_diff(logits, reference),
            "top1_agreement_vs_keras": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        }
    rows["keras"] = {"file_bytes": None, "nodes": None, "max_abs_diff_vs_keras": 0.0, "top1_agreement_vs_keras": 1.0}

    def ort_call(kind, threads, x):
        return lambda: sessions[kind][threads].run(None, {"images": x})

    for threads, label in ((None, "default"), (1, "1thread")):
        calls = {kind: ort_call(kind, threads, x1) for kind in files}
        if threads is None:
            calls["keras"] = lambda: model.predict_on_batch(x1)
        for kind, t in interleaved(calls, runs).items():
            rows[kind][f"batch1_p50_ms_{label}"] = float(np.median(t) * 1e3)
            rows[kind][f"batch1_p90_ms_{label}"] = float(np.percentile(t, 90) * 1e3)
        calls = {kind: ort_call(kind, threads, x64) for kind in files}
        if threads is None:
            calls["keras"] = lambda: model.predict_on_batch(x64)
        for kind, t in interleaved(calls, batch_runs, rounds=batch_runs).items():
            rows[kind][f"batch64_images_per_s_{label}"] = float(64 / np.median(t))
    return {
        "model": name,
        "image_size": list(info.image_size),
        "channels": info.channels,
        "parameters": int(model.count_params()),
        "export_seconds": export_seconds,
        "optimize_seconds": optimize_seconds,
        "quantize_seconds": quantize_seconds,
        "fusions": fusion_counts(optimized),
        "int8": {k: qreport[k] for k in ("agreement", "settings", "accuracy_before", "accuracy_after", "samples")},
        "export_parity": report.parity["max_abs_diff"],
        "verify_data": data.description,
        "rows": rows,
    }


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Export figures ({meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, load average before "
        f"{meta['load_before']}; onnxruntime {meta['onnxruntime']}, TensorFlow {meta['tensorflow']}, "
        f"keras {meta['keras']}). Command: `{meta['command']}`",
        "",
        "| model | graph | export s | size | nodes | max abs diff vs Keras | batch-1 p50 ms (default threads) "
        "| batch-1 p50 ms (1 thread) | batch-64 img/s (default) | batch-64 img/s (1 thread) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        seconds = {"fp32": r["export_seconds"], "optimized": r["optimize_seconds"], "int8": r["quantize_seconds"]}
        for kind in ("keras", "fp32", "optimized", "int8"):
            row = r["rows"][kind]
            size = "-" if row["file_bytes"] is None else f"{row['file_bytes'] / 1e6:.2f} MB"
            sec = f"{seconds[kind]:.1f}" if kind in seconds else "-"
            if kind != "fp32" and kind in seconds:
                sec = f"+{sec}"
            label = "Keras predict_on_batch" if kind == "keras" else kind
            one = row.get("batch1_p50_ms_1thread")
            one_tp = row.get("batch64_images_per_s_1thread")
            lines.append(
                f"| {r['model']} | {label} | {sec} | {size} | {row['nodes'] or '-'} | "
                f"{row['max_abs_diff_vs_keras']:.2g} | {row['batch1_p50_ms_default']:.3f} | "
                f"{'-' if one is None else f'{one:.3f}'} | {row['batch64_images_per_s_default']:.0f} | "
                f"{'-' if one_tp is None else f'{one_tp:.0f}'} |"
            )
    lines.append("")
    for r in results:
        q = r["int8"]
        acc = ""
        if q["accuracy_before"] is not None:
            acc = f", accuracy {100 * q['accuracy_before']:.1f}% -> {100 * q['accuracy_after']:.1f}%"
        fused = ", ".join(f"{k} {r['fusions'][k]}" for k in ("LayerNormalization", "Gelu", "Attention"))
        lines.append(
            f"- {r['model']}: INT8 top-1 agreement with fp32 {100 * q['agreement']:.1f}% on {q['samples']} "
            f"images ({r['verify_data']}; settings {q['settings']}){acc}; --optimize fusions: {fused}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-model", type=Path, default=None, help="a trained vit_mnist .keras (else trained here)")
    parser.add_argument("--runs", type=int, default=200, help="batch-1 calls per candidate (median)")
    parser.add_argument("--batch-runs", type=int, default=10, help="batch-64 calls per candidate")
    parser.add_argument("--models", default="vit_mnist,vit_tiny_patch16_224")
    parser.add_argument("--tiny-depth", type=int, default=None, help="override vit_tiny's depth (smoke runs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")

    import keras
    import onnxruntime
    import tensorflow as tf

    import keras_vit

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_before": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "onnxruntime": onnxruntime.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "command": "python benchmarks/export_figures.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="export_figures_") as tmp:
        workdir = Path(tmp)
        for name in args.models.split(","):
            if name == "vit_mnist":
                train_seconds: list = []
                path = args.mnist_model or train_mnist(workdir / "vit_mnist.keras", train_seconds)
                verify = "mnist" if _has_mnist() else None
            else:
                keras.utils.set_random_seed(0)
                overrides = {"depth": args.tiny_depth} if args.tiny_depth else {}
                path = workdir / f"{name}.keras"
                model = keras_vit.create_model(name, **overrides)
                perturb(model)
                model.save(path)
                verify = None
            results.append(measure_model(name, path, workdir, verify, args.runs, args.batch_runs))
            print(f"measured {name}", file=sys.stderr)
    meta["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(markdown(results, meta))
    print(f"\nLoad average after: {meta['load_after']}.")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


def _has_mnist() -> bool:
    from keras_vit import UserInputError
    from keras_vit.datasets import load_dataset

    try:
        load_dataset("mnist")
        return True
    except UserInputError:
        return False


if __name__ == "__main__":
    sys.exit(main())
