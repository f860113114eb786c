"""mindcv's ImageNet eval preprocessing, per image, for evaluation scripts (`--preprocess mindspore`).

Images are decoded with PIL, not with MindSpore's `vision.Decode`: on a bad file that decoder writes a copy of it
(`abnormal_image.jpg`, `unsupported_image.gif`) into the working folder and can kill the process with SIGFPE on
some truncated JPEGs. PIL gives the same pixels (bit-identical on the 270 shared ImageNet photos, greyscale
included) and raises a catchable error instead. Resize, crop and normalisation are mindcv's own transforms.
"""
from typing import Callable

import numpy as np

from ppt_common.config import data_config, get_arch
from ppt_common.imagenet import ImageError, default_crop_pct, open_rgb


def mindspore_preprocess(model: str) -> Callable[[str], np.ndarray]:
    """path -> [3, img_size, img_size] float32 for a registered model (its DataConfig): PIL decode, then mindcv's
    Resize, CenterCrop, Normalize, HWC2CHW (create_transforms' eval pipeline without its Decode)."""
    from mindcv.data import create_transforms
    from mindspore.dataset import transforms, vision
    img_size, data = get_arch(model).img_size, data_config(model)
    steps = create_transforms(dataset_name="imagenet", image_resize=img_size, is_training=False,
                              crop_pct=default_crop_pct(img_size) if data.crop_pct is None else data.crop_pct,
                              interpolation=data.interpolation, mean=[255 * m for m in data.mean],
                              std=[255 * s for s in data.std])
    if not isinstance(steps[0], vision.Decode):
        raise RuntimeError(f"mindcv's eval transforms no longer start with Decode: {steps}")
    rest = transforms.Compose(steps[1:])

    def run(path: str) -> np.ndarray:
        image = np.asarray(open_rgb(path))
        try:
            return np.ascontiguousarray(rest(image), dtype=np.float32)
        except Exception as e:
            raise ImageError(f"cannot preprocess image {path}: {e}") from e
    return run
