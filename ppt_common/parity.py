"""Compare two frameworks' traces and logits image by image, and explain every disagreement by its margin.

Only an image's *first* disagreement is a finding: once two frameworks keep different tokens, everything after
it differs as a consequence. A disagreement is *explained* when its margin is within the bound for its kind:
- policy:    |variance - threshold| / threshold             (the image sits on the threshold)
- prune:     |score gap| / mean score where the two kept orders first part (two tokens tie in the order)
- pool:      similarity gap at the merge cut (cosine, absolute), or for a partner swap the gap at the cut too
- prune_fuse, decouple_merge: as prune where the kept tokens part; a decouple_merge partner swap has no bound
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from ppt_common.trace import POLICY_NAMES, BlockTrace, merge_margin, policy_margin, prune_margin

# float32 noise in scores and similarities measured on real images is ~1e-6 relative; bounds leave 100x room
DEFAULT_BOUNDS = {"policy": 1e-3, "prune": 1e-3, "pool": 1e-4}


@dataclasses.dataclass
class Disagreement:
    image: int
    path: str
    block: int
    kind: str  # policy | prune | pool | prune_fuse | decouple_merge
    margin: float
    explained: bool

    def to_dict(self):
        return dataclasses.asdict(self)


def first_disagreement(a: List[BlockTrace], b: List[BlockTrace], i: int, threshold: float,
                       bounds: Dict[str, float]) -> Optional[Disagreement]:
    for ta, tb in zip(a, b):
        if ta.policy[i] != tb.policy[i]:
            m = policy_margin(ta, i, threshold)
            return Disagreement(i, "", ta.block, "policy", m, m <= bounds["policy"])
        if ta.policy[i] == 0 and not np.array_equal(ta.kept[i], tb.kept[i]):
            m = prune_margin(ta, i, tb.kept[i]) / float(np.mean(ta.scores[i, 1:]))
            return Disagreement(i, "", ta.block, "prune", m, m <= bounds["prune"])
        if ta.policy[i] == 1 and not (np.array_equal(ta.merge_src[i], tb.merge_src[i])
                                      and np.array_equal(ta.merge_dst[i], tb.merge_dst[i])):
            m = merge_margin(ta, i)
            return Disagreement(i, "", ta.block, "pool", m, m <= bounds["pool"])
        if ta.policy[i] >= 2 and not np.array_equal(ta.dest[i], tb.dest[i]):
            kind = POLICY_NAMES[int(ta.policy[i])]
            if not np.array_equal(ta.kept[i], tb.kept[i]):  # the score order parts, as in pruning
                m = prune_margin(ta, i, tb.kept[i]) / float(np.mean(ta.scores[i, 1:]))
                return Disagreement(i, "", ta.block, kind, m, m <= bounds["prune"])
            return Disagreement(i, "", ta.block, kind, float("nan"), False)  # a partner choice: no bound
    return None


def compare_runs(trace_a: List[List[BlockTrace]], trace_b: List[List[BlockTrace]], logits_a: np.ndarray,
                 logits_b: np.ndarray, labels: np.ndarray, paths: List[str], threshold: float,
                 bounds: Dict[str, float] = None, names=("pt", "ms")) -> dict:
    """trace_x: one list of BlockTrace per batch. Returns the report (JSON-ready); `names` label the two sides."""
    a, b = names
    bounds = {**DEFAULT_BOUNDS, **(bounds or {})}
    disagreements: List[Disagreement] = []
    per_block = {}
    offset = 0
    for ta, tb in zip(trace_a, trace_b):
        n = ta[0].batch_size if ta else 0
        for i in range(n):
            d = first_disagreement(ta, tb, i, threshold, bounds)
            if d is not None:
                d.image, d.path = offset + i, paths[offset + i]
                disagreements.append(d)
        for t_a, t_b in zip(ta, tb):
            row = per_block.setdefault(t_a.block, {"block": t_a.block, "images": 0, "policy_agree": 0,
                                                   "selection_agree": 0, "pooled_a": 0, "pooled_b": 0})
            row["images"] += t_a.batch_size
            row["pooled_a"] += int((t_a.policy == 1).sum())
            row["pooled_b"] += int((t_b.policy == 1).sum())
            same_policy = t_a.policy == t_b.policy
            row["policy_agree"] += int(same_policy.sum())
            same_sel = same_policy & np.all(t_a.dest == t_b.dest, 1)
            row["selection_agree"] += int(same_sel.sum())
        offset += n
    top1_a, top1_b = logits_a.argmax(1), logits_b.argmax(1)
    top5 = lambda lg: (np.argsort(-lg, 1, kind="stable")[:, :5] == labels[:, None]).any(1)  # noqa: E731
    differing = np.nonzero(top1_a != top1_b)[0]
    return {
        "num_images": int(len(labels)),
        "policy_disagreements": sum(d.kind == "policy" for d in disagreements),
        "selection_disagreements": sum(d.kind != "policy" for d in disagreements),
        "unexplained_disagreements": sum(not d.explained for d in disagreements),
        "images_with_identical_traces": int(len(labels) - len(disagreements)),
        "disagreements": [d.to_dict() for d in disagreements],
        "per_block": list(per_block.values()),
        "max_abs_logit_diff": float(np.max(np.abs(logits_a.astype(np.float64) - logits_b))),
        f"top1_{a}": 100.0 * float((top1_a == labels).mean()),
        f"top1_{b}": 100.0 * float((top1_b == labels).mean()),
        f"top5_{a}": 100.0 * float(top5(logits_a).mean()),
        f"top5_{b}": 100.0 * float(top5(logits_b).mean()),
        "prediction_differences": [{"image": int(i), "path": paths[i], a: int(top1_a[i]), b: int(top1_b[i])}
                                   for i in differing],
        "margin_bounds": bounds,
        "names": list(names),
    }


def run_both(run_pt, run_ms, batches, threshold: float, bounds: Dict[str, float] = None, names=("pt", "ms")) -> dict:
    """Feed the same arrays to both frameworks. run_x(images) -> (logits, traces); batches yield
    (images, labels, paths)."""
    traces_pt, traces_ms, logits_pt, logits_ms, labels, paths = [], [], [], [], [], []
    for images, lbl, pth in batches:
        lp, tp = run_pt(images)
        lm, tm = run_ms(images)
        logits_pt.append(np.asarray(lp, np.float64))
        logits_ms.append(np.asarray(lm, np.float64))
        traces_pt.append(tp)
        traces_ms.append(tm)
        labels.append(np.asarray(lbl))
        paths.extend(pth)
    if not labels:
        raise ValueError("no image could be read")
    return compare_runs(traces_pt, traces_ms, np.concatenate(logits_pt), np.concatenate(logits_ms),
                        np.concatenate(labels), paths, threshold, bounds, names)


def format_report(r: dict) -> str:
    a, b = r["names"]
    lines = [f"images: {r['num_images']}   identical traces: {r['images_with_identical_traces']}",
             f"block | policy agree | selection agree | pooled {a} | pooled {b}"]
    for row in r["per_block"]:
        lines.append(f"{row['block']:5d} | {row['policy_agree']:5d}/{row['images']:<6d} | "
                     f"{row['selection_agree']:6d}/{row['images']:<8d} | {row['pooled_a']:9d} | {row['pooled_b']:9d}")
    lines.append(f"policy disagreements: {r['policy_disagreements']}   selection disagreements: "
                 f"{r['selection_disagreements']}   unexplained: {r['unexplained_disagreements']}")
    for d in r["disagreements"]:
        lines.append(f"  image {d['image']} ({d['path']}): block {d['block']} {d['kind']} margin {d['margin']:.3g}"
                     f" -> {'near-tie' if d['explained'] else 'UNEXPLAINED'}")
    lines.append(f"max |logit diff|: {r['max_abs_logit_diff']:.3g}")
    lines.append(f"top-1 {a} {r[f'top1_{a}']:.2f} %  {b} {r[f'top1_{b}']:.2f} %   top-5 {a} {r[f'top5_{a}']:.2f} %  "
                 f"{b} {r[f'top5_{b}']:.2f} %   prediction differences: {len(r['prediction_differences'])}")
    return "\n".join(lines)


def worst_relative_gap(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]) -> Tuple[float, str]:
    """max over tensors of max |got - want| / max |want| (the tensor's own scale, at least 1e-30): (gap, name)."""
    if sorted(got) != sorted(want):
        raise ValueError(f"different tensors: {sorted(set(got) ^ set(want))[:5]}")
    gaps = {k: float(np.abs(np.asarray(got[k], np.float64) - want[k]).max() / max(np.abs(want[k]).max(), 1e-30))
            for k in want}
    name = max(gaps, key=gaps.get)
    return gaps[name], name


def compare_on_images(run_a, run_b, items, options, threshold: float, bounds: Dict[str, float] = None,
                      names=("pt", "ms")) -> Tuple[dict, List[str]]:
    """run_both on the images of an evaluation's options (timm's PIL transform, its batch size, workers and
    on_error), with a progress bar: (report, skipped image paths)."""
    from ppt_common.data import iter_batches, pil_preprocess
    from ppt_common.evaluation import num_batches, progress
    skipped: List[str] = []
    batches = iter_batches(items, options.batch_size, pil_preprocess(options.model), options.num_workers,
                           options.on_error, skipped)
    shown = progress(batches, num_batches(len(items), options.batch_size), options.quiet, " vs ".join(names))
    return run_both(run_a, run_b, shown, threshold, bounds, names), skipped


def publish(report: dict, output_json: Optional[str]) -> None:
    """Print the comparison, then write it as JSON when asked (atomically)."""
    from ppt_common.files import atomic_write, json_writer
    print(format_report(report))
    if output_json:
        atomic_write(output_json, json_writer(report))
