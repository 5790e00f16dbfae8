"""What users run: ``keras_vit.training.fit`` over its input pipeline against timm's training loop.

Both sides train on the same uint8 images held in host memory, with left-right mirroring and
normalisation, bf16 mixed precision and AdamW:

- Keras (each installed backend): :func:`keras_vit.training.fit` with ``augment="mirror"``: uint8 batches
  cross to the device, augmentation and normalisation run inside the compiled train step.
- timm, as its users run it: a ``DataLoader`` (2 workers, pinned memory, ``non_blocking`` copies),
  mirror + normalisation on the device, autocast bf16, ``torch.optim.AdamW``; eager and ``torch.compile``.

Figures: images/s of a whole epoch after a first (compiling) one (``fit_images_per_s``), and the pure
step with one batch already on the device (``step_images_per_s``), which separates model speed from input
speed. ``--profile`` also keeps a one-step profile per side (torch.profiler's table for PyTorch sides, a
jax.profiler trace folder for JAX). Each side runs in its own process. From the repository root::

    python -m benchmarks.gpu_fit --model vit_base_patch16_224 --batch 128 --steps 30 \\
        --sides jax,torch,tensorflow,timm,timm-compile --output-dir benchmarks/results --profile

``--device cpu --model tiny --steps 2`` checks the script in seconds. Writes ``gpu_fit.json`` and
``gpu_fit.md`` (with the GPU, driver and library versions) into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KERAS_SIDES = ("jax", "torch", "tensorflow")
TIMM_SIDES = ("timm", "timm-compile")


def images(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0):
    """The same ``n`` uint8 images and int labels for every side."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int32)


def keras_side(args: argparse.Namespace) -> dict:
    """``fit`` over the input pipeline, then the pure step; in a process whose KERAS_BACKEND is set."""
    import keras
    import numpy as np

    from benchmarks.specs import SPECS
    from keras_vit.datasets import Dataset
    from keras_vit.presets import create_model
    from keras_vit.training import TrainConfig, _compile, build_optimizer, describe_device, fit, mixed_precision

    keras.utils.set_random_seed(0)
    precision = None if args.precision == "float32" else args.precision
    with mixed_precision(precision):  # a spec of benchmarks.specs, or any preset (Keras sides only)
        model = SPECS[args.model].keras_model() if args.model in SPECS else create_model(args.model)
    height, width, channels = model.input_shape[1:]
    classes = int(model.output_shape[-1])
    x, y = images(args.steps * args.batch, (height, width, channels), classes)
    data = Dataset(x, y, x[:args.batch], y[:args.batch], [str(i) for i in range(classes)], "synthetic")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, augment=args.augment, validation_split=0.0,
                         checkpoints=False, verbose=0, mixed_precision=precision, warmup_epochs=0.0)
    record = fit(model, data, config)
    epoch_s = record["history"]["epoch_time_s"]
    result = {"device": describe_device(), "epoch_s": epoch_s,
              "fit_images_per_s": len(x) / statistics.median(epoch_s[1:] or epoch_s)}

    trainer = _compile(model, build_optimizer(config, args.steps), config, model.preprocessing, channels, args.augment)
    xb = keras.ops.convert_to_tensor(x[:args.batch])  # on the device, as the step sees it
    yb = keras.ops.convert_to_tensor(np.eye(classes, dtype=np.float32)[y[:args.batch]])
    for _ in range(args.warmup):
        trainer.train_on_batch(xb, yb)  # returns the loss as numbers: each step ends synchronised
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_on_batch(xb, yb)
    result["step_s"] = (time.perf_counter() - start) / args.steps
    result["step_images_per_s"] = args.batch / result["step_s"]
    # the share of an epoch not explained by the pure step: waiting on input (and per-epoch overheads)
    result["input_wait"] = max(0.0, 1.0 - result["fit_images_per_s"] / result["step_images_per_s"])
    if args.profile_dir:
        result["profile"] = _profile_keras(trainer, xb, yb, Path(args.profile_dir))
    return result


def _profile_keras(trainer, xb, yb, folder: Path) -> str:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    folder.mkdir(parents=True, exist_ok=True)
    if backend == "jax":
        import jax

        with jax.profiler.trace(str(folder / "jax_trace")):
            trainer.train_on_batch(xb, yb)
        return str(folder / "jax_trace")
    if backend == "torch":
        return _torch_profile(lambda: trainer.train_on_batch(xb, yb), folder / "keras_torch_profile.txt")
    return "no profiler hooked for this backend"


def _torch_profile(step, path: Path) -> str:
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=30))
    return str(path)


def timm_side(args: argparse.Namespace, compiled: bool) -> dict:
    """timm's loop as its users run it: DataLoader, pinned memory, non_blocking copies, AMP bf16, AdamW."""
    import torch

    from benchmarks.specs import SPECS
    from keras_vit.testing.timm_reference import import_timm

    import_timm()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    spec = SPECS[args.model]
    model = spec.timm_model().to(device).train()
    height, width = (model.patch_embed.img_size if hasattr(model, "patch_embed") else (224, 224))
    channels = model.patch_embed.proj.in_channels
    classes = model.num_classes
    x, y = images(args.steps * args.batch, (height, width, channels), classes)
    mean = std = torch.full((1, channels, 1, 1), 0.5 * 255, device=device)  # timm's ViT: 0.5 mean and std
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    forward = torch.compile(model) if compiled else model
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.precision)

    def step(xb, yb):
        xb = xb.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        yb = yb.to(device, non_blocking=True).long()
        flip = torch.rand(xb.shape[0], 1, 1, 1, device=device) < 0.5
        xb = (torch.where(flip, xb.flip(3), xb) - mean) / std
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(forward(xb), yb, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=args.batch,
        shuffle=True, drop_last=True, pin_memory=device.type == "cuda", num_workers=args.workers,
        persistent_workers=args.workers > 0)
    epoch_s = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            step(xb, yb)
        sync()
        epoch_s.append(time.perf_counter() - start)
    result = {"device": str(torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"), "epoch_s": epoch_s,
              "fit_images_per_s": len(x) / statistics.median(epoch_s[1:] or epoch_s)}
    xb, yb = torch.from_numpy(x[:args.batch]).to(device), torch.from_numpy(y[:args.batch]).to(device)
    for _ in range(args.warmup):
        step(xb, yb)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(xb, yb)
    sync()
    result["step_s"] = (time.perf_counter() - start) / args.steps
    result["step_images_per_s"] = args.batch / result["step_s"]
    if args.profile_dir:
        name = "timm_compile_profile.txt" if compiled else "timm_profile.txt"
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        result["profile"] = _torch_profile(lambda: step(xb, yb), Path(args.profile_dir) / name)
    return result


def run_side(side: str, args: argparse.Namespace, argv: list[str]) -> dict:
    """One side in a child process (its own backend, no state shared); an error becomes a row."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    if side in KERAS_SIDES:
        env["KERAS_BACKEND"] = side
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "benchmarks.gpu_fit", *argv, "--child", side]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:300]}
    return json.loads(lines[-1][len("RESULT "):])


def environment() -> dict:
    """GPU, driver and library versions."""
    info: dict = {"python": platform.python_version(), "host": platform.node()}
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=30).stdout.strip() or "none"
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = "none (no nvidia-smi)"
    for name in ("keras", "jax", "jaxlib", "torch", "timm", "tensorflow", "numpy"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception as err:  # absent or broken: say so, it is part of the result
            info[name] = f"absent ({type(err).__name__})"
    return info


def markdown(results: dict) -> str:
    s = results["settings"]
    timm = results["sides"].get("timm", {})
    lines = [f"`fit` over the input pipeline vs timm's loop: `{s['model']}`, batch {s['batch']}, {s['precision']}, "
             f"{s['steps']} steps an epoch, mirror + normalisation on the device; `{results['command']}`", "",
             f"Environment: {json.dumps(results['environment'])}", "",
             "| side | device | fit images/s | vs timm eager | pure step images/s | vs timm eager | input wait |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for side, row in results["sides"].items():
        if "error" in row:
            lines.append(f"| {side} | - | error: {row['error'][:150]} | | | | |")
            continue
        ratios = [f"{row[k] / timm[k]:.2f}x" if timm.get(k) else "-" for k in ("fit_images_per_s", "step_images_per_s")]
        lines.append(f"| {side} | {row['device']} | {row['fit_images_per_s']:.0f} | {ratios[0]} | "
                     f"{row['step_images_per_s']:.0f} | {ratios[1]} | {row.get('input_wait', 0):.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="a spec of benchmarks.specs")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch, and timed pure steps")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the fit (the first compiles)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--augment", default="mirror", help="the Keras sides' policy (timm: mirror)")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--sides", default="jax,torch,tensorflow,timm,timm-compile")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--workers", type=int, default=2, help="timm's DataLoader workers")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per side")
    parser.add_argument("--profile", action="store_true", help="keep a one-step profile per side")
    parser.add_argument("--output-dir", default=".")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = keras_side(args) if args.child in KERAS_SIDES else timm_side(args, args.child == "timm-compile")
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    child_argv = [a for a in argv if a != "--profile"]
    if args.profile:
        child_argv += ["--profile-dir", str(out / "gpu_fit_profiles")]
    results = {"command": "python -m benchmarks.gpu_fit " + " ".join(argv), "environment": environment(),
               "settings": {k: v for k, v in vars(args).items() if k not in ("child", "profile_dir")}, "sides": {}}
    for side in [s for s in args.sides.split(",") if s]:
        print(f"[gpu_fit] {side}", file=sys.stderr, flush=True)
        known = side in KERAS_SIDES + TIMM_SIDES
        results["sides"][side] = run_side(side, args, child_argv) if known else {"error": f"unknown side {side!r}"}
        print(f"    {json.dumps(results['sides'][side])[:400]}", file=sys.stderr, flush=True)
        for name, text in (("gpu_fit.json", json.dumps(results, indent=1)), ("gpu_fit.md", markdown(results))):
            tmp = out / f".{name}.tmp"  # written after every side: a killed run keeps what it measured
            tmp.write_text(text)
            os.replace(tmp, out / name)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
