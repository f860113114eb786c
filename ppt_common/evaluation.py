"""The loop shared by scripts/eval_ms.py and scripts/eval_pt.py (timm's validate.py shape), and the one import
the tools use: the options' checks (ppt_common.options), images (ppt_common.data) and results (ppt_common.report)
are re-exported here. The command-line options themselves are ppt_cli.options.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ppt_common.config import PPTConfig
from ppt_common.datasets import Classes, check_classes
from ppt_common.data import is_demo, iter_batches, load_items, pil_preprocess
from ppt_common.distributed import SINGLE, World, gather_objects, shard
from ppt_common.options import EvalOptions, UsageError, check_args, check_weights, ppt_config, predictions_path
from ppt_common.report import Metrics, build_report, finish, print_summary, write_outputs

__all__ = ["Classes", "EvalOptions", "Evaluation", "Metrics", "UsageError", "batch_size_for", "build_report",
           "check_args", "check_classes", "check_weights", "evaluate_items", "finish", "is_demo", "iter_batches", "load_items",
           "num_batches", "pad_batch", "pil_preprocess", "ppt_config", "predictions_path", "prepare", "print_summary",
           "progress", "score_batch", "time_batches", "write_outputs"]


def prepare(options: EvalOptions, cached_weights: Callable[[str], Optional[str]]
            ) -> Tuple[PPTConfig, List[Tuple[str, int]], Classes]:
    """Validate the options and list the images: (PPT config, [(path, label)], their classes). `cached_weights(model)`
    is convert.hub.cached_weights, passed in by the tools (the core imports no other package)."""
    check_args(options)
    use_cached_weights_for_demo(options, cached_weights)
    return (ppt_config(options), *load_items(options))


def use_cached_weights_for_demo(options: EvalOptions, cached_weights: Callable[[str], Optional[str]]) -> None:
    """The demo (no --data-path, no weights named) takes the model's official weights when they are already
    cached: offline-safe, and a real model when one is at hand."""
    if is_demo(options) and not options.checkpoint and not options.pretrained:
        options.pretrained = cached_weights(options.model) is not None


@dataclasses.dataclass
class Evaluation:
    metrics: Metrics
    skipped: List[str]
    sample: Optional[np.ndarray]  # one batch of preprocessed images (for timing); None if none could be read
    seconds: float  # wall clock of the loop, decoding included (the slowest rank's)


def evaluate_items(items: Sequence[Tuple[str, int]], run_batch: Callable, preprocess: Callable[[str], np.ndarray],
                   batch_size: int, num_workers: int = 2, on_error: str = "skip", quiet: bool = False,
                   desc: str = "eval", world: World = SINGLE, fixed_batch: bool = False) -> Evaluation:
    """The loop of every evaluation (eval_ms, eval_pt, sweeps, training's validation). `items` are cut into batches
    of batch_size (or of the whole run, if that is
    smaller: a small run computes no padding), the same batches whatever the number of ranks; this rank evaluates
    its run of whole batches (`run_batch(images) -> (logits, traces)`; with fixed_batch a short batch is padded
    with copies of its last image to the batch shape, so a compiled graph never sees a new shape); then every
    rank's results are gathered, in dataset order. So N ranks compute every image exactly as one process does. A
    UsageError on any rank (an unreadable image with --on-error fail) is raised on every rank."""
    start = time.perf_counter()
    batch_size = batch_size_for(len(items), batch_size)
    local = shard(items, world, batch_size)
    metrics, skipped, sample, error = Metrics(), [], None, None
    bar = None
    if not quiet and world.is_main:
        from tqdm import tqdm
        bar = tqdm(total=len(local), desc=desc + (f" (rank 0 of {world.size})" if world.size > 1 else ""),
                   unit="img", file=sys.stderr)
    try:
        for images, labels, paths in iter_batches(local, batch_size, preprocess, num_workers, on_error, skipped):
            images = score_batch(metrics, images, labels, paths, run_batch, batch_size, fixed_batch)
            sample = images if sample is None else sample
            if bar is not None:
                bar.update(metrics.num_images + len(skipped) - bar.n)
                bar.set_postfix_str(f"top-1 {100.0 * metrics.correct / metrics.num_images:.2f}%", refresh=False)
    except UsageError as e:
        error = str(e)
    finally:
        if bar is not None:
            bar.close()
    parts = gather_objects(world, (metrics, skipped, error, sample, time.perf_counter() - start))
    errors = [part[2] for part in parts if part[2]]
    if errors:
        raise UsageError(errors[0])
    sample = next((part[3] for part in parts if part[3] is not None), None)
    return Evaluation(Metrics.concat([part[0] for part in parts]), [p for part in parts for p in part[1]], sample,
                      max(part[4] for part in parts))


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """A short batch padded with copies of its last image to batch_size: a compiled graph never sees a new shape."""
    n = len(images)
    return images if n >= batch_size else np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)])


def score_batch(metrics: Metrics, images: np.ndarray, labels: np.ndarray, paths: list, run_batch: Callable,
                batch_size: int, fixed_batch: bool = False) -> np.ndarray:
    """One batch of every evaluation: run it (padded to batch_size with fixed_batch), add the logits and policies of
    its real images to `metrics`; returns the images run."""
    n = len(labels)
    if fixed_batch:
        images = pad_batch(images, batch_size)
    logits, traces = run_batch(images)
    policies = np.stack([t.policy for t in traces], 1)[:n] if traces else None
    metrics.add(np.asarray(logits)[:n], labels, paths, policies)
    return images


def batch_size_for(num_images: int, batch_size: int) -> int:
    """The evaluation's batch size: --batch-size, or the whole run if that is smaller (no padding computed)."""
    return max(1, min(batch_size, num_images))


def time_batches(run: Callable[[], None], runs: int, warmup: int = 2) -> float:
    """Seconds per call, after warm-up (compilation and caches), median of `runs` timed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) if times else float("nan")


def progress(iterable, total: int, quiet: bool, desc: str):
    if quiet:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
