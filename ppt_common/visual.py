"""Where each original patch went: token maps from a trace, and the paper's figure-5 style picture (Pillow only).

`token_maps` composes the per-block dest maps, so it works the same for both frameworks' traces; the picture is a
pure function of the image and the maps, so identical traces give identical pictures.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ppt_common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ppt_common.trace import POLICY_NAMES, BlockTrace


def token_maps(traces: Sequence[BlockTrace], i: int) -> List[np.ndarray]:
    """For image i, after each PP block: the token holding every original token (CLS + patches) [N0], -1 if
    that original token was pruned."""
    if not traces:
        return []
    current = np.arange(traces[0].tokens_in)
    maps = []
    for t in traces:
        dest = t.dest[i]
        current = np.where(current >= 0, dest[np.maximum(current, 0)], -1)
        maps.append(current.copy())
    return maps


def group_sizes(token_map: np.ndarray, num_tokens: int) -> np.ndarray:
    """How many original tokens each surviving token holds (the size the model tracks)."""
    return np.bincount(token_map[token_map >= 0], minlength=num_tokens).astype(np.float64)


def to_uint8(image_chw: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Undo the normalisation (ImageNet's unless given): [3,H,W] float -> [H,W,3] uint8."""
    rgb = image_chw.transpose(1, 2, 0).astype(np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def render_panel(rgb: np.ndarray, token_map: np.ndarray, patch: int, scale: int) -> np.ndarray:
    """Pruned patches black; each pooled group in its mean colour; outlines where groups meet."""
    grid = rgb.shape[0] // patch
    ids = token_map[-grid * grid:].reshape(grid, grid)  # the patches: after the prefix tokens
    patches = rgb.reshape(grid, patch, grid, patch, 3).astype(np.float64)
    means = patches.mean(axis=(1, 3))  # [grid, grid, 3]
    out = np.zeros((grid, grid, 3))
    for tok in np.unique(ids[ids >= 0]):
        mask = ids == tok
        out[mask] = means[mask].mean(0)
    cell = patch * scale
    img = np.repeat(np.repeat(out, cell, 0), cell, 1)
    edge = np.array([255, 255, 255])
    for y in range(grid):
        for x in range(grid):
            if ids[y, x] < 0:
                continue
            if x + 1 < grid and ids[y, x + 1] != ids[y, x]:
                img[y * cell:(y + 1) * cell, (x + 1) * cell - 1] = edge
            if y + 1 < grid and ids[y + 1, x] != ids[y, x]:
                img[(y + 1) * cell - 1, x * cell:(x + 1) * cell] = edge
    return img.astype(np.uint8)


def render_figure(images: np.ndarray, traces: Sequence[BlockTrace], patch: int, scale: int = 1,
                  labels: Sequence[str] = (), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> "Image.Image":
    """One row per image: the input, then the token map after each PP block, the policy written above."""
    from PIL import Image, ImageDraw
    n, size = images.shape[0], images.shape[2] * scale
    title, pad = 14, 4
    cols = 1 + len(traces)
    canvas = Image.new("RGB", (cols * (size + pad) + pad, n * (size + title + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        rgb = to_uint8(images[i], mean, std)
        top = pad + i * (size + title + pad)
        panels = [(labels[i] if i < len(labels) else "input", np.repeat(np.repeat(rgb, scale, 0), scale, 1))]
        for t, m in zip(traces, token_maps(traces, i)):
            policy = POLICY_NAMES[int(t.policy[i])]
            panels.append((f"block {t.block}: {policy} ({t.tokens_out} tokens)", render_panel(rgb, m, patch, scale)))
        for j, (text, arr) in enumerate(panels):
            left = pad + j * (size + pad)
            draw.text((left, top), text, fill="black")
            canvas.paste(Image.fromarray(arr), (left, top + title))
    return canvas
