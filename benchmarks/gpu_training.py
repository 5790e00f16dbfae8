"""Training images/s on a GPU with mixed precision: keras-vit on each Keras backend vs timm with AMP.

Not a test. Each side runs in its own process (:func:`benchmarks.training_speed.measure`), the sides
interleaved repeat by repeat; figures are medians of the timed steps. A backend that is not installed
(TensorFlow is often missing on GPU boxes that carry only PyTorch and JAX) is reported as an error row,
not a failure. Also records which onnxruntime execution providers are there and, when the CUDA one is
and ``--onnx`` names files, their batch-1 latency and batch-64 images/s on it. From the repository root::

    python -m benchmarks.gpu_training --model vit_base_patch16_224 --batch 128 --precision bfloat16 \\
        --sides timm,jax,torch-eager,torch --output-dir OUT

Writes ``gpu_training.json`` and ``gpu_training.md`` into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.training_speed import KERAS_SIDES, PRECISIONS, measure  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_training", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="a spec of benchmarks.specs")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=PRECISIONS, default="bfloat16")
    parser.add_argument("--sides", default="timm,jax,torch-eager,torch,tensorflow",
                        help=f"timm and Keras sides ({', '.join(KERAS_SIDES)})")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per side")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run before it is given up")
    parser.add_argument("--onnx", default="", help="comma-separated ONNX files to time on onnxruntime's CUDA EP")
    parser.add_argument("--output-dir", default=".")
    args = parser.parse_args(argv)
    args.sides = [s for s in args.sides.split(",") if s]
    args.onnx = [p for p in args.onnx.split(",") if p]
    return args


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per side: median images/s over its runs, the warm-up (compile) seconds, the device, or the error."""
    out = {}
    for side, results in runs.items():
        good = [r for r in results if "images_per_s" in r]
        if not good:
            out[side] = {"error": results[-1].get("error", "no result") if results else "not run"}
            continue
        out[side] = {
            "images_per_s": statistics.median(r["images_per_s"] for r in good),
            "warmup_s": good[0].get("warmup_s"),
            "device": good[0].get("device"),
        }
    reference = out.get("timm", {}).get("images_per_s")
    for row in out.values():
        if reference and "images_per_s" in row:
            row["vs_timm"] = row["images_per_s"] / reference
    return out


def onnxruntime_cuda(paths: list[str], batch: int = 64, rounds: int = 20) -> dict:
    """onnxruntime's providers; with CUDA among them, batch-1 p50 latency and batch-``batch`` images/s."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as err:
        return {"error": f"onnxruntime not importable: {err}"}
    result = {"version": ort.__version__, "providers": ort.get_available_providers(), "models": {}}
    if "CUDAExecutionProvider" not in result["providers"]:
        result["note"] = "no CUDAExecutionProvider in this onnxruntime build (the GPU build is onnxruntime-gpu)"
        return result
    for path in paths:
        try:
            session = ort.InferenceSession(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            feed = session.get_inputs()[0]
            shape = [d if isinstance(d, int) else 1 for d in feed.shape]
            figures = {}
            for n in (1, batch):
                x = np.random.default_rng(0).standard_normal([n, *shape[1:]]).astype("float32")
                for _ in range(3):
                    session.run(None, {feed.name: x})
                times = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    session.run(None, {feed.name: x})
                    times.append(time.perf_counter() - start)
                figures[str(n)] = {"p50_ms": 1e3 * statistics.median(times),
                                   "images_per_s": n / statistics.median(times)}
            result["models"][Path(path).name] = figures
        except Exception as err:  # one bad file must not hide the others
            result["models"][Path(path).name] = {"error": f"{type(err).__name__}: {err}"[:300]}
    return result


def markdown(results: dict) -> str:
    """The training table (and the onnxruntime line) as Markdown."""
    s = results["settings"]
    lines = [f"Training `{s['model']}`, batch {s['batch']}, {s['precision']}, median of {s['steps']} steps "
             f"x {s['repeats']} run(s); `{results['command']}`", "",
             "| side | device | images/s | vs timm | warm-up s |", "| --- | --- | ---: | ---: | ---: |"]
    for side, row in results["summary"].items():
        if "error" in row:
            lines.append(f"| {side} | - | error: {row['error'][:120]} | | |")
            continue
        ratio = f"{row['vs_timm']:.2f}x" if "vs_timm" in row else "-"
        warm = f"{row['warmup_s']:.1f}" if row.get("warmup_s") is not None else "-"
        lines.append(f"| {side} | {row['device']} | {row['images_per_s']:.0f} | {ratio} | {warm} |")
    ort_info = results.get("onnxruntime", {})
    if ort_info:
        lines += ["", f"onnxruntime {ort_info.get('version', '?')}: providers {ort_info.get('providers')}"
                  + (f"; {ort_info['note']}" if "note" in ort_info else "")]
        for name, figures in ort_info.get("models", {}).items():
            lines.append(f"- {name}: {json.dumps(figures)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    runs: dict[str, list[dict]] = {side: [] for side in args.sides}
    for repeat in range(args.repeats):
        for side in args.sides:
            print(f"[{args.model}] {side}, batch {args.batch}, {args.precision} (run {repeat + 1}/{args.repeats})",
                  file=sys.stderr, flush=True)
            result = measure(side, args.model, args.batch, args.steps, args.warmup, threads=0,
                             timeout=args.timeout, precision=args.precision)
            print(f"    {json.dumps({k: v for k, v in result.items() if k not in ('step_s', 'cpu_s')})}",
                  file=sys.stderr, flush=True)
            runs[side].append(result)
            _write(gather_results(args, argv, runs, started, {}), Path(args.output_dir))  # a killed run keeps these
    final = gather_results(args, argv, runs, started, onnxruntime_cuda(args.onnx))
    _write(final, Path(args.output_dir))
    print(markdown(final))
    return 0


def gather_results(args: argparse.Namespace, argv: list[str] | None, runs: dict, started: float,
                   ort_info: dict) -> dict:
    """Everything measured so far, with the command and settings that produced it."""
    command = "python -m benchmarks.gpu_training " + " ".join(argv if argv is not None else sys.argv[1:])
    return {"command": command, "settings": {k: v for k, v in vars(args).items() if k != "output_dir"},
            "host": platform.node(), "runs": runs, "summary": summarize(runs), "onnxruntime": ort_info,
            "seconds": time.time() - started}


def _write(results: dict, out: Path) -> None:
    """``gpu_training.json`` and ``.md`` in ``out``, each through a temporary file."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_training.json", json.dumps(results, indent=1)), ("gpu_training.md", markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


if __name__ == "__main__":
    sys.exit(main())
