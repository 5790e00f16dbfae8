"""The ONNX rewrite into onnxruntime's fused transformer ops (keras_vit.export.graph.fusion).

Models get perturbed weights: zero biases and unit LayerNorms (Keras' initial values) would let a
rewrite that drops or swaps them pass, and tf2onnx folds zero biases away.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from keras_vit.export.graph.fusion import fuse_attention, fuse_vit, fused_op_counts  # noqa: E402
from keras_vit.export.optimize import op_counts as ops  # noqa: E402
from keras_vit.testing import perturb_weights as perturb  # noqa: E402

TOLERANCE = 1e-4


def convert(model):
    from keras_vit.export.onnx import convert_to_onnx
    from keras_vit.export.source import describe_model

    return convert_to_onnx(model, describe_model(model))


def session(proto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def max_diff_vs_keras(model, proto, batch_sizes=(1, 17)) -> float:
    """Max abs logit difference, onnxruntime vs Keras, over one batch of each size."""
    run = session(proto)
    worst = 0.0
    for i, batch in enumerate(batch_sizes):
        images = np.random.default_rng(i).standard_normal((batch, *model.input_shape[1:])).astype("float32")
        expected = np.asarray(model.predict_on_batch(images))
        (got,) = run.run(["logits"], {"images": images})
        assert got.shape == expected.shape
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


@pytest.fixture(scope="module")
def small_vit():
    """A 3-block ViT (class-token pooling), perturbed, with its plain tf2onnx graph."""
    from keras_vit.presets import create_model

    model = create_model("vit_mnist", depth=3, dropout=0.0)
    perturb(model)
    return model, convert(model)


def test_one_attention_per_block_fewer_nodes_and_parity(small_vit):
    model, plain = small_vit
    fused, report = fuse_attention(plain)
    counts = ops(fused)
    assert report["attention"] == counts["Attention"] == model.depth
    assert report["layer_norm"] == counts["LayerNormalization"] == 2 * model.depth + 1
    assert report["gelu"] == report["bias_gelu"] == counts["BiasGelu"] == model.depth
    assert report["tensordot"] == 4 * model.depth + 1  # qkv, proj, fc1, fc2 per block + patch projection
    for leftover in ("Softmax", "Erf", "Sqrt", "Reciprocal", "GlobalAveragePool", "Gather", "Cast"):
        assert counts[leftover] == 0, leftover
    assert counts["Shape"] == 1  # only the batch size, to broadcast the class token
    assert report["nodes_after"] == len(fused.graph.node) < len(plain.graph.node) / 3
    assert fused_op_counts(fused) == {"Attention": 3, "LayerNormalization": 7, "Gelu": 3}
    assert max_diff_vs_keras(model, fused) <= TOLERANCE


def test_class_token_pruning_keeps_parity(small_vit):
    model, plain = small_vit
    fused, report = fuse_vit(plain)
    counts = ops(fused)
    # The last block attends from the class token only: MultiHeadAttention with a one-token query.
    assert report["class_token_blocks"] == 1
    assert counts["Attention"] == model.depth - 1 and counts["MultiHeadAttention"] == 1
    assert report["fused_ops"]["Attention"] == model.depth
    assert max_diff_vs_keras(model, fused) <= TOLERANCE
    onnx.checker.check_model(fused)


def test_skip_layer_norm_option_keeps_parity(small_vit):
    model, plain = small_vit
    fused, report = fuse_vit(plain, skip_layer_norm=True)
    assert report["skip_layer_norm"] == ops(fused)["SkipLayerNormalization"] == 2 * model.depth
    assert max_diff_vs_keras(model, fused) <= TOLERANCE


def test_input_graph_is_not_modified(small_vit):
    _, plain = small_vit
    before = plain.SerializeToString()
    fuse_vit(plain)
    assert plain.SerializeToString() == before


def test_avg_pooling_without_qkv_bias():
    from keras_vit.presets import create_model

    model = create_model("vit_mnist", depth=2, dropout=0.0, qkv_bias=False, pooling="avg")
    perturb(model, seed=1)
    fused, report = fuse_vit(convert(model))
    assert report["attention"] == ops(fused)["Attention"] == 2
    assert report["class_token_blocks"] == 0  # every token feeds the mean: nothing to prune
    assert max_diff_vs_keras(model, fused) <= TOLERANCE


# ------------------------------------------------------------------ hand-built graphs, no tf2onnx
def _graph(nodes, inputs, constants, output="y"):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else None),
                                     name) for name, v in constants.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _keras_layer_norm_graph(shape):
    """Keras' LayerNorm as tf2onnx writes it (mean by GlobalAveragePool, Sqrt + Reciprocal, Neg)."""
    dim = shape[-1]
    rng = np.random.default_rng(0)
    constants = {"eps": np.float32(1e-6), "gamma": 1 + 0.2 * rng.standard_normal((1, 1, dim)),
                 "beta": 0.1 * rng.standard_normal((1, 1, dim))}
    n = helper.make_node
    nodes = [
        n("GlobalAveragePool", ["x"], ["mean"]), n("Neg", ["mean"], ["neg"]), n("Sub", ["x", "mean"], ["d"]),
        n("Mul", ["d", "d"], ["d2"]), n("GlobalAveragePool", ["d2"], ["var"]), n("Add", ["var", "eps"], ["ve"]),
        n("Sqrt", ["ve"], ["sd"]), n("Reciprocal", ["sd"], ["inv"]), n("Mul", ["inv", "gamma"], ["g"]),
        n("Mul", ["x", "g"], ["xg"]), n("Mul", ["neg", "g"], ["mg"]), n("Add", ["mg", "beta"], ["off"]),
        n("Add", ["xg", "off"], ["y"]),
    ]
    return _graph(nodes, {"x": list(shape)}, constants), constants


def test_layer_norm_pattern_fuses_and_matches_numpy():
    proto, c = _keras_layer_norm_graph((2, 5, 8))
    fused, report = fuse_vit(proto)
    assert report["layer_norm"] == 1 and [n.op_type for n in fused.graph.node] == ["LayerNormalization"]
    x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype("float32")
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-6) * c["gamma"] + c["beta"]
    np.testing.assert_allclose(session(fused).run(None, {"x": x})[0], expected, atol=1e-5)


def test_mean_over_two_axes_is_not_a_layer_norm():
    # On a 4-D input GlobalAveragePool averages over H and W: the same ops are then no LayerNorm.
    proto, _ = _keras_layer_norm_graph((2, 3, 5, 8))
    fused, report = fuse_vit(proto)
    assert report["layer_norm"] == 0 and ops(fused) == ops(proto)


@pytest.mark.parametrize(("coefficient", "fuses"), [(1 / math.sqrt(2.0), True), (0.7, False)])
def test_gelu_pattern_needs_the_exact_coefficient(coefficient, fuses):
    n = helper.make_node
    nodes = [n("Mul", ["x", "c"], ["s"]), n("Erf", ["s"], ["e"]), n("Add", ["one", "e"], ["a"]),
             n("Mul", ["half", "x"], ["h"]), n("Mul", ["h", "a"], ["y"])]
    proto = _graph(nodes, {"x": [3, 4]}, {"c": np.float32(coefficient), "one": np.float32(1.0),
                                          "half": np.float32(0.5)})
    fused, report = fuse_vit(proto)
    assert report["gelu"] == int(fuses)
    x = np.linspace(-4, 4, 12, dtype=np.float32).reshape(3, 4)
    expected = 0.5 * x * (1 + np.vectorize(math.erf)(x.astype(np.float64) * coefficient))
    np.testing.assert_allclose(session(fused).run(None, {"x": x})[0], expected, atol=1e-5)


def test_fused_graph_quantizes_attention(small_vit, tmp_path):
    # onnxruntime's quantizer needs tensor types after the contrib ops: the fused graph declares them.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, plain = small_vit
    fused, _ = fuse_vit(plain)
    onnx.save(fused, tmp_path / "fused.onnx")
    quantize_dynamic(tmp_path / "fused.onnx", tmp_path / "int8.onnx", op_types_to_quantize=["MatMul", "Attention"],
                     weight_type=QuantType.QInt8, reduce_range=True)
    quantized = onnx.load(tmp_path / "int8.onnx")
    assert ops(quantized)["QAttention"] == model.depth - 1
    images = np.random.default_rng(0).standard_normal((64, *model.input_shape[1:])).astype("float32")
    (logits,) = session(quantized).run(["logits"], {"images": images})
    (reference,) = session(fused).run(["logits"], {"images": images})
    assert logits.shape == reference.shape == (64, model.num_classes)
    # INT8 weights: close to the float graph, not merely finite (a broken quantisation fails here).
    assert np.linalg.norm(logits - reference) / np.linalg.norm(reference) < 0.1
    assert np.mean(logits.argmax(-1) == reference.argmax(-1)) >= 0.9


def test_export_optimize_step_keeps_the_fusions(small_vit):
    # keras_vit.export.optimize (the --optimize path) runs fuse_vit, then onnxruntime's optimizer without
    # SkipLayerNormalization, then ORT's offline optimisation: the fused ops must survive all three.
    from keras_vit.export.optimize import optimize_graph
    from keras_vit.export.source import describe_model

    model, plain = small_vit
    optimized = optimize_graph(plain, describe_model(model))
    counts = ops(optimized)
    assert counts["Attention"] + counts["MultiHeadAttention"] == model.depth
    assert counts["SkipLayerNormalization"] == 0 and counts["Softmax"] == 0
    assert max_diff_vs_keras(model, optimized) <= TOLERANCE
