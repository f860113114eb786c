"""A per-block PPT schedule as a JSON file: which blocks reduce, r and the threshold at each, and its GMACs.

scripts/search_schedule.py writes one; every tool takes it with `--schedule FILE` and the Python API with
`create_model(..., schedule=FILE or dict)`. A file is validated strictly (validate_schedule): each problem is one
line naming the file and the field. The GMACs it states must be what ppt_common.macs counts for it (the count the
evaluation reports), and a stated target_gmacs must be met.

    {"format": "ppt-schedule/1", "model": "deit_tiny_patch16_224",
     "blocks": [{"block": 3, "r": 50, "threshold": 7e-05}, ...],
     "gmacs": 0.800093, "target_gmacs": 0.8, "search": {...}, "scores": {...}}

Blocks not listed do not reduce. A schedule for another input size than the model's registered one states it
("img_size": 384): the token counts, the r limits and the GMACs are those of the model at that size, and a model
built at another size refuses the file. A threshold of 0 makes every image prune at that block, one at or above 1 every
image pool (a score variance is below 1/(N-2)): JSON has no infinity.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Optional, Union

from ppt_common.config import MODEL_CONFIGS, PPTConfig, get_arch, max_r, model_arch
from ppt_common.errors import UsageError
from ppt_common.files import atomic_write, json_writer

FORMAT = "ppt-schedule/1"
REQUIRED = ("format", "model", "blocks", "gmacs")
OPTIONAL = ("img_size", "target_gmacs", "search", "scores")
BLOCK_KEYS = ("block", "r", "threshold")
GMACS_TOLERANCE = 1e-6  # the file stores GMACs rounded to 6 decimals
SCHEDULE_CONFLICTS = ("r", "pp_loc_list", "threshold")  # settings a schedule gives; never together with one


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def schedule_gmacs(model: str, ppt: PPTConfig, img_size: Optional[int] = None) -> float:
    from ppt_common.macs import gmacs
    return round(gmacs(model_arch(model, img_size), ppt), 6)


def make_schedule(model: str, blocks, target_gmacs: Optional[float] = None, search: Optional[dict] = None,
                  scores: Optional[dict] = None, img_size: Optional[int] = None) -> dict:
    """A schedule dict from [(block, r, threshold)] (blocks with r = 0 are left out), its GMACs computed, for the
    model at img_size (recorded when it is not the registered size)."""
    rows = [{"block": int(b), "r": int(r), "threshold": float(t)} for b, r, t in sorted(blocks) if r > 0]
    schedule = {"format": FORMAT, "model": model, "blocks": rows, "gmacs": 0.0}
    if img_size is not None and model_arch(model, img_size).img_size != get_arch(model).img_size:
        schedule["img_size"] = int(img_size)
    schedule["gmacs"] = schedule_gmacs(model, _config(rows), img_size)
    if target_gmacs is not None:
        schedule["target_gmacs"] = float(target_gmacs)
    if search is not None:
        schedule["search"] = search
    if scores is not None:
        schedule["scores"] = scores
    return schedule


def _config(rows, prop_attn: bool = True) -> PPTConfig:
    if not rows:
        return PPTConfig(r=0, pp_loc_list=(), prop_attn=prop_attn)
    return PPTConfig(r=tuple(row["r"] for row in rows), pp_loc_list=tuple(row["block"] for row in rows),
                     threshold=tuple(row["threshold"] for row in rows), prop_attn=prop_attn)


def validate_schedule(schedule, where: str = "schedule", model: Optional[str] = None,
                      img_size: Optional[int] = None) -> dict:
    """The schedule itself if it is sound, else a UsageError naming `where` and the first problem; `model` and
    `img_size` (the ones asked for) must be the schedule's (its img_size defaults to the model's registered one)."""
    def fail(problem: str):
        raise UsageError(f"{where}: {problem}")

    if not isinstance(schedule, dict):
        fail(f"a schedule is a JSON object, got {type(schedule).__name__}")
    unknown = sorted(set(schedule) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)}; a schedule has {', '.join(REQUIRED + OPTIONAL)}")
    missing = [k for k in REQUIRED if k not in schedule]
    if missing:
        fail(f"missing key(s) {', '.join(missing)}")
    if schedule["format"] != FORMAT:
        fail(f"format must be {FORMAT!r}, got {schedule['format']!r}")
    name = schedule["model"]
    if name not in MODEL_CONFIGS:
        fail(f"unknown model {name!r}")
    if model is not None and name != model:
        fail(f"the schedule is for {name}, not for --model {model}")
    size = schedule.get("img_size")
    try:
        arch = model_arch(name, size)
    except ValueError as e:
        fail(f"img_size: {e}")
    if img_size is not None and img_size != arch.img_size:
        fail(f"the schedule is for {name} at img_size {arch.img_size}, not at --img-size {img_size} (its token "
             f"counts and GMACs depend on the size: search one at {img_size})")
    rows = schedule["blocks"]
    if not isinstance(rows, list):
        fail("blocks must be a list of {block, r, threshold}")
    n, last = arch.num_tokens, -1
    for row in rows:
        if not isinstance(row, dict) or sorted(row) != sorted(BLOCK_KEYS):
            fail(f"each entry of blocks has exactly the keys block, r, threshold; got {row!r}")
        block, r, threshold = row["block"], row["r"], row["threshold"]
        if not _is_int(block) or not 0 <= block < arch.depth:
            fail(f"block {block!r} is not one of {name}'s blocks 0..{arch.depth - 1}")
        if block <= last:
            fail(f"blocks must be listed once each, in increasing order (block {block} after {last})")
        if not _is_int(r) or r < 1:
            fail(f"block {block}: r must be an integer >= 1, got {r!r}")
        limit = max_r(n, arch.num_prefix_tokens)
        if r > limit:
            fail(f"block {block}: r={r} is more than it can remove from the {n} tokens it sees (at most {limit})")
        if not _is_number(threshold) or not math.isfinite(threshold) or threshold < 0:
            fail(f"block {block}: threshold must be a finite number >= 0, got {threshold!r}")
        n, last = n - r, block
    stated = schedule["gmacs"]
    actual = schedule_gmacs(name, _config(rows), size)
    if not _is_number(stated) or not abs(stated - actual) <= GMACS_TOLERANCE:
        fail(f"gmacs says {stated!r} but this schedule costs {actual:.6f} GMACs")
    target = schedule.get("target_gmacs")
    if target is not None:
        if not _is_number(target) or not target > 0:
            fail(f"target_gmacs must be a positive number, got {target!r}")
        if actual > target + GMACS_TOLERANCE:
            fail(f"the schedule costs {actual:.6f} GMACs, over its budget target_gmacs {target}")
    for key in ("search", "scores"):
        if key in schedule and not isinstance(schedule[key], dict):
            fail(f"{key} must be a JSON object, got {type(schedule[key]).__name__}")
    return schedule


def load_schedule(source: Union[str, os.PathLike, dict], model: Optional[str] = None,
                  img_size: Optional[int] = None) -> dict:
    """A schedule from a file path (or a dict already read), validated; `model` and `img_size` (the --model and
    --img-size given) must match."""
    if isinstance(source, dict):
        return validate_schedule(source, "schedule", model, img_size)
    path = os.fspath(source)
    try:
        with open(path) as f:
            schedule = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"schedule not found: {path}") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON schedule ({e})") from None
    return validate_schedule(schedule, path, model, img_size)


def schedule_config(schedule: dict, prop_attn: bool = True) -> PPTConfig:
    """The PPTConfig of a validated schedule: its blocks as pp_loc_list, with their r and thresholds."""
    return _config(schedule["blocks"], prop_attn)


def describe(schedule: dict) -> str:
    rows = schedule["blocks"]
    if not rows:
        return f"{schedule['model']}: no block reduces ({schedule['gmacs']:.4f} GMACs)"
    blocks = ", ".join(f"{row['block']}: r={row['r']} threshold={row['threshold']:g}" for row in rows)
    return f"{schedule['model']}, {schedule['gmacs']:.4f} GMACs; {blocks}"


def save_schedule(path: str, schedule: dict) -> None:
    """Validate, then write atomically (a reader never sees half a file)."""
    validate_schedule(schedule, path)
    atomic_write(path, json_writer(schedule))


def config_from_settings(model: str, schedule, ppt_config: Optional[PPTConfig] = None,
                         img_size: Optional[int] = None, **settings) -> PPTConfig:
    """For create_model: PPTConfig.from_settings without a schedule; with one, the schedule's PPTConfig, refusing
    it beside r, pp_loc_list or threshold (or a ppt_config), or for another img_size; the other settings (prop_attn, trace_source, method)
    apply on top of it."""
    if schedule is None:
        return PPTConfig.from_settings(ppt_config, **settings)
    clash = [k for k in SCHEDULE_CONFLICTS if settings.get(k) is not None] + (["ppt_config"] if ppt_config else [])
    if clash:
        raise UsageError(f"a schedule sets r, pp_loc_list and threshold: give it without {', '.join(clash)}")
    if img_size is None and model in MODEL_CONFIGS:
        img_size = get_arch(model).img_size  # the size create_model builds
    cfg = schedule_config(load_schedule(schedule, model, img_size))
    extra = {k: v for k, v in settings.items() if v is not None and k not in SCHEDULE_CONFLICTS}
    return PPTConfig.from_settings(None, r=cfg.r, pp_loc_list=cfg.pp_loc_list, threshold=cfg.threshold, **extra)
