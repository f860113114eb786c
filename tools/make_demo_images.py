#!/usr/bin/env python
"""Regenerate the demo sample shipped in ms_ppt/demo-data (procedural images: no licence questions).

Each class folder is an ImageNet WordNet id, so the demo exercises the real label mapping.
"""
import os

import numpy as np
from PIL import Image, ImageDraw

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ms_ppt", "demo-data", "val")
CLASSES = ["n01440764", "n02123045", "n03028079", "n04037443", "n07747607", "n09472597"]


def make(seed: int, size=(320, 256)) -> Image.Image:
    rng = np.random.RandomState(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(xx * rng.uniform(2, 12) + rng.uniform(0, 6)) * 0.5 + 0.5,
                     np.cos(yy * rng.uniform(2, 12) + rng.uniform(0, 6)) * 0.5 + 0.5,
                     (xx + yy) / 2], -1)
    img = Image.fromarray((base * rng.uniform(120, 255, size=3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):  # a few objects on a smooth background
        x0, y0 = rng.randint(0, w - 60), rng.randint(0, h - 60)
        box = (x0, y0, x0 + rng.randint(30, 140), y0 + rng.randint(30, 140))
        colour = tuple(int(c) for c in rng.randint(0, 255, 3))
        (draw.ellipse if rng.rand() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def main():
    for i, wnid in enumerate(CLASSES):
        os.makedirs(os.path.join(OUT, wnid), exist_ok=True)
        for j in range(2):
            make(100 * i + j).save(os.path.join(OUT, wnid, f"demo_{j}.jpg"), quality=90)


if __name__ == "__main__":
    main()
