"""mindcv's ImageNet preprocessing per image: eval (`--preprocess mindspore`) and training augmentation.

Images are decoded with PIL, not with MindSpore's `vision.Decode`: on a bad file that decoder writes a copy of it
(`abnormal_image.jpg`, `unsupported_image.gif`) into the working folder and can kill the process with SIGFPE on
some truncated JPEGs. PIL gives the same pixels (bit-identical on the 270 shared ImageNet photos, greyscale
included) and raises a catchable error instead. Resize, crop and normalisation are mindcv's own transforms.
"""
import dataclasses
import functools
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from ppt_common.config import data_config, get_arch, model_arch
from ppt_common.imagenet import ImageError, default_crop_pct, open_rgb


def eval_preprocess(model: str, kind: str, img_size: Optional[int] = None) -> Callable[[str], np.ndarray]:
    """The eval tools' --preprocess: 'mindspore' (mindcv's pipeline) or 'pil' (bit-identical to timm's)."""
    if kind == "pil":
        from ppt_common.data import pil_preprocess
        return pil_preprocess(model, img_size)
    return mindspore_preprocess(model, img_size)


def mindspore_preprocess(model: str, img_size: Optional[int] = None) -> Callable[[str], np.ndarray]:
    """path -> [3, img_size, img_size] float32 for a registered model (its DataConfig): PIL decode, then mindcv's
    Resize, CenterCrop, Normalize, HWC2CHW (create_transforms' eval pipeline without its Decode)."""
    from mindcv.data import create_transforms
    from mindspore.dataset import transforms, vision
    img_size, data = model_arch(model, img_size).img_size, data_config(model)
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


def mindcv_auto_augment(aa: Optional[str]) -> Optional[str]:
    """timm's auto-augment names (DeiT's --aa rand-m9-mstd0.5-inc1) in mindcv's spelling (randaug-m9-...)."""
    if not aa or aa.lower() == "none":
        return None
    return "randaug" + aa[len("rand"):] if aa.startswith("rand-") else aa


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """mindcv's ImageNet training transforms (random resized crop, flip, RandAugment, normalise, random erasing)
    for one image with its own seed, so the result depends on the image's place in the run, not on which worker
    or rank loads it. Picklable: it runs in worker processes. Decoding is PIL's (see above), so the random crop
    is mindcv's RandomResizedCrop in place of its RandomCropDecodeResize."""
    img_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    aa: Optional[str] = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    interpolation: str = "bicubic"

    def __call__(self, path: str, seed: int) -> np.ndarray:
        import mindspore.dataset as ds
        steps = _train_steps(self)
        image = np.asarray(open_rgb(path))
        ds.config.set_seed(seed)  # MindSpore's random ops, and Python's and NumPy's generators (RandAugment)
        try:
            for step in steps:
                image = step(image)
        except Exception as e:
            raise ImageError(f"cannot augment image {path}: {e}") from e
        return np.ascontiguousarray(image, dtype=np.float32)


def train_transform(model: str, aa: Optional[str], reprob: float, interpolation: str,
                    img_size: Optional[int] = None) -> TrainTransform:
    data = data_config(model)
    return TrainTransform(img_size or get_arch(model).img_size, tuple(255 * m for m in data.mean),
                          tuple(255 * s for s in data.std), aa, reprob, interpolation)


@functools.lru_cache(maxsize=4)
def _train_steps(t: TrainTransform):
    from mindcv.data import create_transforms
    from mindspore.dataset import vision
    primary, secondary, final = create_transforms(
        dataset_name="imagenet", image_resize=t.img_size, is_training=True, auto_augment=mindcv_auto_augment(t.aa),
        interpolation=t.interpolation, re_prob=t.reprob, re_value="random", mean=list(t.mean), std=list(t.std),
        separate=True)
    crop = primary[0]
    if not isinstance(crop, vision.RandomCropDecodeResize):
        raise RuntimeError(f"mindcv's train transforms no longer start with RandomCropDecodeResize: {primary}")
    inter = getattr(vision.Inter, t.interpolation.upper(), vision.Inter.BILINEAR)
    return [vision.RandomResizedCrop(t.img_size, scale=(0.08, 1.0), ratio=(0.75, 1.333), interpolation=inter)] \
        + primary[1:] + secondary + final


def mix_with_mirror(mixup, images: np.ndarray, labels: np.ndarray, mirror_images: np.ndarray,
                    mirror_labels: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """mindcv's Mixup in batch mode (mixup or cutmix with the batch reversed, timm's rule), seen from one rank of
    the global batch: image i is mixed with the global batch's mirror image, which the mirror rank's batch holds
    at index b - 1 - i (in one process the mirror batch is the batch itself, and this is mindcv's own
    arithmetic, draw for draw). Labels are class indices; returns (images, soft targets) as float32."""
    from mindcv.data.mixup import cutmix_bbox_and_lam, one_hot
    lam, use_cutmix = mixup._params_per_batch()  # numpy's global generator, seeded per step by the trainer
    mirrored = np.flip(mirror_images, axis=0)
    images = images.copy()
    if lam != 1.0:
        if use_cutmix:
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(images.shape, lam, ratio_minmax=mixup.cutmix_minmax,
                                                        correct_lam=mixup.correct_lam)
            images[:, :, yl:yh, xl:xh] = mirrored[:, :, yl:yh, xl:xh]
        else:
            images = images * lam + mirrored * (1.0 - lam)
    targets = one_hot(labels, num_classes) * lam + one_hot(np.flip(mirror_labels, axis=0), num_classes) * (1.0 - lam)
    return images.astype(np.float32), targets.astype(np.float32)


def _worker_signals():
    """Workers leave Ctrl-C and termination to the training process, which shuts them down (a terminal's Ctrl-C
    reaches the whole process group, and each worker would print its own traceback)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _load(job):
    transform, path, seed = job
    return transform(path, seed)


class TrainLoader:
    """Batches of augmented training images, loaded ahead of the step that needs them: in `num_workers` worker
    processes (spawned, so no MindSpore state is forked), or in this process with 0. An unreadable image stops
    training with its name: skipping it would silently change every later batch."""

    def __init__(self, transform: TrainTransform, num_workers: int, prefetch: int = 2):
        self.transform, self.prefetch = transform, prefetch
        self.pool = None
        if num_workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self.pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_signals)

    def batches(self, jobs: Sequence[Sequence[Tuple[str, int]]]) -> Iterator[np.ndarray]:
        """jobs: per batch, the (path, seed) of each image; yields [B, 3, H, W] float32 in order."""
        if self.pool is None:
            for batch in jobs:
                yield np.stack([self.transform(path, seed) for path, seed in batch])
            return
        pending = []
        for batch in jobs:
            pending.append([self.pool.submit(_load, (self.transform, path, seed)) for path, seed in batch])
            if len(pending) > self.prefetch:
                yield np.stack([f.result() for f in pending.pop(0)])
        for futures in pending:
            yield np.stack([f.result() for f in futures])

    def close(self) -> None:
        if self.pool is not None:  # waiting: workers left running write to closed pipes at exit ("Bad file descriptor")
            self.pool.shutdown(wait=True, cancel_futures=True)
