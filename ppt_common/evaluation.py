"""The framework-free half of scripts/eval_ms.py and scripts/eval_pt.py: options, data, metrics, reports.

Each script supplies a `Runner` (build the model, run a batch, time a batch); everything else is shared so the two
report the same things in the same format.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ppt_common.config import (DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, MODEL_CONFIGS, PPTConfig,
                               arch_schedule, data_config, get_arch)
from ppt_common.files import OutputError, check_outputs, json_writer, write_all
from ppt_common.imagenet import NUM_CLASSES, ImageError, find_images, preprocess_pil
from ppt_common.macs import gmacs

DEMO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ms_ppt", "demo-data")
DEMO_MODEL = "deit_tiny_patch16_224"


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{value}'")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEMO_MODEL, choices=sorted(MODEL_CONFIGS), metavar="NAME",
                   help=f"architecture (default {DEMO_MODEL}); one of: {', '.join(sorted(MODEL_CONFIGS))}")
    p.add_argument("--checkpoint", "--resume", dest="checkpoint", default=None,
                   help="DeiT .pth / timm .bin / .safetensors / MindSpore .ckpt (default: random weights, demo only)")


def add_ppt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--r_tokens", "--r-tokens", dest="r_tokens", type=int, nargs="+", default=[DEFAULT_R],
                   help="tokens removed per PP block: one value, or one per PP block (0 = dense)")
    p.add_argument("--pp_loc_list", "--pp-loc-list", dest="pp_loc_list", type=int, nargs="*",
                   default=list(DEFAULT_PP_LOC_LIST), help="0-based indices of the PP blocks")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="policy threshold on score variance")
    p.add_argument("--prop_attn", "--prop-attn", dest="prop_attn", type=str2bool, nargs="?", const=True,
                   default=True, help="proportional attention (default true; '--prop_attn false' to disable)")
    p.add_argument("--dense", action="store_true", help="evaluate without PPT (same as --r_tokens 0)")


def build_parser(framework: str, json_output: bool = True, predictions: bool = True) -> argparse.ArgumentParser:
    """Options of both eval scripts; the authors' main.py names (--resume, --num_workers, ...) keep working.
    Tools that write no JSON report or no predictions do not offer the options."""
    p = argparse.ArgumentParser(
        description=f"ImageNet evaluation of DeiT/ViT with PPT ({framework}): top-1/top-5, MACs, throughput. "
                    "With no --data-path it runs a demo on a tiny sample shipped with the package.")
    add_model_args(p)
    p.add_argument("--data-path", "--data_path", dest="data_path", nargs="+", default=None,
                   help="ImageNet root holding val/, or a folder of WordNet-id class folders; several may be given "
                        "(default: the demo sample)")
    add_ppt_args(p)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=2,
                   help="threads decoding images")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--on-error", dest="on_error", choices=["skip", "fail"], default="skip",
                   help="an unreadable image: skip it with a warning (counted) or stop with an error")
    p.add_argument("--throughput-runs", dest="throughput_runs", type=int, default=5)
    if json_output:
        p.add_argument("--output-json", dest="output_json", default=None, help="write the report as JSON")
    if predictions:
        p.add_argument("--save-predictions", dest="save_predictions", default=None,
                       help="write an .npz of logits, labels, paths and policies")
    if json_output or predictions:
        p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(output_json=None, save_predictions=None, force=False)
    p.add_argument("--eval", action="store_true", help="accepted for compatibility with the authors' main.py")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class UsageError(ValueError):
    """Bad options or inputs: reported as one line and exit code 2."""


def check_args(args) -> None:
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.throughput_runs < 0:
        raise UsageError(f"--throughput-runs must be >= 0, got {args.throughput_runs}")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint not found: {args.checkpoint}" if not os.path.exists(args.checkpoint)
                         else f"checkpoint is not a file: {args.checkpoint}")
    try:
        check_outputs([("--output-json", args.output_json), ("--save-predictions", predictions_path(args))],
                      args.force)
    except OutputError as e:
        raise UsageError(str(e)) from None


def predictions_path(args) -> Optional[str]:
    """--save-predictions with the .npz suffix that np.savez would add."""
    path = args.save_predictions
    return path if path is None or path.endswith(".npz") else path + ".npz"


def check_imagenet_head(num_classes: int) -> None:
    """Labels are ImageNet-1k indices: refuse, before any image is read, a head that cannot be scored on them."""
    if num_classes != NUM_CLASSES:
        raise UsageError(f"the model's head has {num_classes} classes, but evaluation scores ImageNet-1k labels "
                         f"({NUM_CLASSES} classes): use a checkpoint with an ImageNet-1k head")


def ppt_config(args) -> PPTConfig:
    r = 0 if args.dense else (args.r_tokens[0] if len(args.r_tokens) == 1 else tuple(args.r_tokens))
    try:
        return PPTConfig(r=r, pp_loc_list=tuple(args.pp_loc_list), threshold=args.threshold,
                         prop_attn=args.prop_attn)
    except ValueError as e:
        raise UsageError(str(e)) from None


def prepare(args) -> Tuple[PPTConfig, List[Tuple[str, int]]]:
    """Validate the options and list the images: (PPT config, [(path, label)])."""
    check_args(args)
    return ppt_config(args), load_items(args)


def set_mindspore_mode(mode: str, device: str = "CPU") -> None:
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target=device)


def is_demo(args) -> bool:
    return args.data_path is None


def load_items(args) -> List[Tuple[str, int]]:
    """The images of every --data-path, each file once (a folder given twice, or a root and its val/, would
    otherwise count its images twice)."""
    try:
        found = [it for path in (args.data_path or [DEMO_DATA]) for it in find_images(path)]
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise UsageError(str(e)) from None
    items, seen = [], set()
    for path, label in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            items.append((path, label))
    if len(items) < len(found):
        print(f"note: {len(found) - len(items)} images reached through more than one --data-path are counted once",
              file=sys.stderr)
    return items[:args.limit] if args.limit else items


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
        pool.shutdown(wait=False, cancel_futures=True)


def pil_preprocess(model: str) -> Callable[[str], np.ndarray]:
    """The model's eval transform (its DataConfig) on PIL images, bit-identical to timm/torchvision."""
    arch, data = get_arch(model), data_config(model)
    return lambda path: preprocess_pil(path, arch.img_size, data.crop_pct, data.mean, data.std)


class Metrics:
    def __init__(self):
        self.logits, self.labels, self.paths, self.policies = [], [], [], []

    def add(self, logits: np.ndarray, labels: np.ndarray, paths: list, policies: Optional[np.ndarray]):
        self.logits.append(np.asarray(logits))  # in the evaluation's dtype: float64 runs keep float64 logits
        self.labels.append(labels)
        self.paths.extend(paths)
        self.policies.append(policies)

    def result(self) -> Dict[str, float]:
        logits = np.concatenate(self.logits).astype(np.float64)
        labels = np.concatenate(self.labels)
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        shifted = logits - logits.max(1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        return {"top1": 100.0 * float((top5[:, 0] == labels).mean()),
                "top5": 100.0 * float((top5 == labels[:, None]).any(1).mean()),
                "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
                "num_images": int(len(labels))}

    def policy_matrix(self, num_pp: int) -> np.ndarray:
        if num_pp == 0:
            return np.zeros((sum(len(lb) for lb in self.labels), 0), dtype=np.int8)
        return np.concatenate(self.policies).astype(np.int8)


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


def write_outputs(args, report: dict, metrics: Metrics, policies: np.ndarray) -> None:
    """The JSON report and the predictions, as one set: both written or neither."""
    writers = []
    if args.output_json:
        writers.append((args.output_json, json_writer(report)))
    if args.save_predictions:
        def save_npz(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, logits=np.concatenate(metrics.logits), labels=np.concatenate(metrics.labels),
                         paths=np.array(metrics.paths), policies=policies)
        writers.append((predictions_path(args), save_npz))
    write_all(writers)


def build_report(args, framework: str, metrics: Metrics, policies: np.ndarray, pp_blocks: List[int],
                 seconds_per_batch: float, skipped: List[str], extra_config: dict) -> dict:
    arch = get_arch(args.model)
    cfg = ppt_config(args)
    result = metrics.result()
    timing_batch = args.batch_size  # throughput is timed on one batch of the evaluation's batch size
    applied = [p.r for p in arch_schedule(arch, cfg) if p.is_pp]
    report = {
        "framework": framework,
        "demo": is_demo(args),
        **result,
        "gmacs": gmacs(arch, cfg),
        "gmacs_dense": gmacs(arch),
        "throughput": timing_batch / seconds_per_batch if seconds_per_batch == seconds_per_batch else None,
        "latency_ms_per_batch": 1000 * seconds_per_batch if seconds_per_batch == seconds_per_batch else None,
        "pooled_per_block": [int(v) for v in policies.sum(0)] if policies.size else [0] * len(pp_blocks),
        "pruned_per_block": [int(v) for v in (1 - policies).sum(0)] if policies.size else [0] * len(pp_blocks),
        "pp_blocks": pp_blocks,
        "r_requested_per_pp_block": cfg.r_per_pp_block(arch.depth),
        "r_applied_per_pp_block": applied,  # clamped to half the patches a block sees (docs/ppt-spec.md)
        "skipped_images": skipped,
        "config": {
            "model": args.model, "checkpoint": args.checkpoint, "data_path": args.data_path or DEMO_DATA,
            "r_tokens": cfg.r if not isinstance(cfg.r, tuple) else list(cfg.r), "pp_loc_list": list(cfg.pp_loc_list),
            "threshold": cfg.threshold, "prop_attn": cfg.prop_attn, "batch_size": args.batch_size,
            "dtype": args.dtype, "limit": args.limit, "timing_batch_size": timing_batch,
            "data_config": dataclasses.asdict(data_config(args.model)), **extra_config,
        },
    }
    return report


def finish(args, framework: str, metrics: Metrics, pp_blocks: List[int], seconds_per_batch: float,
           skipped: List[str], extra_config: dict) -> dict:
    """Build the report, print it, then write the requested outputs: a late write error never loses the
    summary, and it is an error (UsageError) that says nothing was written."""
    policies = metrics.policy_matrix(len(pp_blocks))
    report = build_report(args, framework, metrics, policies, pp_blocks, seconds_per_batch, skipped, extra_config)
    print_summary(report)
    try:
        write_outputs(args, report, metrics, policies)
    except OSError as e:
        raise UsageError(f"the evaluation finished (summary above) but its outputs could not be written, so none "
                         f"was: {e}") from None
    return report


def print_summary(report: dict, out=None) -> None:
    out = out or sys.stdout  # looked up at call time, so redirections of sys.stdout are honoured
    if report["demo"]:
        print("DEMO: tiny generated sample shipped with ms-ppt"
              + ("" if report["config"]["checkpoint"] else " and RANDOM weights (accuracy is meaningless); "
                 "pass --checkpoint and --data-path for a real evaluation"), file=out)
    c = report["config"]
    applied = report["r_applied_per_pp_block"]
    capped = "" if applied == report["r_requested_per_pp_block"] else f" (capped at half the patches: {applied})"
    print(f"{report['framework']} | {c['model']} | r={c['r_tokens']} at {c['pp_loc_list']}{capped} "
          f"threshold={c['threshold']:g} prop_attn={c['prop_attn']} | {c['dtype']}", file=out)
    print(f"  images      {report['num_images']}" + (f"  ({len(report['skipped_images'])} unreadable, skipped)"
                                                      if report["skipped_images"] else ""), file=out)
    print(f"  top-1       {report['top1']:.2f} %", file=out)
    print(f"  top-5       {report['top5']:.2f} %", file=out)
    print(f"  loss        {report['loss']:.4f}", file=out)
    print(f"  GMACs       {report['gmacs']:.3f} per image (dense {report['gmacs_dense']:.3f})", file=out)
    if report["throughput"] is not None:
        how = f"{c['mode']} mode, " if "mode" in c else ""
        print(f"  throughput  {report['throughput']:.1f} images/s (batch {c['timing_batch_size']}, {how}"
              "median of timed runs after warm-up)", file=out)
    for blk, pooled, pruned in zip(report["pp_blocks"], report["pooled_per_block"], report["pruned_per_block"]):
        print(f"  PP block {blk:2d}: pooled {pooled:5d}  pruned {pruned:5d}", file=out)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def interrupted() -> int:
    print("interrupted: no output was written", file=sys.stderr)
    return 130


def progress(iterable, total: int, quiet: bool, desc: str):
    if quiet:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
