"""Accuracy against cost over a grid of PPT settings: the grid, the table (JSON and CSV, resumable) and the plot.

Framework-neutral; scripts/sweep.py evaluates each setting in MindSpore with the eval tools' preprocessing and
batching, so every row equals what eval_ms.py reports for that setting. Schedule files (ppt_common.schedule, such as
the search writes) are settings too, keyed by their blocks, r and thresholds, and marked apart in the plot. Every
row also gives its mean KL divergence from the dense model's softmax and its top-1 agreement with dense.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from ppt_common.config import DEFAULT_METHOD, METHODS, PPTConfig
from ppt_common.files import json_writer, write_all

COLUMNS = ["setting", "method", "r_tokens", "pp_loc_list", "threshold", "top1", "top5", "loss", "kl_dense",
           "agreement_dense", "gmacs", "images_per_s", "num_images", "pooled_per_block", "schedule"]


@dataclasses.dataclass(frozen=True)
class Setting:
    r: int
    pp_loc_list: Tuple[int, ...]
    threshold: float
    method: str = DEFAULT_METHOD

    @property
    def key(self) -> str:
        if self.r == 0:
            return "dense"
        where = f"r={self.r} pp={' '.join(map(str, self.pp_loc_list))}"
        if self.method == DEFAULT_METHOD:  # PPT's key names its threshold (and is what earlier tables hold)
            return f"{where} threshold={self.threshold:g}"
        return f"{self.method} {where}"

    def ppt_config(self) -> PPTConfig:
        return PPTConfig(r=self.r, pp_loc_list=self.pp_loc_list if self.r else (), threshold=self.threshold,
                         method=self.method)


@dataclasses.dataclass(frozen=True)
class ScheduleSetting:
    """A schedule file's blocks, r and thresholds (r and threshold per block); `name` is the file it came from."""
    pp_loc_list: Tuple[int, ...]
    r: Tuple[int, ...]
    threshold: Tuple[float, ...]
    name: str = ""
    method: str = DEFAULT_METHOD

    @classmethod
    def of(cls, schedule: dict, name: str) -> "ScheduleSetting":
        rows = schedule["blocks"]
        return cls(tuple(b["block"] for b in rows), tuple(b["r"] for b in rows),
                   tuple(float(b["threshold"]) for b in rows), name)

    @property
    def key(self) -> str:
        """By content, not by file name: the same schedule under two names is one row."""
        blocks = " ".join(f"{b}:{r}@{t:g}" for b, r, t in zip(self.pp_loc_list, self.r, self.threshold))
        return f"schedule {blocks or 'dense'}"

    def ppt_config(self) -> PPTConfig:
        if not self.r:
            return PPTConfig(r=0, pp_loc_list=())
        return PPTConfig(r=self.r, pp_loc_list=self.pp_loc_list, threshold=self.threshold)


def kl_from_dense(dense_logits, logits) -> Tuple[float, float]:
    """Mean KL(dense || setting) in nats over the images, and top-1 agreement with dense in %."""
    import numpy as np

    def log_softmax(z):
        z = np.asarray(z, np.float64)
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    p, q = log_softmax(dense_logits), log_softmax(logits)
    kl = float(np.mean(np.sum(np.exp(p) * (p - q), 1)))
    return kl, float(np.mean(p.argmax(1) == q.argmax(1)) * 100)


def grid(r_values: Sequence[int], pp_loc_lists: Sequence[Sequence[int]], thresholds: Sequence[float],
         methods: Sequence[str] = (DEFAULT_METHOD,)) -> List[Setting]:
    """The dense model first, then every (PP blocks, method, r) combination with r > 0: PPT at each threshold, the
    methods that apply one rule to every image once (their threshold is unused)."""
    settings = [Setting(0, (), thresholds[0])]
    for pp in pp_loc_lists:
        for method in methods:
            for threshold in (thresholds if method == DEFAULT_METHOD else thresholds[:1]):
                settings += [Setting(r, tuple(pp), threshold, method) for r in r_values if r > 0]
    return settings


def parse_pp_loc_list(text: str) -> Tuple[int, ...]:
    """'3 6 9' or '3,6,9' -> (3, 6, 9)."""
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"a PP block list is integers such as '3 6 9', got {text!r}") from None


def read_table(path: str) -> Tuple[Dict[str, dict], dict]:
    """The rows of an earlier sweep's JSON table, by setting, and its config; ({}, {}) if there is none."""
    if not os.path.exists(path):
        return {}, {}
    try:
        with open(path) as f:
            table = json.load(f)
        return {row["setting"]: row for row in table["rows"]}, dict(table["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a sweep table this tool wrote ({e}); name another --output") from None


# what makes two sweeps' rows comparable: a table is continued or extended only by a run that agrees on these
# the weights by content: a file replaced at the same path is another model, a file moved is the same one
SAME_RUN = ("model", "img_size", "weights_sha256", "data_path", "batch_size", "mode", "preprocess", "num_images")


def weights_digest(weights: Dict[str, "np.ndarray"]) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes and bytes, in name order)."""
    import hashlib
    digest = hashlib.sha256()
    for name in sorted(weights):
        array = weights[name]
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_same_run(table_config: dict, config: dict, path: str) -> None:
    """Refuse to add rows measured on other weights, images or settings to a table (those known so far)."""
    differ = [f"{k}: {table_config[k]!r} there, {config[k]!r} now" for k in SAME_RUN
              if k in table_config and k in config and table_config[k] != config[k]]
    if differ:
        raise ValueError(f"{path} was measured differently ({'; '.join(differ)}): resume it with the same options, "
                         "or name another --output")
    if table_config and "weights_sha256" not in table_config:
        raise ValueError(f"{path} does not record which weights its rows measured (a sweep from before weights were "
                         "hashed), so it cannot be shown to hold this model's rows: name another --output, or "
                         "--force to replace it")


def csv_writer(rows: Sequence[dict]):
    def write(tmp):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in row.items()})
        with open(tmp, "w", newline="") as f:
            f.write(buffer.getvalue())
    return write


def write_table(json_path: str, csv_path: str, rows: Sequence[dict], config: dict,
                calibration: Optional[List[dict]] = None) -> None:
    """Both tables, as one set (an interrupted sweep leaves the last complete pair)."""
    table = {"rows": list(rows), "config": config}
    if calibration is not None:
        table["calibration"] = calibration
    write_all([(json_path, json_writer(table)), (csv_path, csv_writer(rows))])


def calibrate(rows: Sequence[dict]) -> List[dict]:
    """For each r and PP block list swept at two or more thresholds: the threshold with the highest top-1, ties
    broken by the lower loss, and its margin over the next best (in images and in loss), on the sweep's images."""
    groups: Dict[Tuple, List[dict]] = {}
    for row in rows:
        if row["r_tokens"] and row.get("method", DEFAULT_METHOD) == DEFAULT_METHOD and not row.get("schedule"):
            groups.setdefault((row["r_tokens"], tuple(row["pp_loc_list"])), []).append(row)
    choices = []
    for (r, pp), group in groups.items():
        if len(group) < 2:
            continue
        best, runner_up = sorted(group, key=lambda row: (-row["top1"], row["loss"]))[:2]
        choices.append({"r_tokens": r, "pp_loc_list": list(pp), "threshold": best["threshold"], "top1": best["top1"],
                        "loss": best["loss"], "num_images": best["num_images"],
                        "next_threshold": runner_up["threshold"],
                        "margin_images": round((best["top1"] - runner_up["top1"]) * best["num_images"] / 100),
                        "margin_loss": runner_up["loss"] - best["loss"]})
    return choices


def describe_calibration(choice: dict) -> str:
    return (f"calibrated threshold for r={choice['r_tokens']} at blocks {' '.join(map(str, choice['pp_loc_list']))}: "
            f"{choice['threshold']:g} (top-1 {choice['top1']:.2f} %, loss {choice['loss']:.4f} on "
            f"{choice['num_images']} images); next best {choice['next_threshold']:g}: {choice['margin_images']} "
            f"image(s) fewer correct, its loss {choice['margin_loss']:+.4f} against the choice")


def curve_order(pp, method, threshold):
    return pp, METHODS.index(method), threshold if threshold is not None else 0.0


def curve_label(pp, method: str, threshold: Optional[float], with_pp: bool) -> str:
    """'PPT, threshold 7e-05', 'prune_fuse', ... with the PP blocks when the plot has several lists."""
    label = f"PPT, threshold {threshold:g}" if method == DEFAULT_METHOD else method
    return f"{label}, PP blocks {' '.join(map(str, pp))}" if with_pp else label


def plot(rows: Sequence[dict], png_path: str, title: str) -> None:
    """Top-1 against GMACs (left), against measured images/s (middle) and KL from dense against GMACs (right, when
    the rows have it): one curve per PP block list, method and (for PPT) threshold, r along each curve, the dense
    model as a star, each schedule file a red diamond labelled with its file's name."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves: Dict[Tuple, List[dict]] = {}
    dense: Optional[dict] = None
    schedules = [row for row in rows if row.get("schedule")]
    for row in rows:
        if row.get("schedule"):
            continue
        if row["r_tokens"] == 0:
            dense = row
        else:
            method = row.get("method", DEFAULT_METHOD)
            threshold = row["threshold"] if method == DEFAULT_METHOD else None
            curves.setdefault((tuple(row["pp_loc_list"]), method, threshold), []).append(row)
    pp_lists = {key[0] for key in curves}
    panels = [("gmacs", "GMACs per image", "top1", "top-1 (%)"),
              ("images_per_s", "images/s (measured)", "top1", "top-1 (%)")]
    if any(row.get("kl_dense") is not None for row in rows):
        panels.append(("gmacs", "GMACs per image", "kl_dense", "mean KL from dense (nats)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8))
    for ax, (x_key, x_label, y_key, y_label) in zip(axes, panels):
        def shown(points):
            return [p for p in points if p.get(y_key) is not None]
        for (pp, method, threshold), points in sorted(curves.items(), key=lambda kv: curve_order(*kv[0])):
            points = shown(sorted(points, key=lambda p: p["r_tokens"]))
            ax.plot([p[x_key] for p in points], [p[y_key] for p in points], "o-", markersize=4,
                    label=curve_label(pp, method, threshold, len(pp_lists) > 1))
        for row in shown(schedules):
            ax.plot([row[x_key]], [row[y_key]], "D", color="red", markersize=7, markeredgecolor="black")
            ax.annotate(os.path.basename(row["schedule"]), (row[x_key], row[y_key]), fontsize=6,
                        xytext=(4, 4), textcoords="offset points")
        if dense is not None and dense.get(y_key) is not None:
            ax.plot([dense[x_key]], [dense[y_key]], "k*", markersize=12, label="dense")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    if schedules:
        axes[0].plot([], [], "D", color="red", markeredgecolor="black", label="schedule files (searched)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=120)
    try:
        write_all([(png_path, write)])
    finally:
        plt.close(fig)
