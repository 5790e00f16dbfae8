"""ONNX export: parity with Keras, dynamic batch, metadata, --optimize, INT8, other backends, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, load_mnist_arrays

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import keras  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.export import ExportVerificationError, read_metadata, to_onnx  # noqa: E402
from keras_vit.preprocessing import preprocess  # noqa: E402
from keras_vit.presets import MNIST_PREPROCESSING  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run on TensorFlow")


def session(path_or_bytes):
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def mnist_inputs(data_dir, start, stop):
    """Real MNIST test digits as (raw uint8 NHWC, preprocessed float32, labels)."""
    _, (x_test, y_test) = load_mnist_arrays(data_dir)
    raw = x_test[start:stop, ..., None]
    return raw, preprocess(raw, MNIST_PREPROCESSING), y_test[start:stop]


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name or ".probe-" in p.name]


@pytest.fixture(scope="module")
def mnist_model(trained_mnist_model):
    return keras.saving.load_model(trained_mnist_model)


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(1)
    return keras_vit.create_model("vit_tiny_patch16_224", depth=2, image_size=64, num_classes=5)


@pytest.fixture(scope="module")
def mnist_optimized(trained_mnist_model, tmp_path_factory):
    """The trained vit_mnist exported with --optimize and a probabilities output."""
    path = tmp_path_factory.mktemp("onnx") / "vit_mnist.onnx"
    return to_onnx(trained_mnist_model, path, optimize=True, include_probabilities=True), path


def test_onnx_parity_dynamic_batch_and_io(mnist_optimized, mnist_model, data_dir):
    report, path = mnist_optimized
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities"]
    assert sess.get_inputs()[0].type == "tensor(float)"
    _, x, _ = mnist_inputs(data_dir, 0, 18)
    for batch in (x[:1], x[1:18]):  # dynamic batch: 1 and 17
        logits, probabilities = sess.run(None, {"images": batch})
        reference = mnist_model.predict_on_batch(batch)
        assert logits.shape == (len(batch), 10)
        assert np.max(np.abs(logits - reference)) <= 1e-4
        np.testing.assert_allclose(probabilities, keras.ops.convert_to_numpy(keras.ops.softmax(reference)),
                                   atol=1e-5)
    assert report.parity["max_abs_diff"] <= 1e-4
    assert report.parity["batch_sizes"][:2] == [17, 1]


def test_onnx_metadata_round_trip(mnist_optimized):
    report, path = mnist_optimized
    meta = read_metadata(path)
    assert meta == report.metadata
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["image_size"] == [28, 28] and meta["channels"] == 1
    assert meta["preprocessing"] == MNIST_PREPROCESSING
    assert meta["input_dtype"] == "float32" and meta["preset"] == "vit_mnist"
    assert meta["keras_vit_version"] == keras_vit.__version__ and meta["opset"] == 17
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["class_names"]) == meta["class_names"]
    assert json.loads(props["image_size"]) == [28, 28]
    assert props["channels"] == "1" and props["opset"] == "17" and props["preset"] == "vit_mnist"
    assert onnx.load(str(path)).opset_import[0].version == 17


def vit_mnist_fusions(fusions: dict) -> dict:
    """The fused-op families of a report's ``fusions``: its "Attention" key is the op type's count (the
    family's count is overwritten by it), so the class-token MultiHeadAttention is added back."""
    return {"LayerNormalization": fusions["LayerNormalization"], "Gelu": fusions["Gelu"],
            "Attention": fusions.get("Attention", 0) + fusions.get("MultiHeadAttention", 0)}


#: What --optimize must reach on vit_mnist (6 blocks): every LayerNorm (2 per block + the final one), one
#: GELU per MLP (fused with its bias), one attention per block (the last one, pruned to the class token,
#: as MultiHeadAttention). Measured: LayerNormalization 13, Gelu 6 (BiasGelu 6), Attention 5 +
#: MultiHeadAttention 1, 539 -> 85 nodes.
VIT_MNIST_FUSIONS = {"LayerNormalization": 13, "Gelu": 6, "Attention": 6}


def test_optimize_reports_fusions_and_keeps_parity(mnist_optimized, mnist_model, data_dir):
    report, path = mnist_optimized
    opt = report.optimization
    assert vit_mnist_fusions(opt["fusions"]) == VIT_MNIST_FUSIONS and opt["fusions"]["MultiHeadAttention"] == 1
    assert opt["nodes_optimized"] < opt["nodes_plain"] / 3
    assert opt["max_abs_diff"] <= 1e-4  # the fused graph's own parity, whichever graph was kept
    assert opt["kept"] in ("optimized", "plain")
    # The fused graph itself, whether or not it was kept (kept "plain" only if it timed slower).
    fused = onnx.load(str(path))
    if opt["kept"] == "plain":
        from keras_vit.export.optimize import optimize_graph
        from keras_vit.export.source import describe_model

        fused = optimize_graph(fused, describe_model(mnist_model))
    ops = Counter(node.op_type for node in fused.graph.node)
    assert ops["LayerNormalization"] == 13 and ops["BiasGelu"] == 6
    assert ops["Attention"] + ops["MultiHeadAttention"] == 6
    assert ops["Softmax"] == 1  # the probabilities output's only: every attention softmax is fused
    _, x, _ = mnist_inputs(data_dir, 100, 164)
    (fused_logits,) = session(fused.SerializeToString()).run(["logits"], {"images": x})
    assert np.max(np.abs(fused_logits - mnist_model.predict_on_batch(x))) <= 1e-4
    if "plain_ms" in opt:  # it was timed: the kept graph is the faster one (within the noise allowance)
        assert opt["plain_ms"] > 0 and opt["optimized_ms"] > 0
        if opt["kept"] == "optimized":
            assert opt["optimized_ms"] <= opt["plain_ms"] * 1.02
        else:
            assert "slower" in opt["reason"]
    assert any(line.startswith("optimize: fused ops LayerNormalization") for line in report.summary_lines())
    _, x, _ = mnist_inputs(data_dir, 100, 164)
    logits = session(path).run(["logits"], {"images": x})[0]
    assert np.max(np.abs(logits - mnist_model.predict_on_batch(x))) <= 1e-4


def test_int8_agrees_with_float_on_real_mnist(trained_mnist_model, mnist_model, data_dir, tmp_path):
    report = to_onnx(trained_mnist_model, tmp_path / "m.int8.onnx", quantize="int8",
                     verify_data=str(data_dir / "mnist" / "mnist.npz"))
    q = report.quantization
    assert q["agreement"] >= 0.99 and q["samples"] == 1000 and q["float_max_abs_diff"] <= 1e-4
    assert q["size_after"] < q["size_before"] / 2 and report.file_size == q["size_after"]
    assert q["accuracy_after"] >= q["accuracy_before"] - 0.01
    assert q["agreement"] in [t["agreement"] for t in q["tried"]]
    # Independent check on other test digits than the ones the export verified on.
    _, x, y = mnist_inputs(data_dir, 1000, 3000)
    int8 = session(tmp_path / "m.int8.onnx").run(["logits"], {"images": x})[0]
    reference = np.concatenate([mnist_model.predict_on_batch(x[i : i + 500]) for i in range(0, len(x), 500)])
    assert np.mean(int8.argmax(-1) == reference.argmax(-1)) >= 0.99
    assert abs(np.mean(int8.argmax(-1) == y) - np.mean(reference.argmax(-1) == y)) < 0.01


def test_tiny_vit_with_preprocessing_takes_raw_uint8(tiny_model, tmp_path):
    path = tmp_path / "tiny.onnx"
    report = to_onnx(tiny_model, path, include_preprocessing=True)
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["images"] and sess.get_inputs()[0].type == "tensor(uint8)"
    meta = read_metadata(path)
    assert meta["preprocessing"] == {} and meta["input_dtype"] == "uint8" and meta["image_size"] == [64, 64]
    assert meta["channels"] == 3 and meta["class_names"] == ["0", "1", "2", "3", "4"]
    raw = np.random.default_rng(0).integers(0, 256, size=(18, 64, 64, 3), dtype=np.uint8)
    expected = tiny_model.predict_on_batch(preprocess(raw, tiny_model.preprocessing))
    for part in (slice(0, 1), slice(1, 18)):
        assert np.max(np.abs(sess.run(None, {"images": raw[part]})[0] - expected[part])) <= 1e-4
    assert "resized to 64x64x3" in report.verify_data


def test_hybrid_vit_with_a_conv_stem_exports_with_parity(tmp_path):
    keras.utils.set_random_seed(2)
    model = keras_vit.create_model("vit_mnist_convstem", depth=1)
    x = np.random.default_rng(0).normal(size=(5, 28, 28, 1)).astype("float32")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(5), epochs=1, verbose=0)  # move BatchNorm's statistics off their defaults
    path = tmp_path / "stem.onnx"
    to_onnx(model, path, optimize=True)
    logits = session(path).run(None, {session(path).get_inputs()[0].name: x})[0]
    assert np.max(np.abs(logits - model.predict_on_batch(x))) <= 1e-4


def shift_logits(proto, offset):
    """A converter bug stand-in: the graph adds ``offset`` to every logit."""
    from onnx import helper, numpy_helper

    for node in proto.graph.node:
        node.output[:] = ["logits_before_bug" if name == "logits" else name for name in node.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.float32(offset), "bug_offset"))
    proto.graph.node.append(helper.make_node("Add", ["logits_before_bug", "bug_offset"], ["logits"]))
    return proto


def test_verification_failure_leaves_no_file_and_keeps_old_output(tiny_model, tmp_path, monkeypatch):
    import keras_vit.export.onnx as onnx_export

    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"previous export")
    real = onnx_export.convert_to_onnx
    monkeypatch.setattr(onnx_export, "convert_to_onnx", lambda *a, **k: shift_logits(real(*a, **k), 0.5))
    with pytest.raises(ExportVerificationError, match=r"^export does not match the Keras model: max abs diff "
                       r"0\.5\d* > 1e-4$") as err:
        to_onnx(tiny_model, path)
    assert err.value.exit_code == 1
    assert path.read_bytes() == b"previous export"  # replaced only on success
    assert no_temporaries(tmp_path)


def test_failure_while_writing_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    import keras_vit.export.onnx as onnx_export

    def half_write(proto, target):
        Path(target).write_bytes(proto.SerializeToString()[:1000])
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(onnx_export, "_write", half_write)
    with pytest.raises(KeyboardInterrupt):
        to_onnx(tiny_model, tmp_path / "tiny.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [12, 19, "x"])
def test_unsupported_opset(tiny_model, tmp_path, opset):
    with pytest.raises(keras_vit.UserInputError, match=r"unsupported ONNX opset .*supported opsets are 13-18"):
        to_onnx(tiny_model, tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


SAVE_AND_PREDICT = """
import sys, numpy as np, keras, keras_vit
keras.utils.set_random_seed(3)
model = keras_vit.create_model("vit_mnist", depth=1)
model.save(sys.argv[1])
with np.load(sys.argv[2]) as d:
    np.save(sys.argv[3], keras.ops.convert_to_numpy(model.predict_on_batch(d["x"])))
if len(sys.argv) > 4:  # export from this (non-TensorFlow) process: runs in a TensorFlow subprocess
    from keras_vit.export import to_onnx
    report = to_onnx(model, sys.argv[4])
    print(report.converted_in, report.source_parity["backend"], report.source_parity["max_abs_diff"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("other", ["jax", "torch"])
def test_models_saved_under_other_backends_export_and_match(other, data_dir, tmp_path):
    pytest.importorskip(other)
    _, x, _ = mnist_inputs(data_dir, 0, 17)
    np.savez(tmp_path / "x.npz", x=x)
    script = tmp_path / "make.py"
    script.write_text(SAVE_AND_PREDICT)
    args = [sys.executable, str(script), str(tmp_path / "m.keras"), str(tmp_path / "x.npz"), str(tmp_path / "y.npy")]
    if other == "jax":  # to_onnx called from the JAX process itself
        args.append(str(tmp_path / "m.onnx"))
    env = {**os.environ, "KERAS_BACKEND": other, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = np.load(tmp_path / "y.npy")
    if other == "jax":
        assert done.stdout.split()[:4] == ["a", "tensorflow", "subprocess", "jax"]
        assert float(done.stdout.split()[-1]) <= 1e-4
    else:  # the .keras saved under torch, exported from this TensorFlow process
        to_onnx(tmp_path / "m.keras", tmp_path / "m.onnx")
    got = session(tmp_path / "m.onnx").run(["logits"], {"images": x})[0]
    assert np.max(np.abs(got - expected)) <= 1e-4
