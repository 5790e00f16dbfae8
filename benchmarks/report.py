"""Ratios, roofline and the Markdown/JSON output of :mod:`benchmarks.run`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

OURS = "keras-vit optimized"
TIMM_FLOAT = ("timm fp32", "timm optimized", "timm optimized-noskip")


def _best(table: dict[str, dict], names, key: str, lowest: bool = True) -> tuple[str, float] | None:
    values = [(n, table[n][key]) for n in names if n in table and table[n].get(key) is not None]
    if not values:
        return None
    return (min if lowest else max)(values, key=lambda item: item[1])


def _paired(ours: dict, theirs: dict, key: str) -> float | None:
    """Median over rounds of the per-round latency ratio (both measured in the same round)."""
    a, b = ours.get(key), theirs.get(key)
    if not a or not b or len(a) != len(b):
        return None
    return float(sorted(x / y for x, y in zip(a, b, strict=True))[len(a) // 2])


def summarize_model(result: dict, batch: int) -> dict[str, Any]:
    """keras-vit's ``--optimize`` file against timm's best float ONNX, per thread count (and INT8 vs INT8)."""
    summary: dict[str, Any] = {}
    for threads, table in result["latency"].items():
        best = _best(table, TIMM_FLOAT, "p50_ms")
        if best is None or OURS not in table:
            continue
        row = {"timm_best": best[0], "batch1_p50_ratio": table[OURS]["p50_ms"] / best[1],
               "batch1_paired_ratio": _paired(table[OURS], table[best[0]], "round_wall_ms")}
        cpu_best = _best(table, TIMM_FLOAT, "cpu_p50_ms")
        if threads == "1" and cpu_best:
            row["batch1_cpu_ratio"] = table[OURS]["cpu_p50_ms"] / cpu_best[1]
            row["batch1_cpu_paired_ratio"] = _paired(table[OURS], table[cpu_best[0]], "round_cpu_ms")
            row["timm_best_cpu"] = cpu_best[0]
        if "keras-vit int8" in table and "timm int8" in table:
            row["int8_batch1_p50_ratio"] = table["keras-vit int8"]["p50_ms"] / table["timm int8"]["p50_ms"]
        throughput = result["throughput"].get(threads, {})
        best_tp = _best(throughput, TIMM_FLOAT, "images_per_s", lowest=False)
        if best_tp and OURS in throughput:
            row[f"batch{batch}_images_per_s_ratio"] = throughput[OURS]["images_per_s"] / best_tp[1]
            row[f"batch{batch}_timm_best"] = best_tp[0]
            if threads == "1":
                best_cpu_tp = _best(throughput, TIMM_FLOAT, "cpu_images_per_s", lowest=False)
                row[f"batch{batch}_cpu_images_per_s_ratio"] = throughput[OURS]["cpu_images_per_s"] / best_cpu_tp[1]
        summary[threads] = row
    nodes = {c["name"]: c["nodes_in_session"] for c in result["candidates"]}
    summary["nodes_in_session"] = {"ours": nodes.get(OURS), "timm_min": min(nodes[n] for n in TIMM_FLOAT if n in nodes)}
    return summary


def add_roofline(results: dict) -> None:
    """Achieved GFLOP/s (nominal forward FLOPs / median latency) and its fraction of the MatMul GFLOP/s."""
    for model in results["models"].values():
        flops = model["info"]["flops"]
        model["roofline"] = {}
        for threads, table in model["latency"].items():
            peak = results["roofline"].get(threads)
            if peak is None:
                continue
            rows = {}
            for name, row in table.items():
                achieved = flops / (row["p50_ms"] * 1e-3) / 1e9
                entry = {"gflops": achieved, "fraction": achieved / peak["gflops"]}
                if "cpu_gflops" in peak:
                    cpu_achieved = flops / (row["cpu_p50_ms"] * 1e-3) / 1e9
                    entry.update(cpu_gflops=cpu_achieved, cpu_fraction=cpu_achieved / peak["cpu_gflops"])
                rows[name] = entry
            model["roofline"][threads] = rows


def _f(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def _interval(entry: dict, threads: str) -> str:
    """``", 90 % interval a-b; whole-run time ratio c"`` for a paired entry, as far as it has them."""
    low_high = entry.get("interval", {}).get(threads)
    time_ratio = entry.get("time_ratio", {}).get(threads)
    text = f", 90 % interval {low_high[0]:.2f}-{low_high[1]:.2f}" if low_high else ""
    return text + (f"; whole-run time ratio {time_ratio:.2f}x" if time_ratio else "")


def _ms(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown(results: dict) -> str:
    """The whole report as Markdown."""
    env = results["environment"]
    threads = [str(t) for t in results["settings"]["threads"]]
    batch = results["settings"]["batch"]
    lines = [
        "## keras-vit vs timm on onnxruntime (CPU)",
        "",
        f"`{results['command']}` on {env['processor']} ({env['cpus']} cores; load average "
        f"{env['load_average_start'][0]:.1f} at the start, {env.get('load_average_end', [float('nan')])[0]:.1f} "
        f"at the end), onnxruntime {env['onnxruntime']}, keras {env['keras']}, tf2onnx {env['tf2onnx']}, "
        f"torch {env['torch']}, timm {env['timm']}. Medians of interleaved runs; \"CPU\" is the thread's CPU "
        "time at 1 thread (leaves out waiting for a core on this shared machine).",
        "",
        f"MatMul roofline ({next(iter(results['roofline'].values()))['size']}² float32, onnxruntime): " + ", ".join(
            f"{t} thread(s) {results['roofline'][t]['gflops']:.0f} GFLOP/s"
            + (f" ({results['roofline'][t]['cpu_gflops']:.0f} per CPU second)" if "cpu_gflops" in results['roofline'][t]
               else "") for t in threads if t in results["roofline"]),
        "",
    ]
    for name, model in results["models"].items():
        lines += _model_table(name, model, threads, batch)
    if results.get("training"):
        lines += _training_table(results["training"])
        run = results.get("training_run")
        if run:  # measured later than the inference figures, by --training-only
            load = run.get("load_average_end", [float("nan")])[0]
            lines += [f"Training figures re-measured separately: `{run['command']}` (load average {load:.1f} "
                      f"at the end, {run['seconds'] / 60:.0f} min).", ""]
    return "\n".join(lines) + "\n"


def _model_table(name: str, model: dict, threads: list[str], batch: int) -> list[str]:
    info = model["info"]
    lines = [f"### {name} ({info['flops'] / 1e9:.3g} GFLOP per image; same weights on both sides, "
             f"Keras vs timm logits differ by {info['keras_vs_timm_max_abs_diff']:.1e})", ""]
    header = ["candidate", "nodes file / run", "fused Attn/LN/GELU", "parity"]
    for t in threads:
        header += [f"b1 p50 ms {t}t", f"b1 p90 ms {t}t"]
        if t == "1":
            header += ["b1 CPU ms 1t", "roofline 1t"]
    header += [f"b{batch} img/s {t}t" for t in threads]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in model["candidates"]:
        fused = c["fused_ops"]
        if c["max_abs_diff"] is not None:
            parity = f"{c['max_abs_diff']:.1e}"
        elif c["top1_agreement"] is not None:
            parity = f"top-1 {100 * c['top1_agreement']:.0f} %"
        else:
            parity = "n/a"
        attn = fused.get("Attention", 0) + fused.get("QAttention", 0)
        row = [c["name"], f"{c['nodes']} / {c['nodes_in_session']}",
               f"{attn}/{fused.get('LayerNormalization', 0)}/{fused.get('Gelu', 0)}", parity]
        for t in threads:
            lat = model["latency"].get(t, {}).get(c["name"], {})
            row += [_ms(lat.get("p50_ms")), _ms(lat.get("p90_ms"))]
            if t == "1":
                roof = model.get("roofline", {}).get("1", {}).get(c["name"], {})
                row += [_ms(lat.get("cpu_p50_ms")), _f(100 * roof["cpu_fraction"], 0, " %") if roof else "n/a"]
        row += [_f(model["throughput"].get(t, {}).get(c["name"], {}).get("images_per_s"), 1) for t in threads]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for t, row in model["summary"].items():
        if not t.isdigit():
            continue
        parts = [f"batch-1 latency {row['batch1_p50_ratio']:.2f}x timm's best ({row['timm_best']}; "
                 f"{_f(row.get('batch1_paired_ratio'))}x paired by round)"]
        if "batch1_cpu_ratio" in row:
            parts.append(f"CPU time {row['batch1_cpu_ratio']:.2f}x ({_f(row.get('batch1_cpu_paired_ratio'))}x paired)")
        key = f"batch{batch}_images_per_s_ratio"
        if key in row:
            parts.append(f"batch-{batch} images/s {row[key]:.2f}x")
        if f"batch{batch}_cpu_images_per_s_ratio" in row:
            parts.append(f"(per CPU second {row[f'batch{batch}_cpu_images_per_s_ratio']:.2f}x)")
        if "int8_batch1_p50_ratio" in row:
            parts.append(f"INT8 batch-1 {row['int8_batch1_p50_ratio']:.2f}x timm INT8")
        lines.append(f"- {t} thread(s), keras-vit optimized: " + ", ".join(parts))
    lines.append("")
    return lines


def _training_table(training: dict) -> list[str]:
    sides = sorted({side for t in training.values() for side in t["images_per_s"]}, key=lambda s: (s == "timm", s))
    names = {"tensorflow": "Keras TF (XLA)", "jax": "Keras JAX (jit)", "torch": "Keras torch (compile)",
             "torch-eager": "Keras torch (eager)", "timm": "timm eager"}
    lines = ["### Training images/s (AdamW, random images; medians of interleaved runs; per CPU second in brackets;",
             "each side at its faster thread setting, \"1t\" = pinned to one core)", "",
             "| model | batch | " + " | ".join(names.get(s, s) for s in sides) + " | best Keras / timm |",
             "|" + "---|" * (len(sides) + 3)]
    for name, t in training.items():
        ips, cpu = t["images_per_s"], t.get("images_per_cpu_s", {})
        keras_best = max((v for s, v in ips.items() if s != "timm" and v), default=None)
        ratio = keras_best / ips["timm"] if keras_best and ips.get("timm") else None
        threads = t.get("best_threads", {})
        cells = [f"{_f(ips.get(s), 1)} ({_f(cpu.get(s), 1)}){' 1t' if threads.get(s) == '1' else ''}" for s in sides]
        lines.append(f"| {name} | {t['batch']} | " + " | ".join(cells) + f" | {_f(ratio)}x |")
    for name, t in training.items():
        for side, entry in t.get("paired", {}).items():
            for threads, ratio in entry["ratio"].items():
                if ratio is None:
                    continue
                n = sum(len(r.get("pair_speed_ratios", [])) for r in entry["runs"][threads])
                lines.append(
                    f"\n{name}, {names.get(side, side)} and timm alternating steps in one process "
                    f"(threads={'1' if threads == '1' else 'default'}): **{ratio:.2f}x** timm "
                    f"(median of {n} per-pair time ratios{_interval(entry, threads)}; "
                    f"{_f(entry['images_per_s'][threads], 1)} vs {_f(entry['timm_images_per_s'][threads], 1)} "
                    f"images/s by each side's median step)")
    errors = [f"{name}/{side}/threads={threads}: {r['error']}" for name, t in training.items()
              for side, by_threads in t["runs"].items() for threads, rs in by_threads.items()
              for r in rs if "error" in r]
    errors += [f"{name}/{side}+timm paired/threads={threads}: {r['error']}" for name, t in training.items()
               for side, entry in t.get("paired", {}).items() for threads, rs in entry["runs"].items()
               for r in rs if "error" in r]
    if errors:
        lines += ["", "Failed runs: " + "; ".join(errors)]
    return lines + [""]


def write(results: dict, folder: Path) -> list[Path]:
    """``results.json`` and ``results.md`` in ``folder``, each written to a temporary file and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for filename, text in (("results.json", json.dumps(results, indent=1, default=float)),
                           ("results.md", markdown(results))):
        target = folder / filename
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{filename}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        out.append(target)
    return out
