"""Attention maps and rollout against hand-computed examples, and on a real (tiny) model's scores."""

from __future__ import annotations

import numpy as np
import pytest

from keras_vit.attention_maps import (
    attention_rollout,
    cls_attention_maps,
    grid_size,
    normalize_maps,
    rollout_cls_map,
    upsample_maps,
)
from keras_vit.errors import UserInputError


def _scores(*layers):
    """Layers given as (heads, T, T) lists -> list of (1, heads, T, T) arrays."""
    return [np.asarray(layer, np.float64)[None] for layer in layers]


def test_rollout_two_layers_by_hand():
    a1 = [[[0.5, 0.5], [0.2, 0.8]]]
    a2 = [[[1.0, 0.0], [0.4, 0.6]]]
    # with the residual: A1' = [[.75, .25], [.1, .9]], A2' = [[1, 0], [.2, .8]]
    # R = A2' @ A1' = [[.75, .25], [.2*.75 + .8*.1, .2*.25 + .8*.9]] = [[.75, .25], [.23, .77]]
    rollout = attention_rollout(_scores(a1, a2))
    np.testing.assert_allclose(rollout[0], [[0.75, 0.25], [0.23, 0.77]], atol=1e-12)


def test_rollout_without_residual_is_the_plain_product():
    a1 = np.array([[0.5, 0.5], [0.2, 0.8]])
    a2 = np.array([[0.9, 0.1], [0.4, 0.6]])
    rollout = attention_rollout(_scores([a1], [a2]), residual=False)
    np.testing.assert_allclose(rollout[0], a2 @ a1, atol=1e-12)
    np.testing.assert_allclose(rollout[0], [[0.47, 0.53], [0.32, 0.68]], atol=1e-12)


def test_heads_are_fused_before_the_product():
    head_a = [[1.0, 0.0], [0.0, 1.0]]
    head_b = [[0.0, 1.0], [1.0, 0.0]]
    # mean of the heads is 0.5 everywhere; + residual -> [[.75, .25], [.25, .75]]
    rollout = attention_rollout(_scores([head_a, head_b]), head_fusion="mean")
    np.testing.assert_allclose(rollout[0], [[0.75, 0.25], [0.25, 0.75]], atol=1e-12)
    # max is all ones: 0.5 * 1 + 0.5 * I = [[1, .5], [.5, 1]], rows renormalised -> [[2/3, 1/3], [1/3, 2/3]]
    np.testing.assert_allclose(attention_rollout(_scores([head_a, head_b]), head_fusion="max")[0],
                               [[2 / 3, 1 / 3], [1 / 3, 2 / 3]], atol=1e-12)
    # min is all zeros: only the residual is left -> identity
    np.testing.assert_allclose(attention_rollout(_scores([head_a, head_b]), head_fusion="min")[0], np.eye(2))


def test_rollout_rows_sum_to_one_and_cls_map_is_row_zero():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 4, 5, 5))  # depth 3, batch 2, 4 heads, 1 + 2x2 tokens
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    rollout = attention_rollout(list(attn))
    assert rollout.shape == (2, 5, 5)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-12)
    cls_map = rollout_cls_map(list(attn), (2, 2))
    np.testing.assert_allclose(cls_map, rollout[:, 0, 1:].reshape(2, 2, 2))


def test_cls_attention_maps_are_row_major_per_head():
    scores = np.zeros((1, 2, 7, 7))  # 2 heads, class token + 2x3 patches
    scores[0, 0, 0, 1:] = [1, 2, 3, 4, 5, 6]
    scores[0, 1, 0, 1:] = [6, 5, 4, 3, 2, 1]
    maps = cls_attention_maps(scores, (2, 3))
    assert maps.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(maps[0, 0], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(maps[0, 1], [[6, 5, 4], [3, 2, 1]])


def test_normalize_and_upsample():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    np.testing.assert_allclose(normalize_maps(maps), [[[0, 0.5], [0.25, 1]], [[0, 0], [0, 0]]])
    up = upsample_maps(np.array([[1, 2], [3, 4]]), 2)
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


def test_bad_inputs_get_clear_errors():
    with pytest.raises(UserInputError, match="A 3x3 patch grid needs 10 tokens"):
        cls_attention_maps(np.zeros((1, 1, 5, 5)), 3)
    with pytest.raises(UserInputError, match="head_fusion must be one of mean, max, min, got 'sum'"):
        attention_rollout([np.zeros((1, 1, 2, 2))], head_fusion="sum")
    with pytest.raises(UserInputError, match="No attention scores given"):
        attention_rollout([])
    with pytest.raises(UserInputError, match="of one shape"):
        attention_rollout([np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3))])


@pytest.mark.backends
def test_on_a_model_attention_scores():
    import keras_vit

    model = keras_vit.create_model("vit_mnist", depth=2)
    images = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32")
    scores = model.attention_scores(images)
    grid = grid_size(model)
    assert grid == (4, 4)
    per_head = cls_attention_maps(scores[-1], grid)
    assert per_head.shape == (3, model.num_heads, 4, 4)
    # a softmax row over 17 tokens: the class token's share of the patches is below 1
    assert np.all(per_head.sum(axis=(-2, -1)) <= 1 + 1e-6)
    rollout = attention_rollout(scores)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)
    assert rollout_cls_map(scores, grid).shape == (3, 4, 4)
