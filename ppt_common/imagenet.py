"""ImageNet's classes by WordNet id, image checks, and the timm/DeiT eval transform on PIL images in NumPy
(folders of images are listed by ppt_common.datasets).

`preprocess_pil` is bit-identical to torchvision's Resize(256, bicubic) + CenterCrop(224) + ToTensor + Normalize
(tested), so both frameworks can be fed the very same arrays.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

import numpy as np

from ppt_common import config
from ppt_common.errors import ImageError

IMAGENET_MEAN = np.array(config.IMAGENET_MEAN, dtype=np.float32)
IMAGENET_STD = np.array(config.IMAGENET_STD, dtype=np.float32)
DEFAULT_CROP_PCT = 0.875
NUM_CLASSES = 1000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
_SYNSET_FILE = os.path.join(os.path.dirname(__file__), "imagenet_synset_words.txt")


def load_synsets() -> List[Tuple[str, str]]:
    """The 1000 (wnid, class name) pairs in standard label order (sorted WordNet ids)."""
    with open(_SYNSET_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split(" ", 1) for line in f if line.strip()]
    return [(r[0], r[1] if len(r) > 1 else r[0]) for r in rows]


def wnid_to_label() -> dict:
    return {wnid: i for i, (wnid, _) in enumerate(load_synsets())}


def class_names() -> List[str]:
    return [name.split(",")[0] for _, name in load_synsets()]


def unreadable(path: str) -> Optional[str]:
    """Why the file cannot be a whole image, found without decoding it (the header, PIL's verify, and for a JPEG its
    end-of-image marker, which a truncated file lacks); None if it looks whole."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.verify()
            fmt = img.format
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(os.path.getsize(path) - 1024, 0))
                if b"\xff\xd9" not in f.read():  # in entropy-coded data 0xFF is always stuffed, so this is EOI
                    return "truncated JPEG (no end-of-image marker)"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def check_images(items: List[Tuple[str, int]], num_workers: int = 2
                 ) -> Tuple[List[Tuple[str, int]], List[Tuple[str, str]]]:
    """(the items whose files look whole, [(path, why) of the others]), checked in threads."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max(num_workers, 1)) as pool:
        problems = list(pool.map(unreadable, [path for path, _ in items]))
    good = [item for item, problem in zip(items, problems) if problem is None]
    return good, [(item[0], problem) for item, problem in zip(items, problems) if problem is not None]


def default_crop_pct(img_size: int) -> float:
    """timm's eval crop for DeiT: 0.875 at 224, the full image (1.0) at 384."""
    return 1.0 if img_size >= 384 else DEFAULT_CROP_PCT


def eval_sizes(img_size: int = 224, crop_pct: float = DEFAULT_CROP_PCT) -> Tuple[int, int]:
    """(resize of the shorter side, crop): 256 and 224 for DeiT at 224, as timm computes them."""
    return int(math.floor(img_size / crop_pct)), img_size


def open_rgb(path: str):
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")  # greyscale, CMYK, palette, RGBA all become RGB
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def preprocess_pil(path: str, img_size: int = 224, crop_pct: Optional[float] = None,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """[3, img_size, img_size] float32, exactly torchvision's eval transform on the PIL image."""
    from PIL import Image
    img = open_rgb(path)
    resize, crop = eval_sizes(img_size, default_crop_pct(img_size) if crop_pct is None else crop_pct)
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    img = img.resize((new_w, new_h), Image.BICUBIC)
    if new_w < crop or new_h < crop:  # torchvision pads; only possible with odd crop_pct
        raise ImageError(f"{path}: resized image {new_w}x{new_h} is smaller than the crop {crop}")
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
