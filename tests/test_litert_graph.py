"""The GraphDef rewrites the LiteRT converter is given (keras_vit.export.litert_graph): same values, no shape ops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_vit.export.litert_graph import litert_concrete_function  # noqa: E402

#: Ops that compute shapes at run time on the dynamic batch (what the rewrites remove).
SHAPE_OPS = {"Shape", "GatherV2", "Prod", "Pack", "ConcatV2"}


def concrete(fn, shape):
    return tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)], autograph=False).get_concrete_function()


def op_types(function) -> Counter:
    return Counter(op.type for op in function.graph.get_operations())


def same_values(original, rewritten, shape, batches=(1, 7, 17)):
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.normal(size=(batch, *shape[1:])).astype("float32")
        expected = original(tf.constant(x))
        got = rewritten(tf.constant(x))
        got = got[0] if isinstance(got, list) else got
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_last_axis_tensordot_becomes_one_batch_matmul():
    kernel = tf.constant(np.random.default_rng(1).normal(size=(6, 5)).astype("float32"))
    original = concrete(lambda x: tf.tensordot(x, kernel, axes=[[2], [0]]) + 1.0, [None, 4, 6])
    assert {"Shape", "Prod", "Pack", "MatMul"} <= set(op_types(original))
    rewritten, counts = litert_concrete_function(original)
    assert counts["tensordot"] == 1
    ops = op_types(rewritten)
    assert ops["BatchMatMulV2"] == 1 and not SHAPE_OPS & set(ops) and "MatMul" not in ops
    assert rewritten.outputs[0].shape.as_list() == [None, 4, 5]
    same_values(original, rewritten, [None, 4, 6])


def test_tensordot_over_another_axis_is_left_alone():
    kernel = tf.constant(np.ones((4, 3), "float32"))
    original = concrete(lambda x: tf.tensordot(x, kernel, axes=[[1], [0]]), [None, 4, 6])
    rewritten, counts = litert_concrete_function(original)
    assert counts["tensordot"] == 0 and "MatMul" in op_types(rewritten)
    same_values(original, rewritten, [None, 4, 6])


def test_shrinking_slices_keep_the_axis_then_reshape():
    original = concrete(lambda x: tf.transpose(x, (1, 0, 2))[1] + x[:, 0], [None, 3, 5])
    rewritten, counts = litert_concrete_function(original)
    assert counts["shrinking_slice"] == 2
    slices = [op for op in rewritten.graph.get_operations() if op.type == "StridedSlice"]
    assert len(slices) == 2 and all(op.get_attr("shrink_axis_mask") == 0 for op in slices)
    same_values(original, rewritten, [None, 3, 5])


def test_slice_with_two_unknown_dimensions_is_left_alone():
    original = concrete(lambda x: x[:, 0], [None, 3, None])
    _, counts = litert_concrete_function(original)
    assert counts["shrinking_slice"] == 0


def test_reshape_to_a_runtime_shape_gets_a_constant_one():
    def flatten(x):  # Keras' Flatten: a runtime shape, the static one set afterwards
        y = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))
        y.set_shape([None, 15])
        return y

    original = concrete(flatten, [None, 3, 5])
    rewritten, counts = litert_concrete_function(original)
    assert counts["dynamic_reshape"] == 1
    assert not {"Shape", "Pack", "StridedSlice"} & set(op_types(rewritten))
    same_values(original, rewritten, [None, 3, 5])


def test_int16_kernels_rewrite_layer_norm_ops():
    def layer_norm_like(x):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=-1, keepdims=True)
        return (x + tf.negative(mean)) * tf.math.rsqrt(variance + 1e-6)

    original = concrete(layer_norm_like, [None, 4, 8])
    plain, counts = litert_concrete_function(original)
    assert counts["squared_difference"] == counts["negation"] == counts["rsqrt"] == 0
    assert {"SquaredDifference", "Neg", "Rsqrt"} <= set(op_types(plain)) and "Sqrt" not in op_types(plain)
    int16, counts = litert_concrete_function(original, int16_kernels=True)
    assert counts["squared_difference"] == counts["negation"] == counts["rsqrt"] == 1
    ops = op_types(int16)
    assert not {"SquaredDifference", "Neg"} & set(ops)
    assert ops["Sub"] == 1 and ops["Sqrt"] == 1 and ops["Rsqrt"] == 1  # rsqrt(v) = rsqrt(sqrt(v)) ** 2
    same_values(original, int16, [None, 4, 8])
