"""The edge kit (export/infer.py) on a .tflite: ai-edge-litert only, same CLI, JSON lines, --benchmark, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import IMPORT_BLOCKER, REPO_ROOT

pytest.importorskip("ai_edge_litert")  # a missing dependency fails under CI=true (tests/allowed_skips.py)

import keras  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.export import ExportOptions, export  # noqa: E402
from keras_vit.export.verify import PACKAGED_SAMPLE  # noqa: E402

INFER_PATH = REPO_ROOT / "export" / "infer.py"
#: Importing any of these fails in the kit's process: a .tflite must run on ai-edge-litert alone.
BLOCKED = ("onnxruntime", "tensorflow", "keras", "jax", "torch", "keras_vit")



@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A float .tflite of an untrained vit_mnist (with softmax output), its Keras model, and raw test digits."""
    root = tmp_path_factory.mktemp("edge_litert")
    keras.utils.set_random_seed(7)
    model = keras_vit.create_model("vit_mnist", depth=2, class_names=[f"d{i}" for i in range(10)])
    path = root / "vit.tflite"
    export(model, path, ExportOptions(format="litert", verify_limit=64))
    with np.load(PACKAGED_SAMPLE, allow_pickle=False) as data:
        digits = data["x_test"][:6]
    np.save(root / "digits.npy", digits)
    (root / "folder").mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(digits[i]).save(root / "folder" / f"digit{i}.png")
    (root / "folder" / "notes.txt").write_text("not an image")
    return {"root": root, "model": path, "keras": model, "digits": digits}


def run_kit(*args: str) -> subprocess.CompletedProcess:
    wrapper = IMPORT_BLOCKER.format(blocked=BLOCKED, script=str(INFER_PATH))
    return subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})


def test_tflite_json_lines_match_keras_without_onnxruntime_or_tensorflow(kit):
    result = run_kit(str(kit["model"]), str(kit["root"] / "digits.npy"), "--json", "--top-k", "10")
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [f"{kit['root'] / 'digits.npy'}[{i}]" for i in range(6)]
    x = (kit["digits"][..., None].astype("float32") / 255.0 - 0.1307) / 0.3081
    reference = keras.ops.convert_to_numpy(keras.ops.softmax(kit["keras"].predict_on_batch(x)))
    for line, row in zip(lines, reference, strict=True):
        got = {item["label"]: item["probability"] for item in line["top_k"]}
        np.testing.assert_allclose([got[f"d{i}"] for i in range(10)], row, atol=1e-4)


def test_tflite_benchmark_json(kit):
    result = run_kit(str(kit["model"]), "--benchmark", "--runs", "5", "--warmup", "1", "--batch-size", "3",
                     "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batch_size"] == 3 and report["threads"] == 1 and report["runs"] == 5
    assert report["latency_ms"]["p50"] > 0


def test_tflite_skipped_inputs_exit_1(kit):
    result = run_kit(str(kit["model"]), str(kit["root"] / "folder"), "--json")
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 2
    assert "skipped" in result.stderr and "notes.txt" in result.stderr


@pytest.mark.parametrize("content", [b"", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40, b"PK\x03\x04 not a model"])
def test_bad_tflite_file_one_line_exit_2(kit, tmp_path, content):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(content)
    result = run_kit(str(bad), str(kit["root"] / "digits.npy"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "broken.tflite" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_provider_option_is_refused_for_tflite(kit):
    result = run_kit(str(kit["model"]), "--benchmark", "--provider", "CUDAExecutionProvider")
    assert result.returncode == 2
    assert "--provider applies to ONNX models" in result.stderr
