"""Resizing a learned positional embedding to a new patch grid, in NumPy, the way timm does it.

timm resamples ``pos_embed`` with ``torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)``, by default with ``antialias=True`` (PIL-style cubic, ``a = -0.5``, with a
support widened when shrinking); without antialias it is the classic ``a = -0.75`` cubic
convolution. Both are separable, so each is a pair of small matrices applied to the grid. The resize
runs once, at weight-load time, never inside the model graph.
"""

from __future__ import annotations

import math

import numpy as np


def _cubic_pil(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _antialiased_matrix(in_size: int, out_size: int) -> np.ndarray:
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        weights = _cubic_pil((taps - center + 0.5) * inv_scale)
        total = weights.sum()
        matrix[i, lo:hi] = weights / total if total != 0 else 0.0
    return matrix


def _bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        t = src - base
        coeffs = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        )
        for offset, coeff in zip(range(-1, 3), coeffs, strict=True):
            matrix[i, min(max(base + offset, 0), in_size - 1)] += coeff
    return matrix


def resize_matrix(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of a 1-D bicubic resize as torch computes it."""
    if in_size == out_size:
        return np.eye(in_size)
    if antialias:
        return _antialiased_matrix(in_size, out_size)
    return _bicubic_matrix(in_size, out_size)


def resize_grid(grid: np.ndarray, new_size: tuple[int, int], antialias: bool = True) -> np.ndarray:
    """Bicubic resize of a ``(H, W, D)`` grid to ``(new_h, new_w, D)``."""
    h, w, _ = grid.shape
    rows = resize_matrix(h, new_size[0], antialias)
    cols = resize_matrix(w, new_size[1], antialias)
    out = np.einsum("ih,hwd,jw->ijd", rows, grid.astype(np.float64), cols)
    return out.astype(grid.dtype)


def infer_grid(num_positions: int) -> tuple[int, int]:
    """The square grid behind ``num_positions`` patch positions (timm's assumption too)."""
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise ValueError(
            f"Cannot infer the patch grid of a positional embedding with {num_positions} patch "
            "positions: it is not a square. Give the original grid size explicitly."
        )
    return side, side


def resample_position_embedding(
    embedding: np.ndarray,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Resize a ``(1, prefix + H*W, D)`` (or ``(prefix + H*W, D)``) embedding to ``new_grid``.

    The ``num_prefix_tokens`` leading rows (the class token) are kept as they are; the grid part is
    resized bicubically. Matches ``timm.layers.resample_abs_pos_embed`` with the same ``antialias``.
    """
    embedding = np.asarray(embedding)
    squeeze = embedding.ndim == 2
    if squeeze:
        embedding = embedding[None]
    prefix, grid_part = embedding[:, :num_prefix_tokens], embedding[:, num_prefix_tokens:]
    old_grid = tuple(old_grid) if old_grid else infer_grid(grid_part.shape[1])
    new_grid = tuple(int(s) for s in new_grid)
    if old_grid != new_grid:
        dim = grid_part.shape[-1]
        grid = grid_part[0].reshape(old_grid[0], old_grid[1], dim)
        grid = resize_grid(grid, new_grid, antialias).reshape(1, new_grid[0] * new_grid[1], dim)
        grid_part = grid
    out = np.concatenate([prefix, grid_part], axis=1)
    return out[0] if squeeze else out
