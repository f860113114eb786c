"""The schedule search's forwards in PyTorch (ppt_common.search drives them): the model run from any block on the
cached activations entering it, so a move at block b costs only blocks b..depth-1.

Why PyTorch: the search tries thousands of token counts; eager PyTorch runs each at once, while MindSpore's
GRAPH_MODE compiles a graph per token count and its PyNative mode is slower per op on this CPU (docs/sweeps.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ppt_common.config import DEMO_MODEL, PPTConfig, get_arch, model_arch
from ppt_common.data import iter_batches, load_items, pil_preprocess
from ppt_common.errors import UsageError
from ppt_common.files import check_output
from ppt_common.macs import gmacs
from ppt_common.options import EvalOptions, Options, at_least, check_weights, option, positive
from ppt_common.schedule import describe, load_schedule, make_schedule, save_schedule
from ppt_common.search import (DEFAULT_STEPS, DEFAULT_THRESHOLDS, Search, SearchSettings, kl_and_agreement,
                               log_softmax, to_config)
from pt_reference.vision_transformer import PPTVisionTransformer


class BlockRunner:
    """Runs a pt_reference model block by block on fixed images (float32, no gradient), in batches."""

    def __init__(self, model: PPTVisionTransformer, images: np.ndarray, batch_size: int = 64):
        self.model, self.batch_size = model.eval(), batch_size
        self.depth = len(model.blocks)
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
            self.stem = [self._stem(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]

    def _stem(self, x):
        m = self.model
        return (m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))), None, None)

    def configure(self, cfg: PPTConfig) -> None:
        info = self.model._ppt_info
        info["config"], info["want_trace"], info["source"] = cfg, False, None
        for i, blk in enumerate(self.model.blocks):
            blk._ppt_is_pp = i in cfg.pp_loc_list

    def run(self, cfg: PPTConfig, start: int, states: List[tuple], keep: bool = False):
        """Logits [N, classes] from the states entering block `start` (one per batch); with keep, also the states
        entering every later block {block: [state per batch]}."""
        self.configure(cfg)
        info = self.model._ppt_info
        r_of = dict(zip(cfg.pp_loc_list, cfg.r_per_pp_block(self.depth)))
        kept: Dict[int, list] = {}
        logits = []
        with torch.no_grad():
            for x, size, log_size in states:
                info["r"] = [r_of[i] for i in cfg.pp_loc_list if i >= start]
                info["size"], info["log_size"] = size, log_size
                for i in range(start, self.depth):
                    if keep:
                        kept.setdefault(i, []).append((x, info["size"], info["log_size"]))
                    x = self.model.blocks[i](x)
                logits.append(self.model.forward_head(self.model.norm(x)))
        return torch.cat(logits).double().numpy(), kept

    def states_at(self, kept: Optional[Dict[int, list]], block: int) -> List[tuple]:
        return self.stem if block == 0 or kept is None else kept[block]


@dataclasses.dataclass
class SearchOptions(Options):
    """The options of search_schedule.py (underscores for dashes)."""
    model: str = DEMO_MODEL
    checkpoint: Optional[str] = None
    pretrained: bool = False
    img_size: Optional[int] = option(None, positive)  # search for the model at this input size (default its own)
    data_path: Optional[Sequence[str]] = None  # folders of images, plain or in class folders (labels unread)
    target_gmacs: Optional[float] = option(None, positive)
    output: Optional[str] = None  # the schedule file, rewritten after every move; an unfinished one is resumed
    limit: int = option(256, positive)
    steps: Sequence[int] = option(DEFAULT_STEPS, positive)  # tokens an exchange moves, coarse to fine
    min_gain_se: float = option(2.0, at_least(0))  # an exchange must lower the mean KL by this many standard errors
    screen_images: int = option(64, positive)  # exchanges are screened on these, the best few scored on all
    thresholds: Sequence[float] = option(DEFAULT_THRESHOLDS, at_least(0))
    batch_size: int = option(64, positive)
    num_workers: int = option(2, at_least(0))
    force: bool = False  # start again instead of resuming
    quiet: bool = False


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def identity(options: SearchOptions, paths: List[str], weights: str) -> dict:
    """What a resumed search must share with the saved one (img_size only when not the model's own)."""
    size = model_arch(options.model, options.img_size).img_size
    other_size = {"img_size": size} if size != get_arch(options.model).img_size else {}
    return {"model": options.model, **other_size, "weights_sha256": file_digest(weights) if weights else None,
            "images_sha256": hashlib.sha256("\n".join(os.path.realpath(p) for p in paths).encode()).hexdigest(),
            "num_images": len(paths), "target_gmacs": options.target_gmacs,
            "steps": sorted({int(k) for k in options.steps}, reverse=True), "min_gain_se": float(options.min_gain_se),
            "screen_images": min(options.screen_images, len(paths)),
            "thresholds": [float(t) for t in options.thresholds]}


def resume_from(options: SearchOptions, same: dict) -> Optional[dict]:
    """The saved schedule to continue, None to start afresh; another search's file is refused."""
    if options.force or not os.path.exists(options.output):
        return None
    saved = load_schedule(options.output, options.model, options.img_size)
    search = saved.get("search", {})
    differs = [k for k in same if search.get(k) != same[k]]
    if differs:
        raise UsageError(f"{options.output} holds a search with other {', '.join(differs)}; name another --output "
                         f"or pass --force to start again")
    return saved


def search_schedule(options: SearchOptions = None, **kwargs) -> dict:
    """Search a schedule for options.target_gmacs on options.data_path's images (labels unused) and write it to
    options.output; returns the schedule. An unfinished output of the same search is continued."""
    options = SearchOptions.of(options, **kwargs)
    if options.target_gmacs is None or not options.output:
        raise UsageError("--target-gmacs and --output are required")
    check_weights(options)
    check_output(options.output, force=True, option="--output")
    try:
        arch = model_arch(options.model, options.img_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    dense_gmacs = gmacs(arch)
    items, _ = load_items(EvalOptions(model=options.model, data_path=options.data_path, limit=options.limit),
                          labelled=False)
    weights = options.checkpoint
    if options.pretrained:
        from convert.hub import pretrained_weights
        weights = pretrained_weights(options.model)
    same = identity(options, [p for p, _ in items], weights)
    saved = resume_from(options, same)
    if saved is not None and saved.get("target_gmacs") is not None:
        print(f"{options.output}: the search is complete ({describe(saved)})")
        return saved
    from pt_reference.factory import create_model
    model = create_model(options.model, checkpoint=weights, r=0, pp_loc_list=(), img_size=options.img_size)
    skipped: List[str] = []
    images = np.concatenate([b[0] for b in iter_batches(items, options.batch_size, pil_preprocess(options.model, options.img_size),
                                                        options.num_workers, "skip", skipped)])
    started = time.time()
    runner = BlockRunner(model, images, options.batch_size)
    dense_logits, _ = runner.run(PPTConfig(r=0, pp_loc_list=()), 0, runner.stem)
    dense_logp = log_softmax(dense_logits)
    settings = SearchSettings(options.target_gmacs, tuple(options.thresholds), tuple(same["steps"]),
                              options.min_gain_se, options.screen_images)
    search_info = {**same, "method": "seeded exchange (ppt_common.search)", "complete": False}
    resumed = saved is not None and "step" in saved.get("search", {})
    blocks = {b["block"]: (b["r"], b["threshold"]) for b in saved["blocks"]} if resumed else None
    step = saved["search"]["step"] if resumed else None
    search = None

    def save(current, at_step, kl, agree):
        save_schedule(options.output, make_schedule(
            options.model, [(b, r, t) for b, (r, t) in current.items()],
            search={**search_info, "step": at_step, "resumed": resumed, "seeds": search.seed_scores,
                    "seconds": round(time.time() - started, 1)},
            scores={"kl": kl, "agreement": agree, "num_images": len(images)}, img_size=options.img_size))

    from tqdm import tqdm
    with tqdm(disable=options.quiet, desc="search", unit=" forwards",
              bar_format="{l_bar}{n} forwards [{elapsed}{postfix}]") as bar:
        search = Search(options.model, runner, dense_logp, settings, save, bar, arch)
        search.seed_scores = list(saved["search"].get("seeds", [])) if resumed else []
        blocks, kl, agree = search.run(blocks, step)
    logits, _ = runner.run(to_config(blocks), 0, runner.stem)
    kl, agree = kl_and_agreement(dense_logp, logits)
    schedule = make_schedule(options.model, [(b, r, t) for b, (r, t) in blocks.items()], options.target_gmacs,
                             search={**search_info, "complete": True, "resumed": resumed,
                                     "evaluations": search.evaluations, "seeds": search.seed_scores,
                                     "seconds": round(time.time() - started, 1), "skipped_images": len(skipped)},
                             scores={"kl": kl, "agreement": agree, "num_images": len(images),
                                     "dense_gmacs": round(dense_gmacs, 6)}, img_size=options.img_size)
    save_schedule(options.output, schedule)
    print(f"{describe(schedule)}\n  KL from dense {kl:.4f}, top-1 agreement {agree:.2%} on {len(images)} images; "
          f"{time.time() - started:.0f} s, {search.evaluations} partial forwards -> {options.output}")
    return schedule
