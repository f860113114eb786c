"""The eval tools' results: per-image metrics, the report (printed, then written as one set), its summary."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from ppt_common.config import DEFAULT_METHOD, DEMO_DATA, SINGLE_RULE_METHODS, arch_schedule, data_config
from ppt_common.data import is_demo
from ppt_common.datasets import Classes
from ppt_common.distributed import SINGLE, World
from ppt_common.files import json_writer, write_all
from ppt_common.macs import gmacs
from ppt_common.options import EvalOptions, UsageError, ppt_config, predictions_path


class Metrics:
    def __init__(self):
        self.logits, self.labels, self.paths, self.policies = [], [], [], []
        self.correct = 0

    def add(self, logits: np.ndarray, labels: np.ndarray, paths: list, policies: Optional[np.ndarray]):
        self.logits.append(np.asarray(logits))  # in the evaluation's dtype: float64 runs keep float64 logits
        self.labels.append(labels)
        self.paths.extend(paths)
        self.policies.append(policies)
        self.correct += int((np.argmax(logits, 1) == labels).sum())

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @classmethod
    def concat(cls, parts: Sequence["Metrics"]) -> "Metrics":
        """The metrics of consecutive shards, in their order."""
        out = cls()
        for m in parts:
            out.logits += m.logits
            out.labels += m.labels
            out.paths += m.paths
            out.policies += m.policies
            out.correct += m.correct
        return out

    def result(self) -> Dict[str, float]:
        logits = np.concatenate(self.logits).astype(np.float64)  # rows are reduced one by one: shards agree
        labels = np.concatenate(self.labels)
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        shifted = logits - logits.max(1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        return {"top1": 100.0 * float((top5[:, 0] == labels).mean()),
                "top5": 100.0 * float((top5 == labels[:, None]).any(1).mean()),
                "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
                "num_images": int(len(labels))}

    def per_class(self, classes: Classes) -> List[dict]:
        """Top-1 of each class present: [{"class", "images", "top1"}] in label order."""
        logits, labels = np.concatenate(self.logits), np.concatenate(self.labels)
        hits = np.argmax(logits, 1) == labels
        return [{"class": classes.names[c], "images": int((labels == c).sum()),
                 "top1": 100.0 * float(hits[labels == c].mean())} for c in np.unique(labels)]

    def policy_matrix(self, num_pp: int) -> np.ndarray:
        if num_pp == 0:
            return np.zeros((sum(len(lb) for lb in self.labels), 0), dtype=np.int8)
        return np.concatenate(self.policies).astype(np.int8)


def write_outputs(options: EvalOptions, report: dict, metrics: Metrics, policies: np.ndarray) -> None:
    """The JSON report and the predictions, as one set: both written or neither."""
    writers = []
    if options.output_json:
        writers.append((options.output_json, json_writer(report)))
    if options.save_predictions:
        def save_npz(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, logits=np.concatenate(metrics.logits), labels=np.concatenate(metrics.labels),
                         paths=np.array(metrics.paths), policies=policies)
        writers.append((predictions_path(options), save_npz))
    write_all(writers)


def build_report(options: EvalOptions, framework: str, metrics: Metrics, policies: np.ndarray, pp_blocks: List[int],
                 seconds_per_batch: float, skipped: List[str], extra_config: dict,
                 end_to_end_seconds: float = float("nan"), classes: Optional[Classes] = None) -> dict:
    arch = options.arch()
    cfg = ppt_config(options)
    result = metrics.result()
    timing_batch = options.batch_size  # throughput is timed on one batch of the evaluation's batch size
    applied = [p.r for p in arch_schedule(arch, cfg) if p.is_pp]
    report = {
        "framework": framework,
        "demo": is_demo(options),
        **result,
        "gmacs": gmacs(arch, cfg),
        "gmacs_dense": gmacs(arch),
        "throughput": timing_batch / seconds_per_batch if seconds_per_batch == seconds_per_batch else None,
        "latency_ms_per_batch": 1000 * seconds_per_batch if seconds_per_batch == seconds_per_batch else None,
        # the whole evaluation loop, wall clock: decoding, the model, and compilation
        "end_to_end_throughput": (result["num_images"] / end_to_end_seconds
                                  if end_to_end_seconds == end_to_end_seconds and end_to_end_seconds > 0 else None),
        "method": cfg.method,
        "pooled_per_block": [int(v) for v in (policies == 1).sum(0)] if policies.size else [0] * len(pp_blocks),
        "pruned_per_block": [int(v) for v in (policies == 0).sum(0)] if policies.size else [0] * len(pp_blocks),
        "pp_blocks": pp_blocks,
        "r_requested_per_pp_block": cfg.r_per_pp_block(arch.depth),
        "r_applied_per_pp_block": applied,  # clamped to half the patches a block sees (docs/ppt-spec.md)
        "skipped_images": skipped,
        "config": {
            "model": options.model, "img_size": arch.img_size, "checkpoint": options.checkpoint, "pretrained": options.pretrained, "data_path": options.data_path or DEMO_DATA,
            "r_tokens": cfg.r if not isinstance(cfg.r, tuple) else list(cfg.r), "pp_loc_list": list(cfg.pp_loc_list),
            "threshold": cfg.threshold if not cfg.per_block_threshold else list(cfg.threshold), "method": cfg.method, "prop_attn": cfg.prop_attn, "batch_size": options.batch_size,
            "dtype": options.dtype, "limit": options.limit, "timing_batch_size": timing_batch,
            "data_config": dataclasses.asdict(data_config(options.model)), **extra_config,
            **({"schedule": os.path.abspath(options.schedule)} if getattr(options, "schedule", None) else {}),
        },
    }
    if classes is not None and not classes.imagenet:  # a dataset of its own: its classes by name
        report["classes"] = list(classes.names)
        report["per_class"] = metrics.per_class(classes)
    return report


def finish(options: EvalOptions, framework: str, metrics: Metrics, pp_blocks: List[int], seconds_per_batch: float,
           skipped: List[str], extra_config: dict, world: World = SINGLE,
           end_to_end_seconds: float = float("nan"), classes: Optional[Classes] = None) -> dict:
    """Build the report, print it, then write the requested outputs: a late write error never loses the
    summary, and it is an error (UsageError) that says nothing was written. In a data-parallel job only rank 0
    prints and writes."""
    policies = metrics.policy_matrix(len(pp_blocks))
    report = build_report(options, framework, metrics, policies, pp_blocks, seconds_per_batch, skipped,
                          {**extra_config, "world_size": world.size}, end_to_end_seconds, classes)
    if not world.is_main:
        return report
    print_summary(report)
    try:
        write_outputs(options, report, metrics, policies)
    except OSError as e:
        raise UsageError(f"the evaluation finished (summary above) but its outputs could not be written, so none "
                         f"was: {e}") from None
    return report


def print_summary(report: dict, out=None) -> None:
    out = out or sys.stdout  # looked up at call time, so redirections of sys.stdout are honoured
    if report["demo"]:
        print("DEMO: tiny generated sample shipped with ms-ppt"
              + (" with the official weights" if report["config"]["pretrained"] else
                 "" if report["config"]["checkpoint"] else
                 " and RANDOM weights (accuracy is meaningless); pass --pretrained (the official weights, downloaded "
                 "once) or --checkpoint, and --data-path, for a real evaluation"), file=out)
    c = report["config"]
    applied = report["r_applied_per_pp_block"]
    capped = "" if applied == report["r_requested_per_pp_block"] else f" (capped at half the patches: {applied})"
    threshold = c["threshold"]
    threshold = " ".join(f"{t:g}" for t in threshold) if isinstance(threshold, (list, tuple)) else f"{threshold:g}"
    rule = (f"threshold={threshold}" if c.get("method", DEFAULT_METHOD) == DEFAULT_METHOD
            else f"method={c['method']}")
    print(f"{report['framework']} | {c['model']} | r={c['r_tokens']} at {c['pp_loc_list']}{capped} "
          f"{rule} prop_attn={c['prop_attn']} | {c['dtype']}" + (" | EMA weights" if c.get("ema") else ""), file=out)
    print(f"  images      {report['num_images']}" + (f"  ({len(report['skipped_images'])} unreadable, skipped)"
                                                      if report["skipped_images"] else ""), file=out)
    if report.get("classes") is not None:
        from ppt_common.datasets import summarize
        print(f"  {summarize(report['classes'])}", file=out)
        width = max(len(row["class"]) for row in report["per_class"])
        for row in report["per_class"]:
            print(f"    {row['class']:<{width}}  top-1 {row['top1']:6.2f} % of {row['images']} images", file=out)
    print(f"  top-1       {report['top1']:.2f} %", file=out)
    print(f"  top-5       {report['top5']:.2f} %", file=out)
    print(f"  loss        {report['loss']:.4f}", file=out)
    print(f"  GMACs       {report['gmacs']:.3f} per image (dense {report['gmacs_dense']:.3f})", file=out)
    if report["throughput"] is not None:
        how = f"{c['mode']} mode, " if "mode" in c else ""
        print(f"  throughput  {report['throughput']:.1f} images/s (batch {c['timing_batch_size']}, {how}"
              "median of timed runs after warm-up)", file=out)
    if report.get("end_to_end_throughput") is not None:
        ranks = c.get("world_size", 1)
        print(f"  end to end  {report['end_to_end_throughput']:.1f} images/s (whole run, decoding and compilation "
              f"included{f', {ranks} processes' if ranks > 1 else ''})", file=out)
    if report.get("method", DEFAULT_METHOD) in SINGLE_RULE_METHODS:
        blocks = " ".join(map(str, report["pp_blocks"]))
        print(f"  PP blocks   {blocks}: every image {report['method']}", file=out)
        return
    for blk, pooled, pruned in zip(report["pp_blocks"], report["pooled_per_block"], report["pruned_per_block"]):
        print(f"  PP block {blk:2d}: pooled {pooled:5d}  pruned {pruned:5d}", file=out)
