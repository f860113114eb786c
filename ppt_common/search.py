"""A label-free search for a per-block PPT schedule within a MAC budget (framework-neutral; the forwards are a
runner's, pt_reference.search.BlockRunner).

Objective: the mean KL divergence KL(dense || schedule) of the model's softmax from the dense model's own, on the
user's images; top-1 agreement with dense is reported beside it.

Method: seeded exchange (docs/sweeps.md says why). 1. Seeds: the same r at every block of a set of evenly spaced
blocks (the paper's 3 6 9 among them), at the smallest r within the budget, with the paper's threshold; the seed
with the least KL is kept. 2. Exchanges at (about) the budget: move `step` tokens from one block to another (an
existing one or a neighbour of one; the receiver takes as many as the budget allows), move a block's reduction to
the next block or the previous one, or change a block's threshold. Every round screens all exchanges on the first
`screen_images`, scores the `finalists` best on all images, and takes the best one only if it lowers the mean KL by
`min_gain_se` standard errors of its per-image differences (a gain the images resolve, not one of their noise);
when none does, the step goes down; the search ends after the smallest. Every schedule it visits meets the budget,
and it never ends worse than its best seed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ppt_common.config import DEFAULT_PP_LOC_LIST, DEFAULT_THRESHOLD, ArchConfig, PPTConfig, get_arch, max_r
from ppt_common.macs import gmacs

DEFAULT_THRESHOLDS = (0.0, 7e-5, 1.0)  # prune only, the paper's, pool only (1 exceeds every score variance)
DEFAULT_STEPS = (16, 8, 4)  # tokens an exchange moves, coarse to fine
Blocks = Dict[int, Tuple[int, float]]  # block -> (r, threshold)


@dataclasses.dataclass
class SearchSettings:
    target_gmacs: float
    thresholds: Tuple[float, ...] = DEFAULT_THRESHOLDS
    steps: Tuple[int, ...] = DEFAULT_STEPS
    min_gain_se: float = 2.0  # an exchange must lower the mean KL by this many standard errors
    screen_images: int = 64  # every exchange is screened on the first this many images (runner batches rounded up)
    finalists: int = 4  # the best screened exchanges scored on all images
    seed_threshold: float = DEFAULT_THRESHOLD


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def per_image_kl(dense_logp: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(dense || model) of each image, in nats."""
    logq = log_softmax(logits)
    return np.sum(np.exp(dense_logp) * (dense_logp - logq), 1)


def agreement(dense_logp: np.ndarray, logits: np.ndarray) -> float:
    """The fraction of images whose top-1 is the dense model's."""
    return float(np.mean(dense_logp.argmax(1) == logits.argmax(1)))


def kl_and_agreement(dense_logp: np.ndarray, logits: np.ndarray) -> Tuple[float, float]:
    """Mean KL(dense || model) in nats, and the fraction of images whose top-1 is the dense model's."""
    return float(np.mean(per_image_kl(dense_logp, logits))), agreement(dense_logp, logits)


def to_config(blocks: Blocks) -> PPTConfig:
    if not blocks:
        return PPTConfig(r=0, pp_loc_list=())
    order = sorted(blocks)
    return PPTConfig(r=tuple(blocks[b][0] for b in order), pp_loc_list=tuple(order),
                     threshold=tuple(blocks[b][1] for b in order))


def feasible(arch: ArchConfig, blocks: Blocks) -> bool:
    """Every r within what its block can remove (no clamping: the schedule file states what runs)."""
    n = arch.num_tokens
    for b in sorted(blocks):
        r = blocks[b][0]
        if r > max_r(n, arch.num_prefix_tokens):
            return False
        n -= r
    return True


def clamp_after(arch: ArchConfig, blocks: Blocks) -> Blocks:
    """Later blocks' r lowered to what they can still remove once an earlier block removes more (0: dropped)."""
    n, out = arch.num_tokens, {}
    for b in sorted(blocks):
        r = min(blocks[b][0], max_r(n, arch.num_prefix_tokens))
        if r > 0:
            out[b] = (r, blocks[b][1])
        n -= r
    return out


def cost(arch: ArchConfig, blocks: Blocks) -> float:
    return gmacs(arch, to_config(blocks))


def fill(arch: ArchConfig, blocks: Blocks, block: int, threshold: float, target: float) -> Optional[Blocks]:
    """`blocks` with `block`'s r set to the smallest that brings the schedule within `target` GMACs (MACs fall as r
    grows); None if no feasible r does."""
    others = {b: v for b, v in blocks.items() if b != block}
    for r in range(0, arch.num_tokens):
        trial = {**others, block: (r, threshold)} if r else others
        if not feasible(arch, trial):
            return None
        if cost(arch, trial) <= target:
            return trial
    return None


def seed_block_sets(arch: ArchConfig, paper: Sequence[int] = DEFAULT_PP_LOC_LIST) -> List[Tuple[int, ...]]:
    """The paper's blocks first, then evenly spaced sets (strides 2 and 3, three to six blocks) within blocks
    1..depth-2."""
    sets = [tuple(b for b in paper if b < arch.depth)]
    last = arch.depth - 2
    for stride in (2, 3):
        for k in range(3, 7):
            for start in range(1, last - stride * (k - 1) + 1):
                sets.append(tuple(range(start, start + stride * k, stride)))
    return list(dict.fromkeys(s for s in sets if s))


def uniform(arch: ArchConfig, locations: Sequence[int], threshold: float, target: float) -> Optional[Blocks]:
    """The same r at every block of `locations` (later blocks clamped to what they can remove, as the paper's code
    does), the smallest r within `target`; None if even the largest is over it."""
    for r in range(1, arch.num_tokens):
        blocks = clamp_after(arch, {b: (r, threshold) for b in locations})
        if cost(arch, blocks) <= target:
            return blocks
        if r > max_r(arch.num_tokens, arch.num_prefix_tokens):
            return None
    return None


def seeds(arch: ArchConfig, settings: SearchSettings) -> List[Blocks]:
    found = (uniform(arch, s, settings.seed_threshold, settings.target_gmacs) for s in seed_block_sets(arch))
    unique = {}
    for blocks in found:
        if blocks is not None:
            unique.setdefault(tuple(sorted(blocks.items())), blocks)
    return list(unique.values())


def exchanges(arch: ArchConfig, blocks: Blocks, step: int, settings: SearchSettings) -> Iterator[Tuple[Blocks, int]]:
    """The schedules one exchange away, each with the first block it changes; all within the budget."""
    target, seen = settings.target_gmacs, set()
    receivers = sorted({j for b in blocks for j in (b - 1, b, b + 1) if 0 <= j < arch.depth})

    def valid(trial: Optional[Blocks], first: int):
        if trial is None or trial == blocks or not feasible(arch, trial):
            return None
        key = tuple(sorted(trial.items()))
        if key in seen:
            return None
        seen.add(key)
        return trial, first

    for i, (r, t) in sorted(blocks.items()):
        giver = {**blocks, i: (r - step, t)} if r > step else {b: v for b, v in blocks.items() if b != i}
        for j in receivers:
            if j != i:
                rj, tj = blocks.get(j, (0, t))
                trial = fill(arch, giver, j, tj, target)
                if trial is not None and trial.get(j, (0,))[0] > rj:
                    out = valid(trial, min(i, j))
                    if out:
                        yield out
        for j in (i - 1, i + 1):
            if 0 <= j < arch.depth and j not in blocks:
                moved = {b: v for b, v in blocks.items() if b != i}
                out = valid(fill(arch, {**moved, j: (r, t)}, j, t, target), min(i, j))
                if out:
                    yield out
        for other in settings.thresholds:
            if other != t:
                out = valid({**blocks, i: (r, other)}, i)
                if out:
                    yield out


class Search:
    """run(blocks) searches from the seeds (blocks None) or continues from `blocks` at step `step`. `runner` has
    run(cfg, start, states, keep) -> (logits, kept) and states_at(kept, block) (pt_reference.search.BlockRunner);
    `on_step(blocks, step, kl, agreement)` is called after every accepted exchange (the caller saves the file).
    `arch`: the model's architecture at the input size the schedule is for (default: the registered one)."""

    def __init__(self, model: str, runner, dense_logp: np.ndarray, settings: SearchSettings,
                 on_step: Callable = None, progress=None, arch: Optional[ArchConfig] = None):
        self.model, self.runner, self.dense_logp, self.settings = model, runner, dense_logp, settings
        self.arch = arch or get_arch(model)
        self.on_step = on_step or (lambda *a: None)
        self.progress = progress
        self.evaluations = 0
        self.seed_scores: List[dict] = []

    def score(self, blocks: Blocks, start: int = 0, kept=None, keep: bool = False, images: Optional[int] = None):
        """(per-image KL, agreement) on all images or the batches holding the first `images`, and with keep the
        states entering every block from `start` on."""
        states = self.runner.states_at(kept, start)
        if images is not None:
            states = states[:-(-images // self.runner.batch_size)]
        logits, new_kept = self.runner.run(to_config(blocks), start, states, keep)
        self.evaluations += 1
        if self.progress is not None:
            self.progress.update(1)
        dense = self.dense_logp[:len(logits)]
        return per_image_kl(dense, logits), agreement(dense, logits), new_kept

    def best_seed(self) -> Blocks:
        best = None
        for blocks in seeds(self.arch, self.settings):
            kl, agree, _ = self.score(blocks)
            self.seed_scores.append({"blocks": sorted(blocks), "r": [blocks[b][0] for b in sorted(blocks)],
                                     "gmacs": round(cost(self.arch, blocks), 6), "kl": float(kl.mean()),
                                     "agreement": agree})
            if best is None or kl.mean() < best[1].mean():
                best = (blocks, kl)
        if best is None:
            raise ValueError(f"no schedule of {self.model} reaches {self.settings.target_gmacs} GMACs")
        return best[0]

    def run(self, blocks: Optional[Blocks] = None, step: Optional[int] = None) -> Tuple[Blocks, float, float]:
        s = self.settings
        if blocks is None or cost(self.arch, blocks) > s.target_gmacs or not feasible(self.arch, blocks):
            blocks, step = self.best_seed(), None
        steps = [k for k in s.steps if step is None or k <= step] or [min(s.steps)]
        kl, agree, kept = self.score(blocks, keep=True)
        self.on_step(blocks, steps[0], float(kl.mean()), agree)
        screened, full = {}, {}  # scores of exchanges from the current schedule (a smaller step repeats some)
        while steps:
            candidates = {tuple(sorted(t.items())): (t, first) for t, first in exchanges(self.arch, blocks, steps[0], s)}
            screen = len(kl) > s.screen_images
            for key, (trial, first) in candidates.items():
                if screen and key not in screened:
                    screened[key] = float(self.score(trial, first, kept, images=s.screen_images)[0].mean())
            finalists = sorted(candidates, key=lambda k: screened[k])[:s.finalists] if screen else list(candidates)
            for key in finalists:
                if key not in full:
                    trial, first = candidates[key]
                    full[key] = self.score(trial, first, kept)[:2]
            best = min(finalists, key=lambda k: full[k][0].mean(), default=None)
            if best is not None and significant_gain(kl, full[best][0], s.min_gain_se):
                blocks, (kl, agree) = candidates[best][0], full[best]
                screened, full = {}, {}
                _, _, kept = self.score(blocks, keep=True)
                self.on_step(blocks, steps[0], float(kl.mean()), agree)
                if self.progress is not None:
                    self.progress.set_postfix_str(f"{cost(self.arch, blocks):.3f} GMACs, KL {kl.mean():.4f}, "
                                                  f"agree {agree:.1%}, step {steps[0]}")
            else:
                steps.pop(0)
        return blocks, float(kl.mean()), agree


def significant_gain(current: np.ndarray, trial: np.ndarray, min_gain_se: float) -> bool:
    """trial's mean KL is lower than current's by min_gain_se standard errors of the per-image differences."""
    gain = current - trial
    if gain.mean() <= 0:
        return False
    if len(gain) < 2:
        return True
    return gain.mean() > min_gain_se * gain.std(ddof=1) / np.sqrt(len(gain))
