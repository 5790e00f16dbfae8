"""Interleaved timing of several candidates on a busy machine, and the machine's matmul speed.

Every candidate runs a few calls per round, round after round, so that load from other processes falls
on all of them alike; figures are medians over all calls. With one onnxruntime thread the work runs
on the calling thread, so its CPU time (``time.thread_time``) is recorded too: it leaves out the time
the thread waited for a core, which on a shared machine is most of the noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, runs: int, warmup: int = 2,
                seed: int = 0) -> dict[str, dict]:
    """Time each call ``rounds * runs`` times, interleaved in a new random order every round.

    Returns ``{name: {"wall": s[], "cpu": s[], "round_wall": s[], "round_cpu": s[]}}``; the ``round_*``
    arrays hold each round's median, for ratios of candidates measured close together in time.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples = {name: {"wall": [], "cpu": [], "round_wall": [], "round_cpu": []} for name in calls}
    order = list(calls)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            call, wall_times, cpu_times = calls[name], [], []
            for _ in range(runs):
                wall, cpu = time.perf_counter(), time.thread_time()
                call()
                cpu_times.append(time.thread_time() - cpu)
                wall_times.append(time.perf_counter() - wall)
            samples[name]["wall"] += wall_times
            samples[name]["cpu"] += cpu_times
            samples[name]["round_wall"].append(float(np.median(wall_times)))
            samples[name]["round_cpu"].append(float(np.median(cpu_times)))
    return {name: {k: np.asarray(v) for k, v in s.items()} for name, s in samples.items()}


def paired_ratio(a: dict[str, np.ndarray], b: dict[str, np.ndarray], key: str = "round_wall") -> float:
    """Median over rounds of ``a``'s round median / ``b``'s: load that drifts between rounds cancels out."""
    return float(np.median(a[key] / b[key]))


def summarize(times: dict[str, np.ndarray], batch: int) -> dict[str, float]:
    """p50/p90 wall latency (ms), CPU p50 (ms), images/s from the wall median."""
    wall, cpu = times["wall"], times["cpu"]
    return {
        "round_wall_ms": [float(v * 1e3) for v in times["round_wall"]],
        "round_cpu_ms": [float(v * 1e3) for v in times["round_cpu"]],
        "p50_ms": float(np.median(wall) * 1e3),
        "p90_ms": float(np.percentile(wall, 90) * 1e3),
        "cpu_p50_ms": float(np.median(cpu) * 1e3),
        "images_per_s": float(batch / np.median(wall)),
        "cpu_images_per_s": float(batch / max(np.median(cpu), 1e-12)),
        "samples": int(len(wall)),
    }


def ort_session(path_or_bytes, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads: the library's one set-up."""
    from keras_vit.export.verify import ort_session as library_session

    return library_session(path_or_bytes, threads=threads)


def matmul_gflops(threads: int, size: int = 2048, rounds: int = 5) -> dict[str, float]:
    """GFLOP/s of one ``size x size`` float32 MatMul in onnxruntime (MLAS, the kernels the models use)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size)).astype("float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort_session(model.SerializeToString(), threads)
    x = rng.standard_normal((size, size)).astype("float32")
    times = interleaved({"matmul": lambda: session.run(None, {"x": x})}, rounds=rounds, runs=1, warmup=1)["matmul"]
    flops = 2.0 * size**3
    out = {"threads": threads, "size": size, "gflops": float(flops / np.median(times["wall"]) / 1e9)}
    if threads == 1:
        out["cpu_gflops"] = float(flops / np.median(times["cpu"]) / 1e9)
    return out


def vit_forward_flops(image_size: int, patch_size: int, channels: int, dim: int, depth: int, mlp_dim: int,
                      num_classes: int) -> float:
    """Multiply-add FLOPs (x2) of one ViT forward pass per image: every matrix product, nothing else."""
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1
    embed = 2 * patches * patch_size * patch_size * channels * dim
    block = 2 * tokens * dim * (3 * dim + dim + 2 * mlp_dim) + 2 * 2 * tokens * tokens * dim
    return float(embed + depth * block + 2 * dim * num_classes)
