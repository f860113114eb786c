"""Resampling a position embedding to another grid, as timm's `resample_abs_pos_embed` does when a checkpoint is
loaded at another image size: prefix tokens (class, distillation) kept, the patch grid resized with PyTorch's
antialiased bicubic interpolation (`F.interpolate(..., mode="bicubic", antialias=True)`) in float32.

Reproduced in NumPy so that both frameworks (and MindSpore without torch) load the same numbers. PyTorch's CPU
kernel computes the filter weights and the weighted sums in float32 with fused multiply-adds, width first, then
height; doing the same here gives its result bit for bit when the grid grows (224 -> 384 checkpoints, the common
case; tested) and, when it shrinks, within one float32 ulp of the embedding's largest value (the weighted sums
cancel, so the difference is not relative to each result).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

_F, _D = np.float32, np.float64


def _fma(a, b, c):
    """float32 a * b + c rounded once (the product of two float32 values is exact in float64)."""
    return _F(_D(a) * _D(b) + _D(c))


def _keys_cubic(x) -> np.float32:
    """PyTorch's antialiasing bicubic filter (Keys, a = -0.5), in float32 with its fused multiply-adds."""
    a = _F(-0.5)
    x = _F(abs(x))
    if x < 1.0:
        t = _fma(_F(a + _F(2)), x, -_F(a + _F(3)))
        return _fma(_F(t * x), x, _F(1))
    if x < 2.0:
        t = _fma(a, x, -_F(_F(5) * a))
        t = _fma(t, x, _F(_F(8) * a))
        return _fma(t, x, -_F(_F(4) * a))
    return _F(0)


def _filter_taps(in_size: int, out_size: int):
    """Per output index: (first input index, float32 weights), as PyTorch's _compute_indices_min_size_weights_aa,
    float/double promotions included."""
    scale = _F(_F(in_size) / _F(out_size))
    support = _F(2.0 * _D(scale)) if scale >= 1.0 else _F(2.0)
    invscale = _F(1.0 / _D(scale)) if scale >= 1.0 else _F(1.0)
    max_taps = int(math.ceil(support)) * 2 + 1
    taps = []
    for i in range(out_size):
        center = _F(_D(scale) * (i + 0.5))
        first = max(int(_D(_F(center - support)) + 0.5), 0)
        count = min(max(min(int(_D(_F(center + support)) + 0.5), in_size) - first, 0), max_taps)
        weights = [_keys_cubic(_F((_D(_F(_F(j + first) - center)) + 0.5) * _D(invscale))) for j in range(count)]
        total = _F(0)
        for w in weights:
            total = _F(total + w)
        if total != 0:
            weights = [_F(w / total) for w in weights]
        taps.append((first, weights))
    return taps


def _resample_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    x = np.moveaxis(x, axis, -1)
    out = np.empty(x.shape[:-1] + (out_size,), _F)
    for i, (first, weights) in enumerate(_filter_taps(x.shape[-1], out_size)):
        acc = (x[..., first] * weights[0]).astype(_F)
        for j in range(1, len(weights)):
            acc = (acc.astype(_D) + x[..., first + j].astype(_D) * _D(weights[j])).astype(_F)
        out[..., i] = acc
    return np.moveaxis(out, -1, axis)


def resample_abs_pos_embed(pos_embed: np.ndarray, new_grid: Tuple[int, int], num_prefix_tokens: int = 1,
                           old_grid: Tuple[int, int] = None) -> np.ndarray:
    """[1, prefix + H*W, C] -> [1, prefix + H'*W', C] (timm's function, antialiased bicubic); the dtype is kept."""
    pos_embed = np.asarray(pos_embed)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    tokens, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(math.sqrt(tokens))
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != tokens:
        raise ValueError(f"pos_embed has {tokens} patch positions, not a {old_grid[0]}x{old_grid[1]} grid")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    x = grid.astype(_F).reshape(old_grid[0], old_grid[1], dim).transpose(2, 0, 1)  # [C, H, W]
    if new_grid[1] != old_grid[1]:
        x = _resample_axis(x, 2, new_grid[1])
    if new_grid[0] != old_grid[0]:
        x = _resample_axis(x, 1, new_grid[0])
    grid = x.transpose(1, 2, 0).reshape(1, new_grid[0] * new_grid[1], dim).astype(pos_embed.dtype)
    return np.concatenate([prefix, grid], axis=1)
