"""What a ViT looks at: class-token attention maps and attention rollout, from attention scores.

These are post-processing helpers (NumPy) for the per-block scores that
:meth:`keras_vit.VisionTransformer.attention_scores` returns, ``depth`` tensors of ``(B, heads, T, T)``
where token 0 is the class token and tokens ``1..N`` are the patches in row-major order.

>>> scores = model.attention_scores(images)                    # doctest: +SKIP
>>> per_head = cls_attention_maps(scores[-1], grid_size(model))  # doctest: +SKIP   (B, heads, gh, gw)
>>> rollout = rollout_cls_map(scores, grid_size(model))         # doctest: +SKIP   (B, gh, gw)

Attention rollout follows Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (2020): per
layer, fuse the heads (mean by default), account for the residual connection as ``0.5 * A + 0.5 * I``,
renormalise the rows, and multiply the layers from the first to the last: ``R = A_L' ... A_1'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_vit.errors import UserInputError

HEAD_FUSIONS = ("mean", "max", "min")


def _to_numpy(tensor: Any) -> np.ndarray:
    """A backend tensor (TensorFlow, JAX, PyTorch) or array as a float64 NumPy array."""
    if not isinstance(tensor, np.ndarray):
        import keras

        tensor = keras.ops.convert_to_numpy(tensor)
    return np.asarray(tensor, dtype=np.float64)


def stack_scores(scores: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Per-block scores (a list of ``(B, heads, T, T)``) as one array ``(depth, B, heads, T, T)``."""
    if isinstance(scores, np.ndarray) and scores.ndim == 5:
        return scores.astype(np.float64)
    layers = [_to_numpy(s) for s in scores]
    if not layers:
        raise UserInputError("No attention scores given: pass the list that model.attention_scores(images) returns.")
    for layer in layers:
        if layer.ndim != 4 or layer.shape[-1] != layer.shape[-2] or layer.shape != layers[0].shape:
            raise UserInputError(
                "Attention scores must be a list of (batch, heads, tokens, tokens) arrays of one shape, "
                f"got shapes {[tuple(x.shape) for x in layers]}."
            )
    return np.stack(layers)


def _check_grid(tokens: int, grid_size: tuple[int, int] | int) -> tuple[int, int]:
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
    if gh * gw != tokens - 1:
        raise UserInputError(
            f"A {gh}x{gw} patch grid needs {gh * gw + 1} tokens (class token + patches), "
            f"but the attention scores have {tokens}."
        )
    return gh, gw


def grid_size(model: Any) -> tuple[int, int]:
    """``(rows, columns)`` of a keras-vit model's patch grid: image size // patch size."""
    h, w = model.image_size
    p = model.patch_size
    return int(h) // int(p), int(w) // int(p)


def cls_attention_maps(layer_scores: Any, grid: tuple[int, int] | int) -> np.ndarray:
    """How much the class token attends to each patch, per head: ``(B, heads, gh, gw)``.

    Args:
        layer_scores: one block's scores ``(B, heads, T, T)`` (e.g. ``model.attention_scores(x)[-1]``).
        grid: the patch grid ``(rows, columns)`` (``T = rows * columns + 1``).
    """
    scores = _to_numpy(layer_scores)
    if scores.ndim != 4:
        raise UserInputError(f"One block's attention scores are (batch, heads, tokens, tokens), got {scores.shape}.")
    gh, gw = _check_grid(scores.shape[-1], grid)
    return scores[:, :, 0, 1:].reshape(scores.shape[0], scores.shape[1], gh, gw)


def attention_rollout(scores: Sequence[Any] | np.ndarray, head_fusion: str = "mean",
                      residual: bool = True) -> np.ndarray:
    """Attention rollout over all blocks: ``(B, T, T)``, row ``i`` = what token ``i`` draws from the input.

    Args:
        scores: per-block scores, a list of ``(B, heads, T, T)`` (first block first) or one
            ``(depth, B, heads, T, T)`` array.
        head_fusion: how heads are combined in each block: ``"mean"``, ``"max"`` or ``"min"``.
        residual: model the skip connection as ``0.5 * A + 0.5 * I`` before renormalising rows.

    Returns:
        ``R = A_L' @ ... @ A_1'`` per image; every row sums to 1.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise UserInputError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}.")
    stacked = stack_scores(scores)
    fused = getattr(stacked, head_fusion)(axis=2)  # (depth, B, T, T)
    tokens = fused.shape[-1]
    rollout = np.broadcast_to(np.eye(tokens), fused.shape[1:]).copy()
    for layer in fused:
        if residual:
            layer = 0.5 * layer + 0.5 * np.eye(tokens)
        layer = layer / layer.sum(axis=-1, keepdims=True)
        rollout = layer @ rollout
    return rollout


def rollout_cls_map(scores: Sequence[Any] | np.ndarray, grid: tuple[int, int] | int,
                    head_fusion: str = "mean", residual: bool = True) -> np.ndarray:
    """The class token's row of :func:`attention_rollout` over the patches: ``(B, gh, gw)``.

    The values are the rolled-out attention of the class token to each patch (they sum, with the
    class token's share of itself, to 1); scale them for display with :func:`normalize_maps`.
    """
    rollout = attention_rollout(scores, head_fusion=head_fusion, residual=residual)
    gh, gw = _check_grid(rollout.shape[-1], grid)
    return rollout[:, 0, 1:].reshape(rollout.shape[0], gh, gw)


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Scale each map (over its last two axes) to ``[0, 1]``; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


def upsample_maps(maps: np.ndarray, patch_size: int) -> np.ndarray:
    """Patch-grid maps ``(..., gh, gw)`` -> pixel maps ``(..., gh * P, gw * P)``, each patch a constant block."""
    p = int(patch_size)
    return np.repeat(np.repeat(np.asarray(maps), p, axis=-2), p, axis=-1)


__all__ = [
    "HEAD_FUSIONS",
    "attention_rollout",
    "cls_attention_maps",
    "grid_size",
    "normalize_maps",
    "rollout_cls_map",
    "stack_scores",
    "upsample_maps",
]
