"""``python -m benchmarks.run --tiny`` runs end to end and writes well-formed results (no timing thresholds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ["keras-vit fp32", "keras-vit optimized", "keras-vit fused, all tokens", "keras-vit int8", "timm fp32",
              "timm optimized", "timm optimized-noskip", "timm int8"]


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--output-dir", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), done.stdout


def test_training_only_updates_the_training_part_and_keeps_the_rest(tiny_results, tmp_path):
    results, _, _ = tiny_results
    (tmp_path / "results.json").write_text(json.dumps({**results, "training": {}}))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--training-only",
                           "--output-dir", str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    updated = json.loads((tmp_path / "results.json").read_text())
    assert updated["models"] == results["models"] and updated["roofline"] == results["roofline"]
    assert updated["training"]["tiny"]["images_per_s"]["tensorflow"] > 0
    assert updated["training"]["tiny"]["measured_by"]["timm"] == updated["training_run"]["command"]
    assert updated["training_run"]["command"] == "python -m benchmarks.run --tiny --training-only --output-dir " + str(
        tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "### Training images/s" in markdown and "Training figures re-measured separately" in markdown
    missing = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--training-only",
                              "--output-dir", str(tmp_path / "none")], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "--training-only needs an earlier" in missing.stderr


def test_training_only_merges_by_model_and_side_instead_of_replacing():
    """A later ``--training-only`` run keeps the sides, models and paired figures it did not re-measure."""
    from benchmarks.run import merge_training

    def side(ips):
        return {"runs": {"0": [{"images_per_s": ips}]}, "images_per_s": ips, "best_threads": "0",
                "images_per_cpu_s": ips / 2, "measured_by": f"run {ips}"}

    def entry(batch, sides, paired=None):
        out = {"batch": batch, "steps": 5, **{k: {s: v[k] for s, v in sides.items()} for k in
                                               ("runs", "images_per_s", "best_threads", "images_per_cpu_s",
                                                "measured_by")}}
        return {**out, "paired": paired} if paired else out

    paired = {"torch-eager": {"ratio": {"0": 1.07}, "measured_by": "paired run"}}
    old = {"vit_tiny": entry(32, {"torch": side(20.0), "timm": side(18.0)}, paired), "vit_mnist": entry(128, {})}
    new = {"vit_tiny": entry(32, {"torch": side(21.0)})}
    merged = merge_training(old, new)
    tiny = merged["vit_tiny"]
    assert tiny["images_per_s"] == {"torch": 21.0, "timm": 18.0}
    assert tiny["measured_by"] == {"torch": "run 21.0", "timm": "run 18.0"}
    assert tiny["runs"]["timm"] == {"0": [{"images_per_s": 18.0}]} and tiny["paired"] == paired
    assert merged["vit_mnist"] == old["vit_mnist"]
    assert old["vit_tiny"]["images_per_s"] == {"torch": 20.0, "timm": 18.0}  # the inputs are not modified
    # Another batch size: the old unpaired figures are not comparable and go; the paired ones stay.
    other = merge_training(old, {"vit_tiny": entry(64, {"torch": side(30.0)})})["vit_tiny"]
    assert other["images_per_s"] == {"torch": 30.0} and other["paired"] == paired


def test_json_structure(tiny_results):
    results, _, _ = tiny_results
    assert results["command"].startswith("python -m benchmarks.run --tiny")
    assert set(results["roofline"]) == {"1", "2"} and all(r["gflops"] > 0 for r in results["roofline"].values())
    model = results["models"]["tiny"]
    assert [c["name"] for c in model["candidates"]] == CANDIDATES
    for threads in ("1", "2"):
        assert set(model["latency"][threads]) == set(CANDIDATES)
        assert set(model["throughput"][threads]) == set(CANDIDATES)
        for row in model["latency"][threads].values():
            assert 0 < row["p50_ms"] <= row["p90_ms"] and row["samples"] == 2 * 3
        assert model["summary"][threads]["batch1_p50_ratio"] > 0
    assert model["summary"]["1"]["batch1_cpu_ratio"] > 0
    assert 0 < model["roofline"]["1"]["keras-vit optimized"]["fraction"]
    training = results["training"]["tiny"]
    assert set(training["images_per_s"]) == {"tensorflow", "timm"}
    assert all(v > 0 for v in training["images_per_s"].values()), training["runs"]


def test_candidates_are_verified_and_fused(tiny_results):
    results, _, _ = tiny_results
    model = results["models"]["tiny"]
    by_name = {c["name"]: c for c in model["candidates"]}
    assert model["info"]["keras_vs_timm_max_abs_diff"] <= 1e-4  # same weights on both sides
    for name in CANDIDATES:
        candidate = by_name[name]
        if candidate["kind"] == "int8":
            assert 0 <= candidate["top1_agreement"] <= 1
        else:
            assert candidate["max_abs_diff"] <= 1e-4, name
    ours = by_name["keras-vit optimized"]
    assert ours["fused_ops"]["Attention"] == model["info"]["depth"]
    assert ours["fused_ops"]["SkipLayerNormalization"] == 0
    assert ours["nodes_in_session"] < by_name["keras-vit fp32"]["nodes_in_session"]
    assert ours["nodes_in_session"] <= min(by_name[n]["nodes_in_session"] for n in CANDIDATES[4:7])


def test_markdown_table(tiny_results):
    results, markdown, stdout = tiny_results
    assert markdown.strip() == stdout.strip()
    assert "### tiny" in markdown and "### Training images/s" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| candidate |"))
    columns = header.count("|") - 1
    rows = [line for line in markdown.splitlines() if line.startswith("| keras-vit") or line.startswith("| timm")]
    assert [r.split("|")[1].strip() for r in rows] == CANDIDATES
    assert all(r.count("|") - 1 == columns for r in rows)
    assert "1 thread(s), keras-vit optimized: batch-1 latency" in markdown


@pytest.mark.slow
def test_train_throughput_runs_a_tiny_case(tmp_path):
    """``benchmarks/train_throughput.py`` (the README's per-backend training figures) runs a case end to end."""
    out = tmp_path / "throughput.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--images", "128", "--epochs", "1",
                           "--batch-size", "32", "--cases", "tensorflow:off:1", "--json", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = json.loads(out.read_text())
    assert "error" not in row, row
    assert row["backend"] == "tensorflow" and row["threads"] == 1 and row["images_per_epoch"] == 128
    assert row["images_per_s"] > 0 and row["final_loss"] > 0
    assert "| tensorflow | off | 1 |" in done.stdout


def test_training_speed_sides_and_unknown_side():
    """Each Keras side trains in its own process with its backend and jit setting; a typo is an error."""
    from benchmarks.training_speed import KERAS_SIDES, measure

    assert KERAS_SIDES["torch"] == ("torch", True) and KERAS_SIDES["torch-eager"] == ("torch", False)
    assert "unknown side 'pytorch'" in measure("pytorch", "tiny", 4, 1, 1)["error"]
    result = measure("torch-eager", "tiny", 4, 2, 1, threads=1)
    assert "error" not in result, result
    assert result["jit_compile"] is False and len(result["step_s"]) == 2 and result["images_per_s"] > 0


@pytest.mark.slow
def test_gpu_training_runs_tiny_sides_and_reports_a_missing_backend_as_a_row(tmp_path):
    """The GPU training benchmark (mixed precision, timm AMP) runs end to end on a tiny model on the CPU.

    A side that cannot run (here an unknown one, on a GPU box usually TensorFlow) is an error row, not a crash.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_training", "--model", "tiny", "--batch", "4",
                           "--precision", "bfloat16", "--sides", "timm,torch-eager,nosuchside", "--steps", "2",
                           "--warmup", "1", "--output-dir", str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_training.json").read_text())
    summary = results["summary"]
    assert summary["timm"]["vs_timm"] == 1.0 and summary["timm"]["device"] == "torch on CPU"
    assert summary["torch-eager"]["images_per_s"] > 0 and summary["torch-eager"]["device"] == "torch on CPU"
    assert "unknown side 'nosuchside'" in summary["nosuchside"]["error"]
    assert all(run["precision"] == "bfloat16" for run in results["runs"]["timm"] + results["runs"]["torch-eager"])
    assert "| torch-eager | torch on CPU |" in (tmp_path / "gpu_training.md").read_text()
    assert "providers" in results["onnxruntime"]


@pytest.mark.slow
def test_paired_training_speed_alternates_keras_torch_and_timm_in_one_process():
    """``paired=True``: a Keras PyTorch side and timm step in turn in one process; the ratio is per step pair."""
    from benchmarks.report import _training_table
    from benchmarks.training_speed import measure

    result = measure("torch-eager", "tiny", 4, 3, 1, threads=1, paired=True)
    assert "error" not in result, result
    assert len(result["step_s"]) == len(result["timm_step_s"]) == len(result["pair_speed_ratios"]) == 3
    expected = [t / k for k, t in zip(result["step_s"], result["timm_step_s"], strict=True)]
    assert result["pair_speed_ratios"] == expected and result["paired_ratio"] > 0
    assert result["timm_images_per_s"] > 0 and result["images_per_s"] > 0
    assert "needs a PyTorch side" in measure("jax", "tiny", 4, 1, 1, paired=True)["error"]

    entry = {"runs": {"1": [result]}, "ratio": {"1": result["paired_ratio"]},
             "images_per_s": {"1": result["images_per_s"]}, "timm_images_per_s": {"1": result["timm_images_per_s"]}}
    training = {"tiny": {"batch": 4, "runs": {}, "images_per_s": {"timm": 1.0}, "paired": {"torch-eager": entry}}}
    text = "\n".join(_training_table(training))
    ratio = f"**{result['paired_ratio']:.2f}x**"
    assert f"Keras torch (eager) and timm alternating steps in one process (threads=1): {ratio}" in text
    assert "median of 3 per-pair time ratios" in text


def test_paired_summary_gives_the_median_ratio_an_interval_and_the_whole_run_ratio():
    """``summarize_pairs``: median of the pair ratios, a bootstrap interval around it, summed-time ratio."""
    from benchmarks.report import _training_table
    from benchmarks.training_speed import summarize_pairs

    keras_s, timm_s = [1.0, 2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.2, 1.1, 0.9]
    ratios = [t / k for k, t in zip(keras_s, timm_s, strict=True)]
    summary = summarize_pairs(ratios, keras_s, timm_s)
    assert summary["paired_ratio"] == 1.0
    low, high = summary["paired_ratio_interval"]
    assert 0.5 <= low <= 1.0 <= high <= 1.2
    assert summary["paired_time_ratio"] == sum(timm_s) / sum(keras_s)
    assert summarize_pairs(ratios, keras_s, timm_s) == summary  # seeded: the same numbers, the same interval
    assert summarize_pairs([1.1] * 4, [1.0] * 4, [1.1] * 4)["paired_ratio_interval"] == [1.1, 1.1]

    entry = {"runs": {"0": []}, "ratio": {"0": 1.0}, "images_per_s": {"0": 10.0}, "timm_images_per_s": {"0": 9.0},
             "interval": {"0": [low, high]}, "time_ratio": {"0": summary["paired_time_ratio"]}}
    training = {"tiny": {"batch": 4, "runs": {}, "images_per_s": {"timm": 1.0}, "paired": {"torch": entry}}}
    text = "\n".join(_training_table(training))
    assert f"90 % interval {low:.2f}-{high:.2f}; whole-run time ratio {summary['paired_time_ratio']:.2f}x" in text


@pytest.mark.slow
def test_gpu_fit_runs_on_the_cpu_with_tiny_settings(tmp_path):
    """``benchmarks.gpu_fit`` (fit over the input pipeline vs timm's DataLoader loop) works before a GPU session."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_fit", "--device", "cpu", "--model", "tiny",
                           "--batch", "8", "--steps", "2", "--warmup", "1", "--precision", "float32", "--workers", "0",
                           "--sides", "torch,timm,nosuchside", "--timeout", "600", "--profile",
                           "--output-dir", str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_fit.json").read_text())
    for side in ("torch", "timm"):
        row = results["sides"][side]
        assert row["fit_images_per_s"] > 0 and row["step_images_per_s"] > 0 and len(row["epoch_s"]) == 2, row
        assert Path(row["profile"]).is_file()
    assert results["sides"]["torch"]["device"] == "torch on CPU" and 0 <= results["sides"]["torch"]["input_wait"] <= 1
    assert results["sides"]["nosuchside"] == {"error": "unknown side 'nosuchside'"}
    assert {"gpu", "keras", "torch", "timm"} <= set(results["environment"])
    assert "| torch | torch on CPU |" in (tmp_path / "gpu_fit.md").read_text()
