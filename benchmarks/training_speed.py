"""Training images/s of one side, in its own process: keras-vit on one Keras backend, or timm (PyTorch eager).

Keras fixes its backend at import, so :func:`measure` runs ``python -m benchmarks.training_speed`` once
per backend; the parent interleaves the sides process by process. Both sides train the same
architecture with AdamW and cross-entropy on random images (speed only), after warm-up steps that
include compilation. Prints one JSON line.

``threads=1`` pins the child to one core (CPU affinity) and sets every framework's thread pools to one
thread; ``threads=0`` leaves the defaults (all cores). On a machine shared with other jobs PyTorch's
OpenMP threads spin while they wait for a descheduled sibling, so one thread can be several times
faster there: the parent measures both and keeps each side's best.
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


def _keras_steps(spec_name: str, side: str, batch: int, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np

    from benchmarks.candidates import SPECS

    spec = SPECS[spec_name]
    model = spec.keras_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    jit_compile = KERAS_SIDES[side][1]
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.num_classes, batch).astype("int32")
    start = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(x, y)
    compile_s = time.perf_counter() - start
    times, cpu = _timed(lambda: model.train_on_batch(x, y), steps)
    return {"warmup_s": compile_s, "step_s": times, "cpu_s": cpu, "jit_compile": jit_compile}


def _timm_steps(spec_name: str, batch: int, steps: int, warmup: int) -> dict:
    import numpy as np
    import torch

    from benchmarks.candidates import SPECS

    spec = SPECS[spec_name]
    model = spec.timm_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    cfg = model.patch_embed
    rng = np.random.default_rng(0)
    size = cfg.img_size
    x = torch.from_numpy(rng.standard_normal((batch, cfg.proj.in_channels, *size)).astype("float32"))
    y = torch.from_numpy(rng.integers(0, model.num_classes, batch).astype("int64"))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    times, cpu = _timed(step, steps)
    return {"warmup_s": None, "step_s": times, "cpu_s": cpu, "threads": torch.get_num_threads()}


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
            timeout: float = 3600) -> dict:
    """Run one side in a child process; ``side`` is ``"timm"`` or one of :data:`KERAS_SIDES`."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
    if side != "timm":
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
               "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads)]
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=pin)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _backend(side: str) -> str | None:
    """The framework a side runs on: ``"torch"`` for timm, a Keras side's backend, ``None`` if unknown."""
    return "torch" if side == "timm" else KERAS_SIDES.get(side, (None,))[0]


def _single_thread(side: str) -> None:
    """One thread in the framework's own pools (the parent also pins the process to one core)."""
    backend = _backend(side)
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
    args = parser.parse_args(argv)
    if args.threads == 1:
        _single_thread(args.side)
    if args.side == "timm":
        from keras_vit.testing.timm_reference import import_timm

        import_timm()
        result = _timm_steps(args.spec, args.batch, args.steps, args.warmup)
    else:
        backend = _backend(args.side)
        if backend is None or os.environ.get("KERAS_BACKEND") != backend:
            print(json.dumps({"error": f"unknown side {args.side!r} or KERAS_BACKEND is not its backend"}))
            return 2
        result = _keras_steps(args.spec, args.side, args.batch, args.steps, args.warmup)
    result.update(side=args.side, spec=args.spec, batch=args.batch, threads_setting=args.threads)
    import statistics

    result["images_per_s"] = args.batch / statistics.median(result["step_s"])
    result["images_per_cpu_s"] = args.batch / max(statistics.median(result["cpu_s"]), 1e-9)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
