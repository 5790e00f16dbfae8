"""Shapes, patch order, configs and maths of every layer, on every backend."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
from keras import ops

from keras_vit.errors import UserInputError
from keras_vit.layers import (
    MLP,
    ConvStem,
    DropPath,
    MultiHeadSelfAttention,
    PatchEncoder,
    PatchExtractor,
    TokenPooling,
    TransformerEncoderBlock,
    gelu_erf,
)

pytestmark = pytest.mark.backends


def test_patch_extractor_shape_mnist():
    images = np.zeros((2, 28, 28, 1), "float32")
    assert tuple(PatchExtractor(7)(images).shape) == (2, 16, 49)


def test_patch_extractor_row_major_order_against_hand_made_image():
    # 4x6 image, 2 channels, patch 2: a 2x3 grid. Pixel (r, c, ch) holds 100*r + 10*c + ch.
    r, c, ch = np.meshgrid(np.arange(4), np.arange(6), np.arange(2), indexing="ij")
    image = (100 * r + 10 * c + ch).astype("float32")[None]
    patches = ops.convert_to_numpy(PatchExtractor(2)(image))[0]
    assert patches.shape == (6, 8)
    for index in range(6):
        row, col = divmod(index, 3)  # left to right, then top to bottom
        expected = image[0, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2, :].reshape(-1)
        np.testing.assert_array_equal(patches[index], expected)
    # inside a patch: (row, column, channel) order
    np.testing.assert_array_equal(patches[0], [0, 1, 10, 11, 100, 101, 110, 111])


def test_patch_extractor_rejects_sizes_not_multiple_of_patch():
    with pytest.raises(UserInputError, match="Image height 30 is not a multiple of the patch size 7"):
        PatchExtractor(7)(np.zeros((1, 30, 28, 1), "float32"))
    with pytest.raises(UserInputError, match="width 29 is not a multiple"):
        PatchExtractor(7)(np.zeros((1, 28, 29, 1), "float32"))


def test_patch_encoder_adds_class_token_and_positions():
    encoder = PatchEncoder(num_patches=16, hidden_dim=8)
    tokens = encoder(np.random.rand(3, 16, 49).astype("float32"))
    assert tuple(tokens.shape) == (3, 17, 8)
    assert tuple(encoder.position_embedding.shape) == (1, 17, 8)
    # token 0 is the class token plus position 0, the same for every image
    t = ops.convert_to_numpy(tokens)
    expected = ops.convert_to_numpy(encoder.cls_token + encoder.position_embedding[:, :1])[0, 0]
    np.testing.assert_allclose(t[:, 0], np.broadcast_to(expected, (3, 8)), atol=1e-6)


def test_attention_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    layer = MultiHeadSelfAttention(num_heads=3)
    out, weights = layer(x, return_attention_scores=True)
    wqkv, bqkv = (ops.convert_to_numpy(v) for v in layer.qkv.weights)
    wo, bo = (ops.convert_to_numpy(v) for v in layer.proj.weights)
    qkv = (x @ wqkv + bqkv).reshape(2, 5, 3, 3, 4).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(4)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ref = (a @ v).transpose(0, 2, 1, 3).reshape(2, 5, 12) @ wo + bo
    np.testing.assert_allclose(ops.convert_to_numpy(out), ref, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(weights), a, atol=1e-6)
    assert tuple(weights.shape) == (2, 3, 5, 5)


def test_attention_with_query_tokens_gives_the_first_rows_of_full_attention():
    x = np.random.default_rng(2).normal(size=(2, 7, 12)).astype("float32")
    layer = MultiHeadSelfAttention(num_heads=3)
    full, full_weights = layer(x, return_attention_scores=True)
    first, weights = layer(x, return_attention_scores=True, query_tokens=2)
    assert tuple(first.shape) == (2, 2, 12) and tuple(weights.shape) == (2, 3, 2, 7)  # keys: every token
    np.testing.assert_allclose(ops.convert_to_numpy(first), ops.convert_to_numpy(full)[:, :2], atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(weights), ops.convert_to_numpy(full_weights)[:, :, :2],
                               atol=1e-6)


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        MultiHeadSelfAttention(num_heads=3)(np.zeros((1, 4, 8), "float32"))


def test_gelu_erf_is_exact_gelu():
    x = np.linspace(-6, 6, 101).astype("float32")
    from math import erf, sqrt

    ref = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x.astype("float64")])
    np.testing.assert_allclose(ops.convert_to_numpy(gelu_erf(x)), ref, atol=1e-6)
    np.testing.assert_allclose(
        ops.convert_to_numpy(gelu_erf(x)), ops.convert_to_numpy(keras.activations.gelu(x, False)), atol=1e-6
    )


def test_encoder_block_is_pre_norm_residual():
    x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype("float32")
    block = TransformerEncoderBlock(num_heads=4, mlp_dim=32)
    out = ops.convert_to_numpy(block(x))
    h = x + ops.convert_to_numpy(block.attn(block.norm1(x)))
    ref = h + ops.convert_to_numpy(block.mlp(block.norm2(h)))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert out.shape == (2, 5, 16)


def test_class_token_only_block_gives_the_full_blocks_class_token_row():
    x = np.random.default_rng(3).normal(size=(3, 6, 16)).astype("float32")
    block = TransformerEncoderBlock(num_heads=4, mlp_dim=32, class_token_only=True)
    pruned = ops.convert_to_numpy(block(x))
    assert pruned.shape == (3, 1, 16)
    assert block.compute_output_shape((None, 6, 16)) == (None, 1, 16)
    with block.every_token():
        full = ops.convert_to_numpy(block(x))
        assert block.compute_output_shape((None, 6, 16)) == (None, 6, 16)
    assert block.class_token_only  # restored on leaving the context
    assert full.shape == (3, 6, 16)
    np.testing.assert_allclose(pruned, full[:, :1], atol=1e-5)
    # the same holds for the gradients reaching the block's input and weights
    grads = {}
    for name, context in (("pruned", contextlib.nullcontext()), ("full", block.every_token())):
        with context:
            grads[name] = _grads_of_class_token(block, x)
    for a, b in zip(grads["pruned"], grads["full"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _grads_of_class_token(block, x):
    """Gradients of ``sum(block(x)[:, 0] * w)`` with respect to ``x`` and every weight (numpy)."""
    w = np.linspace(-1, 1, x.shape[-1]).astype("float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(block(xt)[:, 0] * w)
        grads = tape.gradient(loss, [xt] + [v.value for v in block.trainable_weights])
    elif backend == "jax":
        import jax

        def loss(values, xs):
            outputs, _ = block.stateless_call(values, [], xs)
            return (outputs[:, 0] * w).sum()

        gw, gx = jax.grad(loss, argnums=(0, 1))([v.value for v in block.trainable_weights], x)
        grads = [gx, *gw]
    else:
        import torch

        xt = torch.tensor(x, requires_grad=True)
        (block(xt)[:, 0] * torch.tensor(w)).sum().backward()
        grads = [xt.grad] + [v.value.grad for v in block.trainable_weights]
        for v in block.trainable_weights:
            v.value.grad = None
    return [ops.convert_to_numpy(g) for g in grads]


def test_drop_path_drops_whole_samples_in_training_only():
    x = np.ones((64, 3, 4), "float32")
    layer = DropPath(0.5, seed=1)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), x)
    out = ops.convert_to_numpy(layer(x, training=True))
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # all or nothing per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


def test_token_pooling_modes():
    tokens = np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_array_equal(ops.convert_to_numpy(TokenPooling("token")(tokens)), tokens[:, 0])
    np.testing.assert_allclose(ops.convert_to_numpy(TokenPooling("avg")(tokens)), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pooling must be 'token' or 'avg'"):
        TokenPooling("max")


def _conv_same(x, kernel, stride):
    """NumPy reference of a 'same'-padded convolution (NHWC, HWIO), TensorFlow's padding rule."""
    k = kernel.shape[0]
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    pad_h = max((out_h - 1) * stride + k - x.shape[1], 0)
    pad_w = max((out_w - 1) * stride + k - x.shape[2], 0)
    x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, stride * i:stride * i + k, stride * j:stride * j + k, :]
            out[:, i, j] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize(
    "filters, strides, stride, out_hw",
    [([4, 6], None, 4, (2, 3)), ([4, 5, 6], [1, 2, 2], 4, (2, 3)), ([3, 4], [1, 2], 2, (4, 6))],
)
def test_conv_stem_shrinks_by_its_strides_and_matches_numpy(filters, strides, stride, out_hw):
    stem = ConvStem(filters, strides=strides)
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype("float32")
    out = ops.convert_to_numpy(stem(x, training=False))
    assert out.shape == (2, *out_hw, filters[-1]) == stem.compute_output_shape((2, 8, 12, 3))
    assert stem.stride == stride
    # Inference: BatchNorm with its initial statistics is x / sqrt(1 + eps); then ReLU.
    expected = x.astype(np.float64)
    for (conv, _), s in zip(stem.stages, stem.strides, strict=True):
        kernel = ops.convert_to_numpy(conv.kernel)
        expected = np.maximum(_conv_same(expected, kernel, s) / np.sqrt(1 + 1e-5), 0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_conv_stem_rejects_bad_filters_and_strides():
    with pytest.raises(UserInputError, match="one or more positive filter counts"):
        ConvStem([])
    with pytest.raises(UserInputError, match=r"a stride of 1 or 2 for each of its 2 stages, got \[2, 3\]"):
        ConvStem([4, 8], strides=[2, 3])
    with pytest.raises(UserInputError, match="for each of its 2 stages"):
        ConvStem([4, 8], strides=[2])


@pytest.mark.parametrize(
    "layer",
    [
        PatchExtractor(4),
        ConvStem([8, 16], kernel_size=5, strides=[1, 2]),
        PatchEncoder(num_patches=6, hidden_dim=8, grid_size=(2, 3), dropout=0.1),
        MultiHeadSelfAttention(num_heads=2, qkv_bias=False, attention_dropout=0.1, dropout=0.2),
        MLP(mlp_dim=24, dropout=0.1),
        TransformerEncoderBlock(num_heads=2, mlp_dim=24, drop_path=0.1, layer_norm_epsilon=1e-5),
        TransformerEncoderBlock(num_heads=2, mlp_dim=24, class_token_only=True),
        DropPath(0.3, seed=4),
        TokenPooling("avg", num_prefix_tokens=1),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # through Keras' registry too, as .keras loading does
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
