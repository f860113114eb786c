"""Accuracy against cost over a grid of PPT settings: the grid, the table (JSON and CSV, resumable) and the plot.

Framework-neutral; scripts/sweep.py evaluates each setting in MindSpore with the eval tools' preprocessing and
batching, so every row equals what eval_ms.py reports for that setting.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from ppt_common.config import PPTConfig
from ppt_common.files import json_writer, write_all

COLUMNS = ["setting", "r_tokens", "pp_loc_list", "threshold", "top1", "top5", "loss", "gmacs", "images_per_s",
           "num_images", "pooled_per_block"]


@dataclasses.dataclass(frozen=True)
class Setting:
    r: int
    pp_loc_list: Tuple[int, ...]
    threshold: float

    @property
    def key(self) -> str:
        if self.r == 0:
            return "dense"
        return f"r={self.r} pp={' '.join(map(str, self.pp_loc_list))} threshold={self.threshold:g}"

    def ppt_config(self) -> PPTConfig:
        return PPTConfig(r=self.r, pp_loc_list=self.pp_loc_list if self.r else (), threshold=self.threshold)


def grid(r_values: Sequence[int], pp_loc_lists: Sequence[Sequence[int]], thresholds: Sequence[float]) -> List[Setting]:
    """The dense model first, then every (PP blocks, threshold, r) combination with r > 0."""
    settings = [Setting(0, (), thresholds[0])]
    for pp in pp_loc_lists:
        for threshold in thresholds:
            settings += [Setting(r, tuple(pp), threshold) for r in r_values if r > 0]
    return settings


def parse_pp_loc_list(text: str) -> Tuple[int, ...]:
    """'3 6 9' or '3,6,9' -> (3, 6, 9)."""
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"a PP block list is integers such as '3 6 9', got {text!r}") from None


def read_table(path: str) -> Dict[str, dict]:
    """The rows of an earlier sweep's JSON table, by setting; {} if there is none."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
        return {row["setting"]: row for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a sweep table this tool wrote ({e}); name another --output") from None


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
        if row["r_tokens"]:
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


def plot(rows: Sequence[dict], png_path: str, title: str) -> None:
    """Top-1 against GMACs (left) and against measured images/s (right): one curve per PP block list and
    threshold, r along each curve, the dense model as a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves: Dict[Tuple, List[dict]] = {}
    dense: Optional[dict] = None
    for row in rows:
        if row["r_tokens"] == 0:
            dense = row
        else:
            curves.setdefault((tuple(row["pp_loc_list"]), row["threshold"]), []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, x_key, x_label in ((axes[0], "gmacs", "GMACs per image"), (axes[1], "images_per_s", "images/s (measured)")):
        for (pp, threshold), points in sorted(curves.items()):
            points = sorted(points, key=lambda p: p["r_tokens"])
            ax.plot([p[x_key] for p in points], [p["top1"] for p in points], "o-", markersize=4,
                    label=f"PP blocks {' '.join(map(str, pp))}, threshold {threshold:g}")
        if dense is not None:
            ax.plot([dense[x_key]], [dense["top1"]], "k*", markersize=12, label="dense")
        ax.set_xlabel(x_label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=120)
    try:
        write_all([(png_path, write)])
    finally:
        plt.close(fig)
