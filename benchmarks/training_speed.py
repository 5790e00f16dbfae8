"""Training images/s of one side, in its own process: keras-vit on one Keras backend, or timm (PyTorch eager).

Keras fixes its backend at import, so :func:`measure` runs ``python -m benchmarks.training_speed`` once
per backend; the parent interleaves the sides process by process. Both sides train the same
architecture with AdamW and cross-entropy on random images (speed only), after warm-up steps that
include compilation. Prints one JSON line.

``threads=1`` pins the child to one core (CPU affinity) and sets every framework's thread pools to one
thread; ``threads=0`` leaves the defaults (all cores). On a machine shared with other jobs PyTorch's
OpenMP threads spin while they wait for a descheduled sibling, so one thread can be several times
faster there: the parent measures both and keeps each side's best.

``--paired`` runs a Keras PyTorch side and timm in one process, alternating steps, so that both meet
the same machine load: the per-step-pair ratio is the steadiest comparison this machine allows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Keras sides: side name -> (backend, jit_compile). ``torch`` is ``torch.compile`` (inductor), which
#: needs a C++ compiler; ``torch-eager`` is PyTorch's eager mode, the setting timm is measured in.
KERAS_SIDES = {"tensorflow": ("tensorflow", True), "jax": ("jax", True), "torch": ("torch", True),
               "torch-eager": ("torch", False)}
PRECISIONS = ("float32", "bfloat16", "float16")


def _keras_step(spec_name: str, side: str, batch: int, precision: str):
    """``(step, info)``: one ``train_on_batch`` of the spec's keras-vit model on random images."""
    import keras
    import numpy as np

    from benchmarks.specs import SPECS
    from keras_vit.training import describe_device

    spec = SPECS[spec_name]
    if precision != "float32":
        keras.config.set_dtype_policy(f"mixed_{precision}")  # compile() adds loss scaling for float16
    model = spec.keras_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    jit_compile = KERAS_SIDES[side][1]
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.num_classes, batch).astype("int32")
    return (lambda: model.train_on_batch(x, y)), {"jit_compile": jit_compile, "device": describe_device()}


def _timm_step(spec_name: str, batch: int, precision: str):
    """``(step, info)``: one timm training step in PyTorch eager, on the GPU if there is one.

    ``precision`` other than float32 is AMP (autocast, with a gradient scaler for float16).
    """
    import numpy as np
    import torch

    from benchmarks.specs import SPECS

    spec = SPECS[spec_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = spec.timm_model().train().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device) if precision == "float16" else None
    loss_fn = torch.nn.CrossEntropyLoss()
    cfg = model.patch_embed
    rng = np.random.default_rng(0)
    size = cfg.img_size
    x = torch.from_numpy(rng.standard_normal((batch, cfg.proj.in_channels, *size)).astype("float32")).to(device)
    y = torch.from_numpy(rng.integers(0, model.num_classes, batch).astype("int64")).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()  # Keras' train_on_batch returns host floats, so it waits too
        return loss

    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    return step, {"threads": torch.get_num_threads(), "device": f"torch on {name}"}


def _run_steps(step, steps: int, warmup: int) -> dict:
    """``warmup`` untimed calls (compilation included), then ``steps`` timed ones."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - start
    wall, cpu = _timed(step, steps)
    return {"warmup_s": warmup_s, "step_s": wall, "cpu_s": cpu}


def _paired_steps(spec_name: str, side: str, batch: int, steps: int, warmup: int, precision: str) -> dict:
    """A Keras PyTorch side and timm in ONE process, their steps alternated (K, T, T, K, K, T, ...).

    On a shared machine a process's step time drifts by 20-30 % within a minute, more than the gap
    between the sides; alternating single steps in one process puts both under the same drift, so the
    per-pair time ratio measures the code, not the minute it ran in. Both are PyTorch, so they share one
    thread pool with the same settings.
    """
    keras_step, info = _keras_step(spec_name, side, batch, precision)
    timm_step, timm_info = _timm_step(spec_name, batch, precision)
    result = {**info, **_run_steps(keras_step, 0, warmup)}
    _run_steps(timm_step, 0, warmup)
    keras_s, timm_s, keras_cpu, timm_cpu = [], [], [], []
    for i in range(steps):
        order = ((keras_step, keras_s, keras_cpu), (timm_step, timm_s, timm_cpu))
        for step, wall, cpu in (order if i % 2 == 0 else order[::-1]):
            w, c = _timed(step, 1)
            wall.extend(w)
            cpu.extend(c)
    ratios = [t / k for k, t in zip(keras_s, timm_s, strict=True)]
    result.update(step_s=keras_s, cpu_s=keras_cpu, timm_step_s=timm_s, timm_cpu_s=timm_cpu,
                  timm_threads=timm_info["threads"], pair_speed_ratios=ratios)
    return result


def summarize_pairs(ratios: list[float], keras_s: list[float], timm_s: list[float],
                    resamples: int = 2000, seed: int = 0) -> dict:
    """The paired speed ratio (timm's step time / ours, > 1: ours is faster) and how far to trust it.

    ``paired_ratio`` is the median of the per-pair ratios; ``paired_ratio_interval`` a 90 % bootstrap
    interval of that median (resampling the pairs, seeded, so a rerun on the same numbers agrees);
    ``paired_time_ratio`` the ratio of the summed step times, i.e. of the images/s over the whole run.
    """
    import numpy as np

    values = np.asarray(ratios, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(resamples, values.size), replace=True), axis=1)
    low, high = np.percentile(medians, [5, 95])
    return {"paired_ratio": float(np.median(values)), "paired_ratio_interval": [float(low), float(high)],
            "paired_time_ratio": float(sum(timm_s) / sum(keras_s))}


def _timed(step, steps: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds (all threads) of each of ``steps`` calls."""
    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def measure(side: str, spec_name: str, batch: int, steps: int, warmup: int, threads: int = 0,
            timeout: float = 3600, precision: str = "float32", paired: bool = False) -> dict:
    """Run one side in a child process; ``side`` is ``"timm"`` or one of :data:`KERAS_SIDES`.

    ``precision``: ``float32``, or ``bfloat16`` / ``float16`` mixed precision (Keras' ``mixed_*`` dtype
    policy; autocast for timm). ``paired``: a Keras PyTorch side and timm alternate steps in that one
    process (:func:`_paired_steps`); the result then also holds ``timm_images_per_s`` and ``paired_ratio``.
    """
    if precision not in PRECISIONS:
        return {"error": f"unknown precision {precision!r} ({', '.join(PRECISIONS)})"}
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    if side == "timm":
        env["KERAS_BACKEND"] = "torch"  # keras_vit (imported for the timm helpers) needs a backend; TF may be absent
    else:
        if side not in KERAS_SIDES:
            return {"error": f"unknown side {side!r} (timm, {', '.join(KERAS_SIDES)})"}
        backend, jit_compile = KERAS_SIDES[side]
        if backend == "torch" and jit_compile and not (shutil.which("g++") or shutil.which("c++")):
            return {"error": "torch.compile needs a C++ compiler (g++) on PATH"}
        env["KERAS_BACKEND"] = backend
    pin = None
    if threads == 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                   XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip())
        core = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    command = [sys.executable, "-m", "benchmarks.training_speed", "--side", side, "--spec", spec_name,
               "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads),
               "--precision", precision, *(["--paired"] if paired else [])]
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=pin)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if result is not None and ("error" in result or done.returncode == 0):  # a figure, or the child's own message
        return result
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {done.returncode}: {tail[:300]}"}


def backend_of(side: str) -> str | None:
    """The framework a side runs on: ``"torch"`` for timm, a Keras side's backend, ``None`` if unknown."""
    return "torch" if side == "timm" else KERAS_SIDES.get(side, (None,))[0]


def _single_thread(side: str) -> None:
    """One thread in the framework's own pools (the parent also pins the process to one core)."""
    backend = backend_of(side)
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", required=True, help=f"timm, or a Keras side ({', '.join(KERAS_SIDES)})")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="1: one thread per pool; 0: the defaults")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--paired", action="store_true",
                        help="a Keras PyTorch side and timm in this one process, steps alternated")
    args = parser.parse_args(argv)
    if args.threads == 1:
        _single_thread(args.side)
    if args.side == "timm" or args.paired:
        from keras_vit.testing.timm_reference import import_timm

        import_timm()
    if args.side == "timm":
        step, info = _timm_step(args.spec, args.batch, args.precision)
        result = {**info, **_run_steps(step, args.steps, args.warmup), "warmup_s": None}
    else:
        backend = backend_of(args.side)
        if backend is None or os.environ.get("KERAS_BACKEND") != backend:
            print(json.dumps({"error": f"unknown side {args.side!r} or KERAS_BACKEND is not its backend"}))
            return 2
        if args.paired and backend != "torch":
            print(json.dumps({"error": f"--paired needs a PyTorch side (timm's framework), not {args.side!r}"}))
            return 2
        if args.paired:
            result = _paired_steps(args.spec, args.side, args.batch, args.steps, args.warmup, args.precision)
        else:
            step, info = _keras_step(args.spec, args.side, args.batch, args.precision)
            result = {**info, **_run_steps(step, args.steps, args.warmup)}
    result.update(side=args.side, spec=args.spec, batch=args.batch, threads_setting=args.threads,
                  precision=args.precision)
    import statistics

    result["images_per_s"] = args.batch / statistics.median(result["step_s"])
    result["images_per_cpu_s"] = args.batch / max(statistics.median(result["cpu_s"]), 1e-9)
    if args.paired:
        result["timm_images_per_s"] = args.batch / statistics.median(result["timm_step_s"])
        result.update(summarize_pairs(result["pair_speed_ratios"], result["step_s"], result["timm_step_s"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
