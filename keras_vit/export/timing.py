"""Small, steady latency measurements of onnxruntime sessions (used by --optimize and the benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(call: Callable[[], object], runs: int, warmup: int = 3) -> np.ndarray:
    """Seconds taken by each of ``runs`` calls of ``call`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    out = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        out[i] = time.perf_counter() - start
    return out


def interleaved_median_ms(
    sessions: dict[str, object], feed: np.ndarray, rounds: int = 10, runs_per_round: int = 10
) -> dict[str, float]:
    """Median latency (ms) of each session on ``feed``, runs interleaved round by round.

    Interleaving spreads the load of a busy machine evenly over the candidates being compared.
    """
    times: dict[str, list] = {name: [] for name in sessions}
    calls = {name: (lambda s=s: s.run(None, {"images": feed})) for name, s in sessions.items()}
    for call in calls.values():
        time_calls(call, runs=0, warmup=3)
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].extend(time_calls(call, runs_per_round, warmup=0))
    return {name: float(np.median(values) * 1e3) for name, values in times.items()}
