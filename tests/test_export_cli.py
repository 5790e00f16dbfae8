"""``keras-vit export``: what it prints, exit codes, one-line errors, and nothing left behind on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

import keras  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.cli.main import main  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run on TensorFlow")


def run_cli(capsys, *args):
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("keras-vit export: error:")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("keras-vit export: error: ")


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    keras.utils.set_random_seed(4)
    path = tmp_path_factory.mktemp("cli") / "tiny.keras"
    keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32, num_classes=3).save(path)
    return path


def test_missing_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "nope.keras")
    assert code == 2 and one_error_line(err) == f"Model file not found: {tmp_path / 'nope.keras'}."


def test_not_a_zip(capsys, tmp_path):
    (tmp_path / "bad.keras").write_bytes(b"not a model")
    code, _, err = run_cli(capsys, tmp_path / "bad.keras")
    assert code == 2
    assert one_error_line(err).endswith("is not a valid .keras file (not a zip archive): it is truncated or corrupt.")


def test_corrupt_archive(capsys, tmp_path):
    with zipfile.ZipFile(tmp_path / "broken.keras", "w") as archive:
        archive.writestr("config.json", "{ not json")
    code, _, err = run_cli(capsys, tmp_path / "broken.keras")
    assert code == 2 and "could not be loaded as a Keras model (corrupt .keras?)" in one_error_line(err)
    assert list(tmp_path.iterdir()) == [tmp_path / "broken.keras"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "unknown export format 'tflite': choose one of onnx, saved_model, litert, web."),
        (["--opset", "11"], "unsupported ONNX opset '11': supported opsets are 13-18 (default 17)."),
        (["--quantize", "int4"],
         "unknown quantization 'int4' for --format onnx: choose one of int8, int8-static, fp16."),
        (["--format", "web", "--quantize", "int16x8"],
         "unknown quantization 'int16x8' for --format web: choose one of int8."),
        (["--quantize", "int8", "--calibration-data", "mnist"],
         "--calibration-data applies to --quantize int8-static or int16x8 only."),
        (["--format", "saved_model", "--portable"], "--portable applies to --format onnx only."),
        (["--format", "saved_model", "--quantize", "int8"],
         "--optimize and --quantize apply to ONNX exports only (use --format onnx)."),
        (["--verify-data", "imagenet"], "unknown verify data 'imagenet': give an .npz file or one of mnist, "
         "fashion_mnist, cifar10, usps, mnist_sample."),
    ],
)
def test_bad_options(capsys, tiny_keras, args, message):
    code, _, err = run_cli(capsys, tiny_keras, *args)
    assert code == 2 and one_error_line(err) == message


def test_output_folder_missing_or_not_writable(capsys, tiny_keras, tmp_path):
    code, _, err = run_cli(capsys, tiny_keras, "--output", tmp_path / "no" / "m.onnx")
    assert code == 2 and one_error_line(err).startswith(f"output folder {tmp_path / 'no'} does not exist")
    if os.geteuid() == 0:
        folder = Path("/proc/1")  # root ignores permission bits; procfs refuses new files
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    code, _, err = run_cli(capsys, tiny_keras, "--output", folder / "m.onnx")
    assert code == 2 and one_error_line(err).startswith(f"output folder {folder} is not writable")


def test_unknown_custom_model_is_not_a_keras_vit_model(capsys, tmp_path):
    @keras.saving.register_keras_serializable(package="someone_else")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(Doubler()(inputs)))).save(tmp_path / "c.keras")
    del keras.saving.get_custom_objects()["someone_else>Doubler"]
    code, _, err = run_cli(capsys, tmp_path / "c.keras")
    assert code == 2 and one_error_line(err) == (
        f"{tmp_path / 'c.keras'} is not a keras-vit model: it uses custom classes that Keras cannot rebuild "
        "without their code (someone_else>Doubler)."
    )


def test_plain_classifier_exports_generically(capsys, tmp_path):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "cnn.keras")
    code, out, err = run_cli(capsys, tmp_path / "cnn.keras")
    assert code == 0, err
    assert "warning: the model (Functional) is not a keras-vit VisionTransformer: exported as a generic" in out
    assert "parity vs Keras on 64 of the verify images (verify data: 1000 images from mnist_sample.npz resized" in out
    session = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (17, 12, 12, 3)).astype("float32")
    assert [i.name for i in session.get_inputs()] == ["images"]
    # Logits of ~200 on raw pixels: float32 resolves them to ~1.5e-5, so the tolerance is relative.
    np.testing.assert_allclose(session.run(None, {"images": x})[0], model.predict_on_batch(x), rtol=1e-5, atol=1e-4)


def test_model_that_is_not_an_image_classifier(capsys, tmp_path):
    inputs = keras.Input((5,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "mlp.keras")
    code, _, err = run_cli(capsys, tmp_path / "mlp.keras")
    assert code == 2
    assert "is not a keras-vit VisionTransformer, nor a plain image classifier" in one_error_line(err)


def test_verification_failure_exit_1_and_no_file(capsys, tiny_keras, tmp_path, monkeypatch):
    """A converter that shifts the logits: the check catches it, exit 1, nothing written."""
    from test_export_onnx import shift_logits

    import keras_vit.export.onnx as onnx_export

    real = onnx_export.convert_to_onnx
    monkeypatch.setattr(onnx_export, "convert_to_onnx", lambda *a, **k: shift_logits(real(*a, **k), -0.25))
    code, out, err = run_cli(capsys, tiny_keras, "--output", tmp_path / "t.onnx")
    assert code == 1 and out == ""
    assert one_error_line(err) == "export does not match the Keras model: max abs diff 0.25 > 1e-4"
    assert list(tmp_path.iterdir()) == []


def test_cli_end_to_end_prints_checked_figures(trained_mnist_model, tmp_path):
    """The installed command in a fresh process: ONNX with --optimize, figures printed, JSON report."""
    output = tmp_path / "out.onnx"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "keras_vit.cli.main", "export", str(trained_mnist_model), "--output", str(output),
         "--optimize", "--include-probabilities", "--verify-data", "mnist_sample", "--json"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["path"] == str(output) and output.is_file()
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["outputs"] == ["logits", "probabilities"]
    opt = report["optimization"]
    assert opt["kept"] in ("plain", "optimized")
    # vit_mnist's 6 blocks: 13 LayerNorms, 6 GELUs, one attention per block; the fused graph keeps parity.
    fusions = opt["fusions"]  # "Attention" counts the op type; the last block's is a MultiHeadAttention
    assert (fusions["LayerNormalization"], fusions["Gelu"], fusions["Attention"], fusions["MultiHeadAttention"]) == (
        13, 6, 5, 1)
    assert opt["max_abs_diff"] <= 1e-4 and opt["nodes_optimized"] < opt["nodes_plain"] / 3
    assert report["metadata"]["opset"] == 17


@pytest.mark.slow
def test_cli_under_torch_backend_exports_saved_model(tiny_keras, tmp_path):
    """From a PyTorch-backend process the export runs in a TensorFlow subprocess and is still verified."""
    pytest.importorskip("torch")
    output = tmp_path / "tiny_sm"
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "keras_vit.cli.main", "export", str(tiny_keras), "--format", "saved_model",
         "--output", str(output)], env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {output} (saved_model" in done.stdout and "[converted in a tensorflow subprocess]" in done.stdout
    assert "max abs logit diff" in done.stdout
    assert (output / "saved_model.pb").is_file() and (output / "keras_vit_metadata.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_sm"]


def test_export_options_cross_the_process_boundary_as_json(tmp_path):
    """One options object: checked once, serialised for the TensorFlow child, read back unchanged."""
    from keras_vit.errors import UserInputError
    from keras_vit.export import ExportOptions

    verify = tmp_path / "digits.npz"
    np.savez(verify, x=np.zeros((2, 28, 28), np.uint8))
    options = ExportOptions(opset="16", quantize="INT8", optimize=True, include_preprocessing=True,
                            raw_input_dtype="float32", verify_data=os.path.relpath(verify)).checked()
    assert (options.opset, options.quantize, options.input_dtype, options.outputs) == (16, "int8", "float32",
                                                                                        ("logits",))
    child = options.for_another_process()
    assert child.verify_data == str(verify.resolve())
    assert ExportOptions.from_json(child.to_json()) == child
    with pytest.raises(UserInputError, match="unknown export option"):
        ExportOptions.from_json(json.dumps({"opset": 17, "bogus": 1}))
    with pytest.raises(UserInputError, match="apply to ONNX exports only"):
        ExportOptions(format="saved_model", optimize=True).checked()
    assert ExportOptions(format="saved_model", opset=11).checked().opset == 11  # opset is ONNX-only


def test_verify_data_reads_keras_vit_data_never_developer_folders(tmp_path, monkeypatch):
    """Named verify sets come from $KERAS_VIT_DATA (or Keras' loader), never from ./shared/data."""
    from keras_vit.errors import UserInputError
    from keras_vit.export.verify import load_verify_data, resolve_dataset

    folder = tmp_path / "shared" / "data" / "usps"
    folder.mkdir(parents=True)
    np.savez(folder / "usps_holdout.npz", x_test=np.full((3, 16, 16), 9, np.uint8), y_test=np.arange(3))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KERAS_VIT_DATA", raising=False)
    with pytest.raises(UserInputError, match=r"dataset 'usps' not found: .*\$KERAS_VIT_DATA is not set"):
        resolve_dataset("usps")
    monkeypatch.setenv("KERAS_VIT_DATA", str(tmp_path / "shared" / "data"))
    assert resolve_dataset("usps") == folder / "usps_holdout.npz"
    assert resolve_dataset("mnist") == "mnist"  # loaded by keras_vit.datasets.load_dataset
    data = load_verify_data("usps", (16, 16), 1, {"scale": 1 / 255, "mean": [0.5], "std": [0.5]})
    assert data.description == "3 images from usps" and data.labels.tolist() == [0, 1, 2]
    np.testing.assert_allclose(data.inputs, (9 / 255 - 0.5) / 0.5, rtol=1e-6)


def test_portable_from_the_command_line_writes_standard_ops_only(capsys, tiny_keras):
    import onnx

    code, out, _ = run_cli(capsys, tiny_keras, "--portable", "--json")
    report = json.loads(out)
    path = tiny_keras.with_name("tiny.portable.onnx")
    assert code == 0 and report["path"] == str(path) and report["runtimes"] == "any ONNX runtime with opset 23"
    proto = onnx.load(path)
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert [node.op_type for node in proto.graph.node].count("Attention") == 1  # depth 1: one block
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= 23
    assert report["parity"]["max_abs_diff"] <= 1e-4


def test_calibration_data_of_the_wrong_shape_is_one_error_and_no_file(capsys, tiny_keras, tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 32, 32, 2), dtype=np.uint8))  # two channels
    output = tmp_path / "static.onnx"
    code, _, err = run_cli(capsys, tiny_keras, "--quantize", "int8-static", "--calibration-data",
                           tmp_path / "calib.npz", "--output", output)
    assert code == 2
    message = one_error_line(err)
    assert message.startswith(f"calibration data {tmp_path / 'calib.npz'} has images of shape (4, 32, 32, 2)")
    assert not output.exists()
