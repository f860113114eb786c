"""ImageNet folders, labels by WordNet id, and the timm/DeiT eval transform on PIL images in NumPy.

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


SPLITS = ("train", "val")


def image_root(data_path: str, split: Optional[str] = None) -> str:
    """The folder whose class folders hold the images: `data_path` as named, or, given a split, an ImageNet root's
    `data_path/split` when there is one (evaluation's --data-path ROOT reads ROOT/val)."""
    if not os.path.exists(data_path):
        raise FileNotFoundError(f"data path does not exist: {data_path}")
    if not os.path.isdir(data_path):
        raise NotADirectoryError(f"data path is not a folder: {data_path}")
    if split and os.path.isdir(os.path.join(data_path, split)):
        return os.path.join(data_path, split)
    return data_path


def find_images(data_path: str, split: Optional[str] = None, limit: Optional[int] = None) -> List[Tuple[str, int]]:
    """(path, label) for the images of a folder of WordNet-id class folders: `data_path` as named, or with a split
    an ImageNet root's `data_path/split` (image_root). The only image lister: every tool reads its images here.

    Labels are the standard 1000-class indices of the folder names, whichever classes are present.
    """
    root = image_root(data_path, split)
    labels = wnid_to_label()
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected ImageNet layout: val/<wnid>/*.JPEG or <wnid>/*.JPEG)")
    splits = [d for d in folders if d in SPLITS]
    if splits:  # a root named where its class folders were expected: say which folder to name
        raise ValueError(f"{root} holds {' and '.join(d + '/' for d in splits)} rather than class folders: name "
                         f"{os.path.join(root, splits[0])} itself")
    unknown = [d for d in folders if d not in labels]
    if unknown:
        raise ValueError(f"{root}: folder names are not ImageNet WordNet ids: {', '.join(unknown[:5])}"
                         + (" ..." if len(unknown) > 5 else ""))
    items = []
    for d in folders:
        for fname in sorted(os.listdir(os.path.join(root, d))):
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                items.append((os.path.join(root, d, fname), labels[d]))
    if not items:
        raise ValueError(f"{root}: class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    return items[:limit] if limit else items


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
