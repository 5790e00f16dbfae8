"""keras-vit vs timm, side by side on this machine: onnxruntime inference and training speed.

Not a test. From the repository root::

    python -m benchmarks.run                    # vit_tiny_patch16_224 and vit_mnist, threads 1 and 2
    python -m benchmarks.run --tiny             # a one-block model, seconds (what the tests run)
    python -m benchmarks.run --models vit_mnist --threads 1 --rounds 9 --no-training

Both sides get the same random weights (perturbed timm weights loaded into keras-vit). Candidates are
timed interleaved round by round (see :mod:`benchmarks.timing`); figures are medians. Writes
``results.json`` and ``results.md`` into ``--output-dir`` (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from benchmarks import report as report_mod  # noqa: E402
from benchmarks.timing import interleaved, matmul_gflops, ort_session, summarize, vit_forward_flops  # noqa: E402

DEFAULT_MODELS = ("vit_tiny_patch16_224", "vit_mnist")
DEFAULT_BACKENDS = ("tensorflow", "jax", "torch", "torch-eager")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model specs")
    parser.add_argument("--tiny", action="store_true", help="one tiny model, few runs: checks that it all works")
    parser.add_argument("--threads", default="1,2", help="onnxruntime intra-op thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds at batch 1 (default 25)")
    parser.add_argument("--runs", type=int, default=5, help="calls per candidate per round at batch 1 (default 5)")
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size (default 64)")
    parser.add_argument("--batch-rounds", type=int, default=5, help="interleaved rounds at --batch (default 5)")
    parser.add_argument("--no-training", action="store_true", help="skip the training images/s")
    parser.add_argument("--training-only", action="store_true",
                        help="re-measure only the training images/s; keep the inference figures of "
                             "OUTPUT_DIR/results.json")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help="Keras sides to train: tensorflow (XLA), jax (jit), torch (torch.compile), torch-eager")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps (default 5)")
    parser.add_argument("--train-repeats", type=int, default=2, help="interleaved training runs per side")
    parser.add_argument("--train-threads", default="1,0",
                        help="thread settings tried per side, best kept: 1 = one core, 0 = defaults (default 1,0)")
    parser.add_argument("--train-paired", action="store_true",
                        help="also time each Keras PyTorch side against timm in one process, steps alternated")
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.models = ["tiny"] if args.tiny else [m for m in args.models.split(",") if m]
    args.backends = [b for b in args.backends.split(",") if b]
    args.train_threads = [int(t) for t in args.train_threads.split(",") if t]
    if args.tiny:
        args.rounds, args.runs, args.batch, args.batch_rounds = min(args.rounds, 2), min(args.runs, 3), 4, 1
        args.train_steps, args.train_repeats, args.backends, args.train_threads = 2, 1, ["tensorflow"], [1]
    return args


def environment() -> dict:
    import keras
    import onnxruntime
    import tf2onnx
    import torch

    from keras_vit.testing.timm_reference import import_timm

    return {
        "machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count(),
        "load_average_start": list(os.getloadavg()), "python": platform.python_version(),
        "keras": keras.__version__, "onnxruntime": onnxruntime.__version__, "tf2onnx": tf2onnx.__version__,
        "torch": torch.__version__, "timm": import_timm().__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_candidates(candidates, images_nhwc: np.ndarray, threads: int, rounds: int, runs: int) -> dict[str, dict]:
    """Interleaved latency of every candidate on ``images_nhwc`` (transposed for NCHW files)."""
    from benchmarks.candidates import nchw

    calls = {}
    for candidate in candidates:
        session = ort_session(candidate.path, threads)
        feed = images_nhwc if candidate.layout == "NHWC" else nchw(images_nhwc)
        calls[candidate.name] = (lambda s=session, f=feed: s.run(None, {"images": f}))
    times = interleaved(calls, rounds=rounds, runs=runs)
    return {name: summarize(t, len(images_nhwc)) for name, t in times.items()}


def benchmark_model(name: str, args, workdir: Path, log) -> dict:
    from benchmarks.candidates import build_candidates, int8_agreement, random_images
    from benchmarks.specs import SPECS

    spec = SPECS[name]
    log(f"[{name}] building and exporting both sides")
    candidates, info = build_candidates(spec, workdir / name, log=log)
    model_like = spec.keras_model()
    int8_agreement(candidates, random_images(model_like, 64, seed=2))
    info["flops"] = vit_forward_flops(model_like.image_size[0], model_like.patch_size, model_like.channels,
                                      model_like.hidden_dim, model_like.depth, model_like.mlp_dim,
                                      model_like.num_classes)
    result = {"info": info, "candidates": [c.to_dict() for c in candidates], "latency": {}, "throughput": {}}
    one, many = random_images(model_like, 1, seed=3), random_images(model_like, args.batch, seed=4)
    for threads in args.threads:
        log(f"[{name}] batch 1, {threads} thread(s): {args.rounds} rounds x {args.runs} calls")
        result["latency"][str(threads)] = time_candidates(candidates, one, threads, args.rounds, args.runs)
        log(f"[{name}] batch {args.batch}, {threads} thread(s): {args.batch_rounds} rounds")
        result["throughput"][str(threads)] = time_candidates(candidates, many, threads, args.batch_rounds, 1)
    result["summary"] = report_mod.summarize_model(result, args.batch)
    return result


def benchmark_training(names: list[str], args, log) -> dict:
    """Training images/s per side (Keras backends, timm), each at its best thread setting."""
    from benchmarks.specs import SPECS
    from benchmarks.training_speed import measure

    out = {}
    for name in names:
        spec = SPECS[name]
        sides = [*args.backends, "timm"]
        runs: dict[str, dict[str, list]] = {side: {str(t): [] for t in args.train_threads} for side in sides}
        for repeat in range(args.train_repeats):
            for side in sides:
                for threads in args.train_threads:
                    log(f"[{name}] training, {side}, batch {spec.train_batch}, threads={threads or 'default'} "
                        f"(run {repeat + 1}/{args.train_repeats})")
                    runs[side][str(threads)].append(
                        measure(side, name, spec.train_batch, args.train_steps, warmup=2, threads=threads))
        paired = _paired_runs(name, spec.train_batch, args, log) if args.train_paired else {}
        best = {side: _best_setting(by_threads) for side, by_threads in runs.items()}
        out[name] = {
            "batch": spec.train_batch, "steps": args.train_steps, "runs": runs,
            "images_per_s": {side: b[1] for side, b in best.items()},
            "best_threads": {side: b[0] for side, b in best.items()},
            "images_per_cpu_s": {side: _median_of(runs[side].get(b[0], []), "images_per_cpu_s")
                                 for side, b in best.items()},
        }
        if paired:
            out[name]["paired"] = paired
    return out


def _paired_runs(name: str, batch: int, args, log) -> dict:
    """Per Keras PyTorch side and thread setting: runs alternating its steps with timm's in one process."""
    from benchmarks.training_speed import backend_of, measure

    sides = [side for side in args.backends if backend_of(side) == "torch"]
    paired: dict[str, dict] = {side: {"runs": {str(t): [] for t in args.train_threads}} for side in sides}
    for repeat in range(args.train_repeats):
        for side in sides:
            for threads in args.train_threads:
                log(f"[{name}] training, {side} and timm alternating in one process, threads={threads or 'default'} "
                    f"(run {repeat + 1}/{args.train_repeats})")
                paired[side]["runs"][str(threads)].append(
                    measure(side, name, batch, args.train_steps, warmup=2, threads=threads, paired=True))
    for entry in paired.values():
        entry["ratio"] = {t: _median_of(rs, "paired_ratio") for t, rs in entry["runs"].items()}
        entry["images_per_s"] = {t: _median_of(rs, "images_per_s") for t, rs in entry["runs"].items()}
        entry["timm_images_per_s"] = {t: _median_of(rs, "timm_images_per_s") for t, rs in entry["runs"].items()}
        entry["time_ratio"] = {t: _median_of(rs, "paired_time_ratio") for t, rs in entry["runs"].items()}
        entry["interval"] = {t: _pooled_interval(rs) for t, rs in entry["runs"].items()}
    return paired


def _pooled_interval(runs: list[dict]) -> list[float] | None:
    """A 90 % bootstrap interval of the median per-pair ratio, all runs' pairs pooled."""
    from benchmarks.training_speed import summarize_pairs

    ratios = [x for r in runs for x in r.get("pair_speed_ratios", [])]
    if not ratios:
        return None
    keras_s = [x for r in runs for x in r["step_s"]]
    timm_s = [x for r in runs for x in r["timm_step_s"]]
    return summarize_pairs(ratios, keras_s, timm_s)["paired_ratio_interval"]


def _best_setting(by_threads: dict[str, list]) -> tuple[str | None, float | None]:
    """``(threads setting, median images/s)`` of the faster setting."""
    medians = {t: _median_of(r, "images_per_s") for t, r in by_threads.items()}
    medians = {t: v for t, v in medians.items() if v is not None}
    if not medians:
        return None, None
    threads = max(medians, key=medians.get)
    return threads, medians[threads]


def _median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return float(np.median(values)) if values else None


def _merge_roofline(runs: list[dict]) -> dict:
    """The faster of the measurements (the machine's capability; the slower one met more load)."""
    best = max(runs, key=lambda r: r.get("cpu_gflops", r["gflops"]))
    return {**best, "measurements": runs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.time()
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    if args.training_only:
        return _training_only(args, command, settings, log)
    results = {"command": command, "environment": environment(), "settings": settings}
    size, rounds = (256, 2) if args.tiny else (2048, 5)
    log(f"roofline: {size}^2 float32 MatMul in onnxruntime (measured before and after the models)")
    roofline = {t: [matmul_gflops(t, size=size, rounds=rounds)] for t in args.threads}
    results["models"] = {}
    with tempfile.TemporaryDirectory(prefix="kvit_bench_") as tmp:
        for name in args.models:
            results["models"][name] = benchmark_model(name, args, Path(tmp), log)
    for t in args.threads:
        roofline[t].append(matmul_gflops(t, size=size, rounds=rounds))
    results["roofline"] = {str(t): _merge_roofline(runs) for t, runs in roofline.items()}
    report_mod.add_roofline(results)
    results["training"] = {}
    report_mod.write(results, Path(args.output_dir))  # the inference figures, in case training fails
    if not args.no_training:
        results["training"] = _stamp(benchmark_training(args.models, args, log), command)
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["seconds"] = time.time() - started
    return _publish(results, args, log)


def _training_only(args, command: str, settings: dict, log) -> int:
    """Re-measure the training of ``--models`` in an earlier ``results.json``; everything else stays as it was."""
    import json

    previous = Path(args.output_dir) / "results.json"
    try:
        results = json.loads(previous.read_text())
    except (OSError, ValueError) as err:
        log(f"error: --training-only needs an earlier {previous} to update ({err})")
        return 2
    started = time.time()
    fresh = _stamp(benchmark_training(args.models, args, log), command)
    results["training"] = merge_training(results.get("training", {}), fresh)
    results["training_run"] = {"command": command, "settings": settings, "environment": environment(),
                               "seconds": time.time() - started, "load_average_end": list(os.getloadavg())}
    return _publish(results, args, log)


def _stamp(training: dict, command: str) -> dict:
    """Name the command that measured each side and paired entry (kept through later merges)."""
    for entry in training.values():
        entry["measured_by"] = {side: command for side in entry["runs"]}
        for paired in entry.get("paired", {}).values():
            paired["measured_by"] = command
    return training


PER_SIDE_KEYS = ("runs", "images_per_s", "best_threads", "images_per_cpu_s", "measured_by")


def merge_training(old: dict, new: dict) -> dict:
    """The training entry with ``new``'s measurements merged in per model and side; nothing else is dropped.

    A side measured again replaces that side's figures; the other sides, other models and every paired
    measurement not re-run stay. When a model's batch or step count changed, its unpaired figures from
    the old setting are not comparable and go (its paired ones, whose runs record their own batch, stay).
    """
    merged = {name: dict(entry) for name, entry in old.items()}
    for name, fresh in new.items():
        before = merged.get(name, {})
        same_setting = (before.get("batch"), before.get("steps")) == (fresh.get("batch"), fresh.get("steps"))
        entry = {**fresh}
        for key in PER_SIDE_KEYS:
            entry[key] = {**(before.get(key, {}) if same_setting else {}), **fresh.get(key, {})}
        paired = {**before.get("paired", {}), **fresh.get("paired", {})}
        if paired:
            entry["paired"] = paired
        merged[name] = entry
    return merged


def _publish(results: dict, args, log) -> int:
    """Write results.json and results.md, print the table, say where they went."""
    paths = report_mod.write(results, Path(args.output_dir))
    print(report_mod.markdown(results))
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
