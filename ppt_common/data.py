"""The eval tools' images: listing them once each, decoding in threads, batching."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ppt_common.config import DEMO_DATA, data_config, model_arch
from ppt_common.datasets import Classes, find_images, same_classes
from ppt_common.imagenet import ImageError, preprocess_pil
from ppt_common.options import EvalOptions, UsageError


def is_demo(options: EvalOptions) -> bool:
    return options.data_path is None


def load_items(options: EvalOptions, labelled: bool = True) -> Tuple[List[Tuple[str, int]], Classes]:
    """The images of every --data-path, each file once (a folder given twice, or a root and its val/, would
    otherwise count its images twice), and their classes (every folder must name the same ones). With
    labelled=False, plain folders of images as well, unlabelled (datasets.find_images)."""
    try:
        listed = [(path, find_images(path, split="val", labelled=labelled))
                  for path in (options.data_path or [DEMO_DATA])]
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise UsageError(str(e)) from None
    classes = same_classes([(path, classes) for path, (_, classes) in listed])
    found = [it for _, (items, _) in listed for it in items]
    items, seen = [], set()
    for path, label in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            items.append((path, label))
    if len(items) < len(found):
        print(f"note: {len(found) - len(items)} images reached through more than one --data-path are counted once",
              file=sys.stderr)
    return (items[:options.limit] if options.limit else items), classes


def iter_batches(items: Sequence[Tuple[str, int]], batch_size: int, preprocess: Callable[[str], np.ndarray],
                 num_workers: int, on_error: str, skipped: List[str]) -> Iterator[Tuple[np.ndarray, np.ndarray, list]]:
    """Decode in threads; yields (images [B,3,H,W] float32, labels, paths). Unreadable images are skipped
    (and appended to `skipped`) or raise, per on_error."""
    def load(item):
        try:
            return preprocess(item[0]), item
        except (ImageError, OSError) as e:
            if on_error == "fail":
                raise UsageError(f"unreadable image: {e}") from None
            print(f"warning: skipped: {e}", file=sys.stderr)
            skipped.append(item[0])
            return None, item

    pool = ThreadPoolExecutor(max(num_workers, 1))
    try:
        for start in range(0, len(items), batch_size):
            loaded = [(a, it) for a, it in pool.map(load, items[start:start + batch_size]) if a is not None]
            if loaded:
                yield (np.stack([a for a, _ in loaded]), np.array([it[1] for _, it in loaded]),
                       [it[0] for _, it in loaded])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no thread left reading when the caller moves on


def pil_preprocess(model: str, img_size: Optional[int] = None) -> Callable[[str], np.ndarray]:
    """The model's eval transform (its DataConfig, at img_size) on PIL images, bit-identical to timm/torchvision."""
    arch, data = model_arch(model, img_size), data_config(model)
    return lambda path: preprocess_pil(path, arch.img_size, data.crop_pct, data.mean, data.std)
