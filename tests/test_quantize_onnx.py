"""``--quantize fp16`` and ``--quantize int8-static`` for ONNX (keras_vit.export.quantize), on one tiny model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import keras  # noqa: E402

from keras_vit.export import ExportVerificationError, to_onnx  # noqa: E402
from keras_vit.export.optimize import op_counts as ops  # noqa: E402
from keras_vit.testing import perturb_weights as perturb  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run on TensorFlow")


@pytest.fixture(scope="module")
def keras_path(tmp_path_factory):
    from keras_vit.presets import create_model

    model = create_model("vit_mnist", depth=2, dropout=0.0, class_names=[str(i) for i in range(10)])
    perturb(model)
    path = tmp_path_factory.mktemp("quantize") / "small.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def float_graph(keras_path):
    from keras_vit.export.verify import load_verify_data, ort_session, run_onnx

    to_onnx(keras_path, keras_path.with_name("float.onnx"), optimize=True)
    proto = onnx.load(keras_path.with_name("float.onnx"))
    model = keras.saving.load_model(keras_path)
    data = load_verify_data(None, (28, 28), 1, model.preprocessing, limit=300)
    return proto, data, run_onnx(ort_session(proto.SerializeToString()), data.inputs)["logits"]


def test_fp16_export_is_smaller_agrees_and_keeps_float_io(keras_path):
    report = to_onnx(keras_path, quantize="fp16")
    path = keras_path.with_name("small.fp16.onnx")
    assert report.path == str(path)
    q = report.quantization
    assert q["mode"] == "fp16" and q["agreement"] >= 0.995 and q["samples"] == 1000
    # 0.61x here: in a 0.3 MB model the graph and the float32 LayerNorm parameters weigh more (ViT-Ti/16: see
    # benchmarks/results/onnx_formats.md).
    assert report.file_size == q["size_after"] <= 0.65 * q["size_before"]
    assert 0 < q["max_relative_diff"] < 0.05 and q["float_max_abs_diff"] <= 1e-4
    written = onnx.load(path)
    assert written.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert written.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    floats = {i.name: i.data_type for i in written.graph.initializer if i.data_type in (1, 10)}
    assert Counter(floats.values())[onnx.TensorProto.FLOAT16] > Counter(floats.values())[onnx.TensorProto.FLOAT]
    # LayerNorm computes in float32: its inputs are cast back from float16.
    producers = {o: n for n in written.graph.node for o in n.output}
    norms = [n for n in written.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(producers[n.input[0]].op_type == "Cast" for n in norms)
    assert any(line.startswith("fp16: size") for line in report.summary_lines())


def test_int8_static_is_qdq_per_channel_and_keeps_layer_norm_float(float_graph):
    from keras_vit.export.quantize import quantize_int8_static
    from keras_vit.export.verify import ort_session, run_onnx

    proto, data, float_logits = float_graph
    quantized, report = quantize_int8_static(proto, data.inputs[:64], data.inputs, float_logits, data.labels,
                                             min_agreement=0.0, calibration_description="64 test images")
    counts = ops(quantized)
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    assert counts["LayerNormalization"] == ops(proto)["LayerNormalization"]  # not quantised
    weights = {t.name: t for t in quantized.graph.initializer}
    per_channel = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"
                   and weights.get(n.input[0]) is not None and weights[n.input[0]].data_type == onnx.TensorProto.INT8
                   and len(weights[n.input[1]].dims) == 1]
    kept = report["settings"]["matmuls_kept_float"]
    assert len(per_channel) == len(matmuls) - kept > 0
    assert report["calibration_samples"] == 64 and report["tried"][0]["calibration"] == "MinMax"
    logits = run_onnx(ort_session(quantized.SerializeToString()), data.inputs)["logits"]
    assert report["agreement"] == pytest.approx(np.mean(logits.argmax(-1) == float_logits.argmax(-1)))
    assert report["agreement"] == max(t["agreement"] for t in report["tried"])
    assert report["max_relative_diff"] == pytest.approx(
        np.max(np.abs(logits - float_logits)) / np.max(np.abs(float_logits)), rel=1e-5)
    assert report["size_after"] < report["size_before"]


def test_int8_static_below_the_agreement_leaves_no_file(keras_path, monkeypatch):
    import keras_vit.export.quantize as quantize

    monkeypatch.setattr(quantize, "CALIBRATION_METHODS", ("MinMax",))
    monkeypatch.setattr(quantize, "SENSITIVITY_SAMPLES", 32)
    output = keras_path.with_name("refused.onnx")
    with pytest.raises(ExportVerificationError, match="int8-static export agrees with the float model on only"):
        # A random model's near-tied logits: static INT8 flips many of them.
        to_onnx(keras_path, output, quantize="int8-static", verify_limit=200)
    assert not output.exists()


def test_calibration_data_file_is_read_and_named(keras_path, tmp_path, float_graph):
    from keras_vit.export.quantize import quantize_int8_static
    from keras_vit.export.verify import load_calibration_data

    proto, data, float_logits = float_graph
    images = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "calib.npz", x=images)
    model = keras.saving.load_model(keras_path)
    calibration = load_calibration_data(str(tmp_path / "calib.npz"), data, (28, 28), 1, model.preprocessing, 32)
    assert len(calibration) == 32 and "calib.npz" in calibration.description
    _, report = quantize_int8_static(proto, calibration.inputs, data.inputs[:64], float_logits[:64],
                                     min_agreement=0.0, calibration_description=calibration.description)
    assert report["calibration_samples"] == 32 and "calib.npz" in report["calibration_data"]
