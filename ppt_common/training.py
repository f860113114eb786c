"""Fine-tuning with PPT, the parts both frameworks share: the authors' recipe, its learning-rate schedule and
weight-decay rule, and the random draws of an epoch.

Every random choice of a training step is a function of (seed, epoch, position in the epoch), never of a
generator's running state: the sample order, each image's augmentation, mixup and the drop-path draws. So a run
resumed at an epoch boundary repeats exactly what the uninterrupted run would have done, and N data-parallel
ranks with batch b see the same global batches, augmented the same way, as one process with batch N*b.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ppt_common.distributed import World
from ppt_common.options import PROBABILITY, RATE, ModelOptions, at_least, between, option, positive

# names timm's DeiT leaves undecayed besides every 1-D tensor and bias (VisionTransformer.no_weight_decay())
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """DeiT's training defaults (facebookresearch/deit main.py) with the PPT authors' fine-tuning changes (30
    epochs, lr 1e-5 per 512 images; their run: 4 GPUs x 256, `--r_tokens 50 --threshold 6e-5 --pp_loc_list 3 6 9`)."""
    epochs: int = 30
    batch_size: int = 256  # per process
    lr: float = 1e-5  # per 512 images of global batch (DeiT scales lr by global batch / 512)
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    clip_grad: Optional[float] = None
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    aa: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    train_interpolation: str = "bicubic"
    repeated_aug: int = 3  # each image this many times per epoch, spread over ranks (DeiT's RASampler)
    drop_path: float = 0.1
    drop: float = 0.0
    model_ema_decay: float = 0.99996
    seed: int = 0


RECIPE = Recipe()


@dataclasses.dataclass
class TrainOptions(ModelOptions):
    """What to fine-tune, on what, and how: the options of train_ms.py (underscores for dashes). The recipe's
    defaults are DeiT's with the PPT authors' fine-tuning values (ppt_common.training.Recipe)."""
    threshold: float = option(6e-5, at_least(0))  # the authors' fine-tuning value (7e-5: their evaluation default)
    resume: Optional[str] = None  # weights to fine-tune, or this trainer's checkpoint.ckpt to continue exactly
    finetune: Optional[str] = None  # weights to start from (a checkpoint.ckpt's weights only)
    data_path: Optional[str] = None  # a root holding train/ and val/
    train_path: Optional[str] = None  # instead of DATA_PATH/train
    val_path: Optional[str] = None  # instead of DATA_PATH/val
    output_dir: Optional[str] = None  # checkpoint.ckpt and log.txt, rewritten atomically after every epoch
    num_classes: Optional[int] = option(None, positive)  # the head; default: the data's classes (ImageNet: 1000)
    force: bool = False
    epochs: int = option(RECIPE.epochs, positive)
    batch_size: int = option(RECIPE.batch_size, positive)  # per process
    lr: float = option(RECIPE.lr, positive)  # per 512 images: scaled by the global batch / 512
    min_lr: float = option(RECIPE.min_lr, at_least(0))
    warmup_lr: float = option(RECIPE.warmup_lr, at_least(0))
    warmup_epochs: int = option(RECIPE.warmup_epochs, at_least(0))
    weight_decay: float = option(RECIPE.weight_decay, at_least(0))
    opt_eps: float = option(RECIPE.opt_eps, positive)
    opt_betas: Sequence[float] = option(RECIPE.opt_betas, RATE)
    clip_grad: Optional[float] = option(RECIPE.clip_grad, positive)
    smoothing: float = option(RECIPE.smoothing, RATE)
    mixup: float = option(RECIPE.mixup, at_least(0))
    cutmix: float = option(RECIPE.cutmix, at_least(0))
    mixup_prob: float = option(RECIPE.mixup_prob, PROBABILITY)
    mixup_switch_prob: float = option(RECIPE.mixup_switch_prob, PROBABILITY)
    aa: str = RECIPE.aa
    reprob: float = option(RECIPE.reprob, PROBABILITY)
    train_interpolation: str = RECIPE.train_interpolation
    repeated_aug: int = option(RECIPE.repeated_aug, at_least(1))
    drop_path: float = option(RECIPE.drop_path, RATE)
    drop: float = option(RECIPE.drop, RATE)
    model_ema: bool = True
    model_ema_decay: float = option(RECIPE.model_ema_decay, PROBABILITY)
    seed: int = option(RECIPE.seed, between(0, 2**32 - 1))
    num_workers: int = option(2, at_least(0))  # processes augmenting images (0: in this process)
    mode: str = "graph"
    device: str = "CPU"
    dtype: str = "float32"
    amp_level: str = "O0"  # MindSpore mixed precision (O2 for Ascend); PPT's scoring stays float32
    loss_scale: Optional[float] = option(None, positive)  # static loss scale (default 1, or 1024 with amp_level)
    limit: Optional[int] = option(None, positive)  # use only the first N training and validation images
    on_error: str = "skip"  # an unreadable image: left out and counted ("skip"), or refused before training ("fail")
    quiet: bool = False


def scaled_lr(lr: float, global_batch: int) -> float:
    """DeiT's linear scaling: the lr option is per 512 images."""
    return lr * global_batch / 512.0


def timm_cosine_lr(t: int, peak: float, epochs: int, warmup_epochs: int, warmup_lr: float, min_lr: float) -> float:
    """timm's CosineLRScheduler (t_in_epochs, one cycle, no warm-up prefix) at epoch t, as DeiT creates it."""
    if t < warmup_epochs:
        return warmup_lr + t * (peak - warmup_lr) / warmup_epochs
    if t >= epochs:
        return min_lr
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / epochs))


def epoch_lr(epoch: int, peak: float, recipe: Recipe = RECIPE, epochs: Optional[int] = None) -> float:
    """The lr DeiT's main.py trains epoch `epoch` with. It is constant over the epoch: the scheduler starts at
    warmup_lr and is stepped with the finished epoch's number after each epoch, so epoch e > 0 runs at the
    schedule's value for e - 1 (epochs 0 and 1 both at warmup_lr). Kept, so the authors' runs are reproduced."""
    epochs = recipe.epochs if epochs is None else epochs
    if epoch == 0 and recipe.warmup_epochs > 0:
        return recipe.warmup_lr
    return timm_cosine_lr(max(epoch - 1, 0), peak, epochs, recipe.warmup_epochs, recipe.warmup_lr, recipe.min_lr)


def describe_lr_schedule(recipe: Recipe, lr: float, global_batch: int) -> Tuple[str, Optional[str]]:
    """(the lr schedule actually used, in one line; a warning when DeiT's scaling makes it misleading). DeiT
    scales --lr by the global batch / 512 but not --min-lr or --warmup-lr (kept for parity with the authors'
    runs), so at a small global batch the scaled lr can fall below them and the "cosine" rises."""
    peak = scaled_lr(lr, global_batch)
    lrs = [epoch_lr(e, peak, recipe) for e in range(recipe.epochs)]
    highest = max(range(len(lrs)), key=lrs.__getitem__)
    text = (f"lr schedule: --lr {lr:g} x global batch {global_batch} / 512 = {peak:.3g}; warm-up from "
            f"{recipe.warmup_lr:.3g} over {recipe.warmup_epochs} epochs, cosine to {recipe.min_lr:.3g} over "
            f"{recipe.epochs}; used: epoch 0 {lrs[0]:.3g}, highest {lrs[highest]:.3g} (epoch {highest}), last "
            f"{lrs[-1]:.3g}")
    low = [f"{name} {value:.3g}" for name, value in (("--warmup-lr", recipe.warmup_lr), ("--min-lr", recipe.min_lr))
           if peak < value]
    warning = None if not low else (
        f"the scaled lr {peak:.3g} is below {' and '.join(low)}: the schedule rises instead of decaying and its "
        f"highest lr is {lrs[highest]:.3g}; DeiT scales --lr by the global batch / 512 but not --min-lr or "
        "--warmup-lr (raise --lr, or lower those two)")
    return text, warning


def capped_r(arch, cfg) -> Optional[str]:
    """Which requested r the schedule capped (at half the patches a block sees), or None."""
    from ppt_common.config import arch_schedule
    requested = cfg.r_per_pp_block(arch.depth)
    applied = [p.r for p in arch_schedule(arch, cfg) if p.is_pp]
    return None if requested == applied else (f"r {requested} at blocks {list(cfg.pp_loc_list)} is capped at half "
                                              f"the patches each block sees: {applied}")


def decays(name: str, ndim: int) -> bool:
    """timm's weight-decay rule for DeiT: no decay on 1-D tensors (norms, LayerScale), biases and the embeddings
    the model names in no_weight_decay()."""
    return not (ndim <= 1 or name.endswith(".bias") or name in NO_WEIGHT_DECAY)


def epoch_order(num_items: int, epoch: int, seed: int, repeats: int) -> np.ndarray:
    """The epoch's item order: a permutation, each item repeated `repeats` times in a row (DeiT's RASampler
    hands the copies to different ranks)."""
    perm = np.random.default_rng([seed, epoch, 0]).permutation(num_items)
    return np.repeat(perm, max(repeats, 1))


def rank_steps(num_items: int, epoch: int, seed: int, repeats: int, batch_size: int,
               world: World) -> List[Tuple[np.ndarray, np.ndarray]]:
    """This rank's steps of an epoch: [(item indices, positions in the global batch)], batch_size each, the last
    incomplete step dropped. An epoch shows ceil(num_items / ranks) images per rank (timm's RepeatAugSampler);
    rank r takes every ranks-th entry of the epoch order, so global batch s is the same images in any
    world size with the same global batch."""
    order = epoch_order(num_items, epoch, seed, repeats)
    per_rank = -(-num_items // world.size)
    order = np.resize(order, max(len(order), per_rank * world.size))[:per_rank * world.size]
    steps = []
    global_batch = batch_size * world.size
    for s in range(per_rank // batch_size):
        positions = np.arange(world.rank, global_batch, world.size)
        steps.append((order[s * global_batch + positions], positions))
    return steps


def sample_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The seed of one image's augmentation: its place in the run, not the rank that loads it."""
    return int(np.random.SeedSequence([seed, epoch, step, position, 1]).generate_state(1)[0] & 0x7FFFFFFF)


def step_rng(seed: int, epoch: int, step: int, stream: int) -> np.random.Generator:
    """A generator for one step's draws of one kind (stream 2: mixup, 3: drop path)."""
    return np.random.default_rng([seed, epoch, step, stream])


def drop_path_draws(seed: int, epoch: int, step: int, depth: int, positions: np.ndarray,
                    global_batch: int) -> np.ndarray:
    """Uniform draws deciding stochastic depth, [depth, 2, batch] float32 (two residual branches per block), for
    the images at `positions` of the global batch."""
    draws = step_rng(seed, epoch, step, 3).random((depth, 2, global_batch), dtype=np.float32)
    return np.ascontiguousarray(draws[:, :, positions])


def parameter_groups(names_and_ndims: Iterable[Tuple[str, int]]) -> Tuple[List[str], List[str]]:
    """(decayed, undecayed) parameter names by `decays`."""
    decayed, undecayed = [], []
    for name, ndim in names_and_ndims:
        (decayed if decays(name, ndim) else undecayed).append(name)
    return decayed, undecayed
