"""``--optimize --portable``: the fused ViT graph in standard ONNX ops only (opset 23), verified like every export."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import keras  # noqa: E402
from test_fusion import convert, max_diff_vs_keras  # noqa: E402

from keras_vit.export import read_metadata, to_onnx  # noqa: E402
from keras_vit.export.graph.portable import PORTABLE_OPSET, is_standard, portable_vit  # noqa: E402
from keras_vit.export.optimize import op_counts as ops  # noqa: E402
from keras_vit.testing import perturb_weights as perturb  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run on TensorFlow")


@pytest.fixture(scope="module")
def small_vit():
    from keras_vit.presets import create_model

    model = create_model("vit_mnist", depth=3, dropout=0.0, class_names=[str(i) for i in range(10)])
    perturb(model)
    return model, convert(model)


def last_attention_query_rows(proto) -> list[int]:
    """The query length of each Attention node, from ONNX shape inference (-1 when unknown)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value or -1 for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    return [shapes.get(n.input[0], [-1, -1])[1] for n in proto.graph.node if n.op_type == "Attention"]


def test_standard_ops_only_one_attention_per_block_and_parity(small_vit):
    model, plain = small_vit
    portable, report = portable_vit(plain)
    counts = ops(portable)
    assert all(node.domain == "" for node in portable.graph.node) and is_standard(portable)
    assert {o.domain: o.version for o in portable.opset_import}[""] == PORTABLE_OPSET
    assert counts["Attention"] == model.depth and counts["Gelu"] == model.depth
    assert counts["LayerNormalization"] == 2 * model.depth + 1
    assert counts["Softmax"] == counts["Erf"] == counts["Sqrt"] == 0
    assert report["standard_ops"] == {"Attention": model.depth - 1, "MultiHeadAttention": 1, "BiasGelu": model.depth}
    # The class-token pruning stays: the last block's attention has a single query row.
    rows = last_attention_query_rows(portable)
    assert rows[-1] == 1 and all(r > 1 for r in rows[:-1])
    onnx.checker.check_model(portable, full_check=True)
    assert max_diff_vs_keras(model, portable) <= 1e-4


def test_avg_pooling_without_bias_and_reduce_mean_at_opset_23():
    from keras_vit.presets import create_model

    model = create_model("vit_mnist", depth=2, dropout=0.0, qkv_bias=False, pooling="avg")
    perturb(model, seed=1)
    portable, _ = portable_vit(convert(model))
    counts = ops(portable)
    assert is_standard(portable) and counts["Attention"] == 2 and counts["ReduceMean"] == 1
    reduce_mean = next(n for n in portable.graph.node if n.op_type == "ReduceMean")
    assert len(reduce_mean.input) == 2 and not [a for a in reduce_mean.attribute if a.name == "axes"]
    assert max_diff_vs_keras(model, portable) <= 1e-4


def test_export_portable_writes_a_verified_standard_file(small_vit, tmp_path):
    model, _ = small_vit
    keras_path = tmp_path / "small.keras"
    model.save(keras_path)
    report = to_onnx(keras_path, portable=True)
    path = tmp_path / "small.portable.onnx"
    assert report.path == str(path) and path.is_file()
    written = onnx.load(path)
    assert is_standard(written) and ops(written)["Attention"] == model.depth
    assert report.runtimes == f"any ONNX runtime with opset {PORTABLE_OPSET}"
    assert read_metadata(path)["opset"] == PORTABLE_OPSET
    assert report.optimization["kept"] == "optimized" and report.parity["max_abs_diff"] <= 1e-4
    assert any(line.startswith("readable by: any ONNX runtime with opset 23") for line in report.summary_lines())
    images = np.random.default_rng(3).standard_normal((5, *model.input_shape[1:])).astype("float32")
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"images": images})
    assert np.max(np.abs(logits - model.predict_on_batch(images))) <= 1e-4


def test_default_optimize_is_still_the_onnxruntime_fused_file(small_vit, tmp_path):
    model, _ = small_vit
    report = to_onnx(model, tmp_path / "fused.onnx", optimize=True)
    assert report.runtimes == "onnxruntime only (com.microsoft ops)"
    assert "com.microsoft" in {n.domain for n in onnx.load(tmp_path / "fused.onnx").graph.node}


def test_dynamic_int8_of_a_portable_graph_stays_standard(small_vit):
    # onnxruntime's quantizer would turn any "Attention" into com.microsoft.QAttention (x, W, b inputs).
    from keras_vit.export.optimize import quantize_once

    model, plain = small_vit
    portable, _ = portable_vit(plain)
    quantized = quantize_once(portable, per_channel=False, reduce_range=True, keep_first_last_float=False)
    assert is_standard(quantized) and ops(quantized)["MatMulInteger"] > 0 and ops(quantized)["Attention"] == model.depth
    images = np.random.default_rng(0).standard_normal((32, *model.input_shape[1:])).astype("float32")
    run = {name: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
           for name, p in (("int8", quantized), ("float", portable))}
    logits, reference = (run[name].run(["logits"], {"images": images})[0] for name in ("int8", "float"))
    assert np.linalg.norm(logits - reference) / np.linalg.norm(reference) < 0.1
