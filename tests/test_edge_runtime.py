"""The edge runtime ``export/infer.py``: no ML framework imports, CLI behaviour, bad input, preprocessing
properties, packaging, and parity with Keras on models exported by ``keras_vit.export.to_onnx``.

Most tests use tiny linear ONNX models built with ``onnx.helper`` (no TensorFlow, fast, and with an exact
numpy reference); the parity tests export a real ``vit_mnist`` once per module.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import IMPORT_BLOCKER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]
INFER_PATH = REPO_ROOT / "export" / "infer.py"
MNIST_PREPROCESSING = {"scale": 1.0 / 255.0, "mean": [0.1307], "std": [0.3081]}
FRAMEWORKS = ("keras", "tensorflow", "jax", "jaxlib", "torch", "tf_keras")


def _load_infer():
    spec = importlib.util.spec_from_file_location("edge_infer_under_test", INFER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


infer = _load_infer()


# --------------------------------------------------------------------------------------------------
# Tiny ONNX models with a numpy reference
# --------------------------------------------------------------------------------------------------


def make_linear_model(
    path: Path,
    height: int = 28,
    width: int = 28,
    channels: int = 1,
    classes: int = 10,
    metadata: dict | None = None,
    input_type: str = "float32",
    layout: str = "NHWC",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``logits = flatten(images) @ W + b`` as an ONNX file; returns ``(W, b)`` (NHWC flatten order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = (rng.normal(size=(height * width * channels, classes)) * 0.05).astype("float32")
    bias = rng.normal(size=classes).astype("float32") * 0.1
    nodes, x = [], "images"
    if input_type == "uint8":
        nodes.append(helper.make_node("Cast", [x], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    if layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [x], ["nhwc"], perm=[0, 2, 3, 1]))
        x = "nhwc"
    nodes += [
        helper.make_node("Reshape", [x, "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    dims = ["batch", height, width, channels] if layout == "NHWC" else ["batch", channels, height, width]
    elem = TensorProto.UINT8 if input_type == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("images", elem, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(np.array([-1, height * width * channels], "int64"), "shape"),
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return weights, bias


def keras_vit_props(height=28, width=28, channels=1, classes=10, preprocessing=None, input_dtype="float32") -> dict:
    """The metadata_props strings the export contract defines."""
    return {
        "class_names": json.dumps([f"class_{i}" for i in range(classes)]),
        "image_size": json.dumps([height, width]),
        "channels": str(channels),
        "preprocessing": json.dumps(MNIST_PREPROCESSING if preprocessing is None else preprocessing),
        "input_dtype": input_dtype,
        "preset": "vit_mnist",
        "keras_vit_version": "0.1.0",
        "opset": "17",
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def reference_probabilities(raw: np.ndarray, weights, bias, scale=1 / 255, mean=0.1307, std=0.3081) -> np.ndarray:
    """What the linear model must output for raw pixels ``(N, H, W[, C])``."""
    x = (raw.astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)
    return softmax(x.reshape(len(raw), -1) @ weights + bias)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A model with keras-vit metadata, its reference weights, and input files of every kind."""
    from PIL import Image

    root = tmp_path_factory.mktemp("edge")
    model = root / "model.onnx"
    weights, bias = make_linear_model(model, metadata=keras_vit_props())
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    folder = root / "images"
    (folder / "nested").mkdir(parents=True)
    for i, digit in enumerate(digits[:4]):
        Image.fromarray(digit).save(folder / f"{i}.png")
    for i, digit in enumerate(digits[4:]):
        Image.fromarray(digit).save(folder / "nested" / f"{i + 4}.bmp")
    (folder / ".hidden.txt").write_text("ignored")
    np.save(root / "digits.npy", digits)
    np.savez(root / "digits.npz", images=digits[:, :, :, None], labels=np.arange(7))
    return {"root": root, "model": model, "weights": weights, "bias": bias, "digits": digits, "folder": folder}


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = infer.main([str(a) for a in argv], prog="infer.py")
    out, err = capsys.readouterr()
    return code, out, err


def parse_text_line(line: str) -> tuple[str, list[tuple[str, float]]]:
    path, answers = line.rsplit(": ", 1)
    pairs = []
    for answer in answers.split(", "):
        label, probability = answer.rsplit(" (", 1)
        pairs.append((label, float(probability.rstrip(")"))))
    return path, pairs


# --------------------------------------------------------------------------------------------------
# (a) Only stdlib, numpy, onnxruntime (and Pillow): proven by running where frameworks cannot import
# --------------------------------------------------------------------------------------------------



def test_runs_where_keras_tensorflow_jax_torch_cannot_be_imported(kit):
    wrapper = IMPORT_BLOCKER.format(blocked=FRAMEWORKS, script=str(INFER_PATH))
    result = subprocess.run(
        [sys.executable, "-c", wrapper, str(kit["model"]), str(kit["folder"]), str(kit["root"] / "digits.npz"),
         "--json", "--top-k", "3"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 14  # 7 images + 7 array rows
    assert "BLOCKED-ATTEMPTS [] LOADED []" in result.stderr


def test_source_imports_only_stdlib_numpy_onnxruntime_pillow():
    tree = ast.parse(INFER_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "__future__"}
    assert third_party == {"numpy", "onnxruntime", "PIL", "ai_edge_litert"}  # ai_edge_litert: .tflite only
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    } | {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert "PIL" not in top_level and "onnxruntime" not in top_level  # both lazy
    assert "ai_edge_litert" not in top_level


# --------------------------------------------------------------------------------------------------
# (b) CLI behaviour
# --------------------------------------------------------------------------------------------------


def test_text_output_for_folders_and_arrays_matches_reference(kit, capsys):
    code, out, err = run_main(capsys, kit["model"], kit["folder"], kit["root"] / "digits.npy", "--top-k", "3")
    assert code == 0 and err == ""
    lines = out.splitlines()
    folder = str(kit["folder"])
    expected_paths = [os.path.join(folder, f"{i}.png") for i in range(4)]
    expected_paths += [os.path.join(folder, "nested", f"{i}.bmp") for i in range(4, 7)]
    expected_paths += [f"{kit['root'] / 'digits.npy'}[{i}]" for i in range(7)]
    parsed = [parse_text_line(line) for line in lines]
    assert [p for p, _ in parsed] == expected_paths
    reference = reference_probabilities(np.concatenate([kit["digits"], kit["digits"]]), kit["weights"], kit["bias"])
    for (_, answers), probs in zip(parsed, reference, strict=True):
        top = np.argsort(-probs)[:3]
        assert [label for label, _ in answers] == [f"class_{i}" for i in top]
        np.testing.assert_allclose([p for _, p in answers], probs[top], atol=6e-5)


def test_options_may_come_anywhere_between_the_inputs(kit, capsys):
    """``infer.py model.onnx --top-k 3 photo.png`` (an option between the model and the inputs) works as
    every Unix tool does, and gives the output of the options-last form."""
    images = sorted(str(p) for p in kit["folder"].glob("*.png"))
    expected = run_main(capsys, kit["model"], *images, "--top-k", "3", "--json")
    assert expected[0] == 0 and len(expected[1].splitlines()) == len(images) == 4
    for argv in ([kit["model"], "--top-k", "3", *images, "--json"],
                 ["--json", kit["model"], images[0], "--top-k", "3", *images[1:]],
                 ["--top-k=3", kit["model"], *images[:2], "--json", *images[2:]]):
        assert run_main(capsys, *argv) == expected, argv


def test_json_lines_schema_and_array_paths(kit, capsys):
    code, out, _ = run_main(capsys, kit["model"], kit["root"] / "digits.npz", "--json", "--top-k", "2")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [f"{kit['root'] / 'digits.npz'}[{i}]" for i in range(7)]
    reference = reference_probabilities(kit["digits"], kit["weights"], kit["bias"])
    for record, probs in zip(records, reference, strict=True):
        assert set(record) == {"path", "top_k"}
        assert len(record["top_k"]) == 2
        assert all(set(entry) == {"label", "probability"} for entry in record["top_k"])
        assert record["top_k"][0]["label"] == f"class_{int(np.argmax(probs))}"
        assert record["top_k"][0]["probability"] == pytest.approx(probs.max(), abs=2e-6)
        assert record["top_k"][0]["probability"] >= record["top_k"][1]["probability"]


def test_top_k_larger_than_classes_is_clamped_and_batch_size_does_not_change_results(kit, capsys):
    results = []
    for batch in ("1", "3", "64"):
        code, out, _ = run_main(capsys, kit["model"], kit["folder"], "--json", "--top-k", "50", "--batch-size", batch)
        assert code == 0
        results.append([json.loads(line) for line in out.splitlines()])
    assert all(len(r["top_k"]) == 10 for r in results[0])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a["path"] == b["path"]
            assert [e["label"] for e in a["top_k"]] == [e["label"] for e in b["top_k"]]
            np.testing.assert_allclose(
                [e["probability"] for e in a["top_k"]], [e["probability"] for e in b["top_k"]], atol=2e-6
            )


def test_skipped_files_are_named_the_rest_is_classified_and_exit_code_is_1(kit, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(kit["digits"][0]).save(folder / "a_good.png")
    Image.fromarray(kit["digits"][1]).save(folder / "z_good.jpg", quality=95)
    (folder / "b_not_an_image.png").write_bytes(b"this is text, not a PNG")
    jpeg = (folder / "z_good.jpg").read_bytes()
    (folder / "c_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "d_empty.png").write_bytes(b"")
    (folder / "e_notes.txt").write_text("labels go here")
    code, out, err = run_main(capsys, kit["model"], folder, "--top-k", "1")
    assert code == 1
    assert [parse_text_line(line)[0] for line in out.splitlines()] == [
        str(folder / "a_good.png"),
        str(folder / "z_good.jpg"),
    ]
    warnings = err.splitlines()
    for name in ("b_not_an_image.png", "c_truncated.jpg", "d_empty.png", "e_notes.txt"):
        assert any(line.startswith(f"infer.py: warning: skipped {folder / name}: ") for line in warnings), name
    assert warnings[-1] == "infer.py: warning: 4 input(s) skipped, 2 classified"
    assert "Traceback" not in err


def test_all_good_inputs_exit_0_with_empty_stderr(kit, capsys):
    code, _, err = run_main(capsys, kit["model"], kit["folder"] / "0.png", kit["folder"] / "nested")
    assert (code, err) == (0, "")


def test_non_finite_rows_of_float_arrays_are_skipped(kit, tmp_path, capsys):
    data = kit["digits"].astype("float64")
    data[2, 5, 5] = np.nan
    data[4, 0, 0] = np.inf
    np.save(tmp_path / "floats.npy", data)
    code, out, err = run_main(capsys, kit["model"], tmp_path / "floats.npy", "--json", "--top-k", "1")
    assert code == 1
    paths = [json.loads(line)["path"] for line in out.splitlines()]
    assert paths == [f"{tmp_path / 'floats.npy'}[{i}]" for i in (0, 1, 3, 5, 6)]
    assert f"skipped {tmp_path / 'floats.npy'}[2]: non-finite pixel values (NaN or inf)" in err
    assert f"skipped {tmp_path / 'floats.npy'}[4]: non-finite pixel values (NaN or inf)" in err


def test_float_arrays_in_unit_range_trigger_a_scaling_warning(kit, tmp_path, capsys):
    np.save(tmp_path / "unit.npy", kit["digits"].astype("float32") / 255.0)
    code, out, err = run_main(capsys, kit["model"], tmp_path / "unit.npy")
    assert code == 0 and len(out.splitlines()) == 7
    assert "float pixel values are all <= 1; arrays are read as raw 0..255 pixels" in err


NOT_ONNX = "not a valid ONNX model ("
NOT_28 = "does not hold 28x28 images; expected (N, 28, 28) or (N, 28, 28, C) with C in 1, 3, 4"
BAD_DTYPE = "are not supported; use uint8 raw pixels or float pixel values on the 0..255 scale"


@pytest.mark.parametrize(
    "argv, message",
    [
        ("{t}/missing.onnx {folder}", "model file not found: {t}/missing.onnx"),
        ("{t} {folder}", "model path is not a file: {t}"),
        ("{t}/garbage.onnx {folder}", "cannot load model {t}/garbage.onnx: " + NOT_ONNX),
        ("{t}/empty.onnx {folder}", "cannot load model {t}/empty.onnx: " + NOT_ONNX),
        ("{t}/half.onnx {folder}", "cannot load model {t}/half.onnx: " + NOT_ONNX),
        ("{model} {t}/shape.npy", "{t}/shape.npy: array of shape (3, 32, 28) " + NOT_28),
        ("{model} {t}/chans.npy", "{t}/chans.npy: array of shape (3, 28, 28, 2) " + NOT_28),
        ("{model} {t}/int64.npy", "{t}/int64.npy: arrays of dtype int64 " + BAD_DTYPE),
        ("{model} {t}/bool.npy", "{t}/bool.npy: arrays of dtype bool " + BAD_DTYPE),
        ("{model} {t}/object.npy", "{t}/object.npy: arrays of dtype object " + BAD_DTYPE),
        ("{model} {t}/truncated.npy", "{t}/truncated.npy: truncated array file (1000 of 2352 data bytes)"),
        ("{model} {t}/junk.npy", "{t}/junk.npy: cannot read array file ("),
        ("{model} {t}/keyed.npz", "{t}/keyed.npz['images']: array of shape (2, 5) " + NOT_28),
        ("{model} {t}/broken.npz", "{t}/broken.npz: cannot read array file ("),
        ("{model} {t}/two.npz", "{t}/two.npz: holds 2 arrays (a, b); choose one with --npz-key NAME"),
        ("{model} {t}/two.npz --npz-key c", "{t}/two.npz: no array named 'c' (it holds a, b)"),
        ("{model} {folder} {t}/nowhere.png", "input not found: {t}/nowhere.png"),
        ("{model}", "give at least one INPUT (image, folder, .npy/.npz), or --benchmark"),
        ("{model} {folder} --benchmark", "--benchmark runs on random images; give no INPUT with it"),
        ("{model} {folder} --top-k 0", "argument --top-k: '0' must be at least 1"),
        ("{model} {folder} --batch-size x", "argument --batch-size: 'x' is not an integer"),
        ("{model} {folder} --provider NoSuchExecutionProvider",
         "execution provider NoSuchExecutionProvider is not available in this onnxruntime build (available: "),
        ("{t}/runtime_fail.onnx {folder}", "{t}/runtime_fail.onnx: onnxruntime failed to run the model ("),
        ("{t}/two_inputs.onnx {folder}",
         "{t}/two_inputs.onnx: the model has 2 inputs (images, extra); expected one image input"),
        ("{t}/bad_meta.onnx {folder}", "{t}/bad_meta.onnx: metadata 'image_size' is not valid JSON ("),
        ("{t}/mismatch.onnx {folder}",
         "{t}/mismatch.onnx: metadata says 32x32x1 images but the graph input is ['batch', 28, 28, 1]"),
        ("{t}/dynamic.onnx {folder}",
         "{t}/dynamic.onnx: the model has no keras-vit image_size/channels metadata and its input shape "
         "['batch', 'h', 'w', 1] does not fix the image size; re-export it with keras_vit.export"),
    ],
)
def test_unusable_model_option_or_array_is_one_line_and_exit_2(kit, bad_files, capsys, argv, message):
    """Nothing is classified (even the good folder listed first), one line on stderr, exit code 2."""
    names = {"t": bad_files, "model": kit["model"], "folder": kit["folder"]}
    code, out, err = run_main(capsys, *(token.format(**names) for token in argv.split()))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("infer.py: error: " + message.format(**names)), err


@pytest.fixture(scope="module")
def bad_files(kit, tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    t = tmp_path_factory.mktemp("bad")
    (t / "garbage.onnx").write_bytes(os.urandom(2048))
    (t / "empty.onnx").write_bytes(b"")
    data = kit["model"].read_bytes()
    (t / "half.onnx").write_bytes(data[: len(data) // 2])
    np.save(t / "shape.npy", np.zeros((3, 32, 28), np.uint8))
    np.save(t / "chans.npy", np.zeros((3, 28, 28, 2), np.uint8))
    np.save(t / "int64.npy", np.zeros((3, 28, 28), np.int64))
    np.save(t / "bool.npy", np.zeros((3, 28, 28), bool))
    np.save(t / "object.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    np.save(t / "truncated.npy", np.zeros((3, 28, 28), np.uint8))
    with open(t / "truncated.npy", "r+b") as fp:
        fp.truncate(128 + 1000)  # 128-byte header, then 1000 of 3*28*28 bytes
    (t / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.savez(t / "keyed.npz", images=np.zeros((2, 5), np.uint8), labels=np.zeros(2))
    (t / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(t / "two.npz", a=np.zeros((1, 28, 28), np.uint8), b=np.zeros((1, 28, 28), np.uint8))
    graph = helper.make_graph(
        [helper.make_node("Add", ["images", "extra"], ["logits"])], "two",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 10]),
         helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["n", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
    )
    two = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    two.ir_version = 8
    onnx.save(two, str(t / "two_inputs.onnx"))
    make_linear_model(t / "bad_meta.onnx", metadata={**keras_vit_props(), "image_size": "28 by 28"})
    make_linear_model(t / "mismatch.onnx", metadata=keras_vit_props(height=32, width=32))
    # loads fine, fails at run time: a Gather over the logits with an out-of-range index
    make_linear_model(t / "runtime_fail.onnx", metadata=keras_vit_props())
    model = onnx.load(str(t / "runtime_fail.onnx"))
    model.graph.node[-1].output[0] = "pre_logits"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(40, 50, dtype="int64"), "picks"))
    model.graph.node.append(helper.make_node("Gather", ["pre_logits", "picks"], ["logits"], axis=1))
    onnx.save(model, str(t / "runtime_fail.onnx"))
    make_linear_model(t / "dynamic.onnx")
    model = onnx.load(str(t / "dynamic.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "h", "w"
    onnx.save(model, str(t / "dynamic.onnx"))
    return t


def test_model_without_metadata_falls_back_to_graph_shape_and_raw_over_255(kit, tmp_path, capsys):
    weights, bias = make_linear_model(tmp_path / "plain.onnx", seed=3)
    code, out, err = run_main(capsys, tmp_path / "plain.onnx", kit["root"] / "digits.npy", "--json", "--top-k", "10")
    assert code == 0
    assert err == (
        f"infer.py: warning: {tmp_path / 'plain.onnx'} has no keras-vit metadata; assuming the graph's input "
        "shape (28x28x1, NHWC), pixels scaled to [0, 1] (raw / 255, no mean/std), class indices as labels\n"
    )
    reference = reference_probabilities(kit["digits"], weights, bias, mean=0.0, std=1.0)
    for line, probs in zip(out.splitlines(), reference, strict=True):
        record = json.loads(line)
        got = {int(e["label"]): e["probability"] for e in record["top_k"]}
        np.testing.assert_allclose([got[i] for i in range(10)], probs, atol=2e-6)


def test_foreign_nchw_model_without_metadata(kit, tmp_path, capsys):
    weights, bias = make_linear_model(tmp_path / "nchw.onnx", 8, 6, 3, classes=4, layout="NCHW", seed=5)
    rgb = np.random.default_rng(2).integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    code, out, err = run_main(capsys, tmp_path / "nchw.onnx", tmp_path / "rgb.npy", "--json", "--top-k", "4")
    assert code == 0 and "graph's input shape (8x6x3, NCHW)" in err
    reference = reference_probabilities(rgb, weights, bias, mean=0.0, std=1.0)
    for line, probs in zip(out.splitlines(), reference, strict=True):
        got = {int(e["label"]): e["probability"] for e in json.loads(line)["top_k"]}
        np.testing.assert_allclose([got[i] for i in range(4)], probs, atol=2e-6)


def test_uint8_model_with_preprocessing_in_graph_gets_raw_pixels(kit, tmp_path, capsys):
    props = keras_vit_props(preprocessing={}, input_dtype="uint8")
    weights, bias = make_linear_model(tmp_path / "raw.onnx", metadata=props, input_type="uint8", seed=4)
    clf = infer.Classifier(tmp_path / "raw.onnx")
    assert (clf.spec.dtype, clf.spec.scale) == ("uint8", None)
    probs = clf.predict(kit["digits"])
    np.testing.assert_allclose(probs, reference_probabilities(kit["digits"], weights, bias, 1.0, 0.0, 1.0), atol=1e-6)


def test_grayscale_and_rgb_inputs_are_converted_to_the_model_channels(kit, tmp_path):
    from PIL import Image

    props = keras_vit_props(32, 32, 3, preprocessing={"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3})
    make_linear_model(tmp_path / "rgb.onnx", 32, 32, 3, metadata=props)
    gray = np.random.default_rng(3).integers(0, 256, size=(32, 32), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.png")
    rgb_clf = infer.Classifier(tmp_path / "rgb.onnx")
    a, b = (rgb_clf.load_image(str(tmp_path / name)) for name in ("gray.png", "rgb.png"))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    np.testing.assert_allclose(a[..., 0], (gray / 255.0 - 0.5) / 0.5, atol=1e-6)
    gray_clf = infer.Classifier(kit["model"])
    c = gray_clf.load_image(str(tmp_path / "rgb.png"))  # 32x32 RGB -> 28x28 grayscale
    assert c.shape == (28, 28, 1) and c.dtype == np.float32


def test_benchmark_text_and_json(kit, capsys):
    code, out, err = run_main(capsys, kit["model"], "--benchmark", "--runs", "20", "--warmup", "2", "--json",
                              "--batch-size", "4", "--threads", "1")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert set(result) == {"model", "batch_size", "threads", "runs", "warmup", "latency_ms", "images_per_s"}
    assert (result["batch_size"], result["threads"], result["runs"], result["warmup"]) == (4, 1, 20, 2)
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert result["images_per_s"] > 0
    code, out, _ = run_main(capsys, kit["model"], "--benchmark", "--runs", "5")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("batch 1, threads default, 5 runs after 10 warm-up")
    assert lines[1].startswith("latency ms: p50 ") and lines[2].startswith("throughput: ")


def test_streaming_reads_no_further_than_the_current_batch(kit, monkeypatch):
    """A generator of 100,000 paths is consumed one batch at a time: memory does not grow with the input."""
    clf = infer.Classifier(kit["model"])
    loads = []
    original = clf.load_image
    monkeypatch.setattr(clf, "load_image", lambda path: loads.append(path) or original(path))
    paths = itertools.repeat(str(kit["folder"] / "0.png"), 100_000)
    predictions = clf.classify_paths(paths, batch_size=8, top_k=1)
    first = list(itertools.islice(predictions, 10))
    assert len(first) == 10 and len(loads) == 16  # two batches of 8, nothing more
    folder_predictions = clf.classify_paths([kit["folder"]], batch_size=3)
    next(folder_predictions)
    assert len(loads) == 16 + 3


def test_python_api(kit):
    clf = infer.Classifier(kit["model"], threads=1)
    assert clf.info.spec.shape == (28, 28, 1)
    assert clf.info.class_names == tuple(f"class_{i}" for i in range(10))
    probs = clf.predict(kit["digits"])
    np.testing.assert_allclose(probs, reference_probabilities(kit["digits"], kit["weights"], kit["bias"]), atol=1e-6)
    single = clf.predict(kit["digits"][0])  # one (H, W) image
    np.testing.assert_allclose(single, probs[:1], atol=1e-7)
    predictions = list(clf.classify_paths([kit["root"] / "digits.npy"], top_k=2))
    assert [p.top_k[0].index for p in predictions] == list(np.argmax(probs, axis=1))
    assert predictions[0].to_json()["top_k"][0] == {
        "label": predictions[0].top_k[0].label, "probability": round(predictions[0].top_k[0].probability, 6)}


# --------------------------------------------------------------------------------------------------
# (c) Preprocessing properties
# --------------------------------------------------------------------------------------------------

SPECS = [
    infer.InputSpec(28, 28, 1, "float32", 1 / 255, (0.1307,), (0.3081,)),
    infer.InputSpec(16, 24, 3, "float32", 1 / 255, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    infer.InputSpec(7, 5, 1, "uint8", None),
    infer.InputSpec(9, 9, 3, "float32", None),
    infer.InputSpec(12, 12, 4, "float16", 1 / 255, (0.5,), (0.5,)),
]
MODES = ["L", "RGB", "RGBA", "P", "I;16", "I;16B", "I", "F", "1", "LA", "CMYK", "YCbCr", "HSV", "LAB", "PA"]


def _bounds(spec):
    if spec.scale is None:
        return np.zeros(spec.channels), np.full(spec.channels, 255.0)
    mean = np.broadcast_to(np.asarray(spec.mean), (spec.channels,))
    std = np.broadcast_to(np.asarray(spec.std), (spec.channels,))
    return (0 - mean) / std, (255 * spec.scale - mean) / std


def _random_image(mode: str, width: int, height: int, rng: np.random.Generator):
    from PIL import Image

    if mode == "I;16" or mode == "I;16B":
        values = rng.integers(0, 65536, size=(height, width)).astype("<u2" if mode == "I;16" else ">u2")
        return Image.frombytes(mode, (width, height), values.tobytes())
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, size=(height, width), dtype=np.int32))
    if mode == "F":
        values = rng.normal(scale=rng.choice([1.0, 300.0, 1e6]), size=(height, width)).astype(np.float32)
        values.flat[rng.integers(0, values.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return Image.fromarray(values)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, size=(height, width)).astype(bool))
    if mode == "P":
        indices = rng.integers(0, 256, size=width * height, dtype=np.uint8)
        image = Image.frombytes("P", (width, height), indices.tobytes())
        image.putpalette(rng.integers(0, 256, size=768, dtype=np.uint8).tobytes())
        if rng.random() < 0.5:
            image.info["transparency"] = int(rng.integers(0, 256))
        return image
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = rng.integers(0, 256, size=(height, width, bands), dtype=np.uint8)
    return Image.frombytes(mode, (width, height), data.tobytes())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    spec=st.sampled_from(SPECS),
    seed=st.integers(0, 2**32 - 1),
)
def test_preprocess_image_never_raises_and_yields_model_shape(mode, width, height, spec, seed):
    image = _random_image(mode, width, height, np.random.default_rng(seed))
    out = infer.preprocess_image(image, spec)
    assert out.shape == spec.shape
    assert out.dtype == np.dtype(spec.dtype)
    values = out.astype(np.float64)
    assert np.isfinite(values).all()
    low, high = _bounds(spec)
    tolerance = 1e-2 if spec.dtype == "float16" else 1e-4
    assert (values >= low - tolerance).all() and (values <= high + tolerance).all()


@settings(max_examples=100, deadline=None)
@given(
    dtype=st.sampled_from(["uint8", "float16", "float32", "float64"]),
    count=st.integers(0, 5),
    channels=st.sampled_from([None, 1, 3, 4]),
    spec=st.sampled_from(SPECS),
    seed=st.integers(0, 2**32 - 1),
)
def test_preprocess_arrays_never_raises_and_yields_model_shape(dtype, count, channels, spec, seed):
    shape = (count, spec.height, spec.width) + (() if channels is None else (channels,))
    raw = (np.random.default_rng(seed).random(shape) * 255).astype(dtype)
    out = infer.preprocess_arrays(raw, spec)
    assert out.shape == (count, *spec.shape)
    assert out.dtype == np.dtype(spec.dtype)
    low, high = _bounds(spec)
    tolerance = 1e-2 if spec.dtype == "float16" else 1e-4
    values = out.astype(np.float64)
    assert (values >= low - tolerance).all() and (values <= high + tolerance).all()


def test_sixteen_bit_images_scale_to_the_8_bit_range():
    from PIL import Image

    spec = infer.InputSpec(2, 2, 1, "float32", None)
    values = np.array([[0, 65535], [257, 32896]], dtype="<u2")
    out = infer.preprocess_image(Image.frombytes("I;16", (2, 2), values.tobytes()), spec)
    np.testing.assert_allclose(out[..., 0], [[0, 255], [1, 128]], atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Packaging: `keras-vit-infer` without a top-level `export` package
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_infer_as_keras_vit_edge_and_no_export_package(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "keras_vit", source / "keras_vit", ignore=ignore)
    shutil.copytree(REPO_ROOT / "export", source / "export", ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        shipped = archive.read("keras_vit_edge/infer.py")
    assert "keras-vit-infer = keras_vit_edge.infer:main" in entry_points
    assert "keras_vit_edge/__init__.py" in names
    assert not [n for n in names if n.startswith("export/")]
    assert shipped == INFER_PATH.read_bytes()


# --------------------------------------------------------------------------------------------------
# (d) Parity on a real model exported by keras_vit.export.to_onnx
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_vit(tmp_path_factory):
    """A small random ``vit_mnist`` exported twice: float input, and raw uint8 input with probabilities."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the parity export runs once, under the TensorFlow backend")
    import keras_vit
    from keras_vit.export import to_onnx

    keras.utils.set_random_seed(0)
    model = keras_vit.create_model("vit_mnist", depth=2, class_names=[f"digit {i}" for i in range(10)])
    root = tmp_path_factory.mktemp("vit")
    to_onnx(model, root / "vit.onnx")
    to_onnx(model, root / "vit_raw.onnx", include_preprocessing=True, include_probabilities=True)
    with np.load(REPO_ROOT / "keras_vit" / "data" / "mnist_sample.npz", allow_pickle=False) as data:
        raw = data["x_test"][:40]
    x = ((raw.astype("float32") / 255.0 - 0.1307) / 0.3081)[..., None]
    logits = np.asarray(model.predict_on_batch(x))
    return {"root": root, "raw": raw, "x": x, "logits": logits}


def test_parity_with_onnxruntime_and_keras(exported_vit):
    import onnxruntime as ort

    clf = infer.Classifier(exported_vit["root"] / "vit.onnx")
    assert clf.info.spec == infer.InputSpec(28, 28, 1, "float32", 1 / 255, (0.1307,), (0.3081,))
    assert clf.info.class_names == tuple(f"digit {i}" for i in range(10))
    model_input = infer.preprocess_arrays(exported_vit["raw"], clf.spec)
    np.testing.assert_allclose(model_input, exported_vit["x"], atol=1e-6)
    logits = clf.run(model_input)
    session = ort.InferenceSession(str(exported_vit["root"] / "vit.onnx"), providers=["CPUExecutionProvider"])
    (direct,) = session.run(["logits"], {"images": exported_vit["x"]})
    assert np.abs(logits - direct).max() <= 1e-4
    assert np.abs(logits - exported_vit["logits"]).max() <= 1e-4


def test_png_files_through_the_cli_match_keras(exported_vit, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "digits"
    folder.mkdir()
    for i, digit in enumerate(exported_vit["raw"]):
        Image.fromarray(digit).save(folder / f"{i:03d}.png")
    expected = softmax(exported_vit["logits"])
    for model_name in ("vit.onnx", "vit_raw.onnx"):
        code, out, err = run_main(capsys, exported_vit["root"] / model_name, folder, "--json", "--top-k", "10",
                                  "--batch-size", "16")
        assert code == 0 and err == ""
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["path"] for r in records] == [str(folder / f"{i:03d}.png") for i in range(40)]
        for record, probs in zip(records, expected, strict=True):
            got = {e["label"]: e["probability"] for e in record["top_k"]}
            np.testing.assert_allclose([got[f"digit {i}"] for i in range(10)], probs, atol=1e-4)


def test_raw_pixel_export_uses_the_graph_probabilities(exported_vit):
    clf = infer.Classifier(exported_vit["root"] / "vit_raw.onnx")
    assert (clf.spec.dtype, clf.spec.scale, clf.info.probabilities_name) == ("uint8", None, "probabilities")
    np.testing.assert_allclose(clf.predict(exported_vit["raw"]), softmax(exported_vit["logits"]), atol=1e-4)
