"""A label-free search for a per-block PPT schedule within a MAC budget (framework-neutral; the forwards are a
runner's, pt_reference.search.BlockRunner).

Objective: the mean KL divergence KL(dense || schedule) of the model's softmax from the dense model's own, on the
user's images; top-1 agreement with dense is reported beside it. Method: greedy and MAC-aware, from the dense
model. Each step tries, at every block, "remove more tokens here" with each candidate threshold (prune only 0, the
paper's 7e-5, pool only 1): the r increment saves a given number of MACs, so early and late blocks are compared at equal
cost. The move with the least KL increase per GMAC saved is taken; its block's forwards start from the cached
activations entering it. Lazy re-evaluation: a step re-runs the moves whose last score was among the best `lazy_top`
and those at the block just changed, and every `full_every` steps all moves. The last step takes only the tokens
the budget needs, so the schedule ends just under it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ppt_common.config import ArchConfig, PPTConfig, get_arch, max_r
from ppt_common.macs import gmacs

DEFAULT_THRESHOLDS = (0.0, 7e-5, 1.0)  # prune only, the paper's, pool only (1 exceeds every score variance)
Blocks = Dict[int, Tuple[int, float]]  # block -> (r, threshold)


@dataclasses.dataclass
class SearchSettings:
    target_gmacs: float
    thresholds: Tuple[float, ...] = DEFAULT_THRESHOLDS
    step_gmacs: float = 0.025  # about what one move saves
    lazy_top: int = 6
    full_every: int = 4
    rank_images: int = 64  # moves are ranked on the first this many images; the scores use all


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def kl_and_agreement(dense_logp: np.ndarray, logits: np.ndarray) -> Tuple[float, float]:
    """Mean KL(dense || model) in nats, and the fraction of images whose top-1 is the dense model's."""
    logq = log_softmax(logits)
    kl = float(np.mean(np.sum(np.exp(dense_logp) * (dense_logp - logq), 1)))
    return kl, float(np.mean(dense_logp.argmax(1) == logq.argmax(1)))


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


def step_size(settings: SearchSettings, current: float) -> float:
    """What one move saves: a quarter of the way to the budget, at least step_gmacs (coarse far from the budget,
    fine near it)."""
    return max(settings.step_gmacs, (current - settings.target_gmacs) / 4)


def move(arch: ArchConfig, blocks: Blocks, block: int, threshold: float, settings: SearchSettings,
         current: float) -> Optional[Tuple[Blocks, float]]:
    """`block` removes more tokens with `threshold` (later blocks clamped): the smallest increment saving
    step_size, or reaching the budget if that comes first. None if the block can remove no more."""
    r0, step = blocks.get(block, (0, threshold))[0], step_size(settings, current)
    for r in range(r0 + 1, arch.num_tokens):
        trial = {**blocks, block: (r, threshold)}
        if not feasible(arch, {b: v for b, v in trial.items() if b <= block}):
            return None
        trial = clamp_after(arch, trial)
        cost = gmacs(arch, to_config(trial))
        if current - cost >= step or cost <= settings.target_gmacs:
            return trial, cost
    return None


class Search:
    """run(blocks) continues the greedy search from `blocks` until the budget is met. `runner` has run(cfg, start,
    states, keep) -> (logits, kept) and states_at(kept, block) (pt_reference.search.BlockRunner on the rank
    images); `on_step(blocks, gmacs, kl, agreement)` is called after every move (the caller saves the file).
    `arch`: the model's architecture at the input size the schedule is for (default: the registered one)."""

    def __init__(self, model: str, runner, dense_logp: np.ndarray, settings: SearchSettings,
                 on_step: Callable = None, progress=None, arch: Optional[ArchConfig] = None):
        self.model, self.runner, self.dense_logp, self.settings = model, runner, dense_logp, settings
        self.arch = arch or get_arch(model)
        self.on_step = on_step or (lambda *a: None)
        self.progress = progress
        self.depth = self.arch.depth
        self.evaluations = 0

    def score(self, blocks: Blocks, start: int, kept, keep: bool = False):
        logits, new_kept = self.runner.run(to_config(blocks), start, self.runner.states_at(kept, start), keep)
        self.evaluations += 1
        return kl_and_agreement(self.dense_logp, logits), new_kept

    def run(self, blocks: Blocks) -> Tuple[Blocks, float, float]:
        s, arch = self.settings, self.arch
        cost = gmacs(arch, to_config(blocks))
        (kl, agree), kept = self.score(blocks, 0, None, keep=True)
        stale: Dict[Tuple[int, float], float] = {}
        changed, step = None, 0
        while cost > s.target_gmacs:
            moves = {}
            for b in range(self.depth):
                for t in s.thresholds:
                    m = move(arch, blocks, b, t, s, cost)
                    if m is not None:
                        moves[(b, t)] = m
            if not moves:
                raise ValueError(f"no schedule of {self.model} reaches {s.target_gmacs} GMACs")
            if step % s.full_every == 0 or not stale:
                fresh = list(moves)
            else:
                ranked = sorted((k for k in moves if k in stale), key=lambda k: stale[k])[:s.lazy_top]
                fresh = set(ranked) | {k for k in moves if k[0] == changed or k not in stale}
            results = {}
            for key in fresh:
                trial, trial_cost = moves[key]
                (trial_kl, trial_agree), _ = self.score(trial, key[0], kept)
                stale[key] = (trial_kl - kl) / max(cost - trial_cost, 1e-12)
                results[key] = (trial_kl, trial_agree)
            best = min(results, key=lambda k: (stale[k], k))
            blocks, (prev, cost) = moves[best][0], (cost, moves[best][1])
            _, kept_tail = self.score(blocks, best[0], kept, keep=True)
            kept = {**(kept or {}), **kept_tail}
            kl, agree = results[best]
            changed, step = best[0], step + 1
            self.on_step(blocks, cost, kl, agree)
            if self.progress is not None:
                self.progress.update(prev - cost)
                self.progress.set_postfix_str(f"{cost:.3f} GMACs, KL {kl:.4f}, agree {agree:.1%}")
        return blocks, kl, agree
