"""The schedule search's algorithm (ppt_common.search), on MAC counts and a stand-in runner: seeds at the budget,
exchanges that stay within it, and a gain taken only when the images resolve it."""
import numpy as np
import pytest

from ppt_common.config import get_arch
from ppt_common.macs import gmacs, r_for_target_gmacs
from ppt_common.search import (Search, SearchSettings, cost, exchanges, feasible, seed_block_sets, seeds,
                               significant_gain, to_config, uniform)

TINY = "deit_tiny_patch16_224"
ARCH = get_arch(TINY)


def test_the_seeds_start_with_the_papers_blocks_and_are_evenly_spaced_inside_the_model():
    sets = seed_block_sets(ARCH)
    assert sets[0] == (3, 6, 9) and len(sets) == len(set(sets))
    for s in sets:
        assert 1 <= s[0] and s[-1] <= ARCH.depth - 2 and 3 <= len(s) <= 6
        assert len({b - a for a, b in zip(s, s[1:])}) == 1


@pytest.mark.parametrize("target", [0.8, 0.69, 0.565])
def test_each_seed_is_the_smallest_equal_r_within_the_budget(target):
    for blocks in seeds(ARCH, SearchSettings(target)):
        assert cost(ARCH, blocks) <= target and feasible(ARCH, blocks)
    paper = uniform(ARCH, (3, 6, 9), 7e-5, 0.8)
    assert [paper[b][0] for b in (3, 6)] == [51, 51]  # r=50 costs 0.8001, just over 0.8
    assert r_for_target_gmacs(ARCH, 0.8, (3, 6, 9))[0] == 50
    assert uniform(ARCH, (3, 6, 9), 7e-5, 0.565) is None  # three blocks cannot reach 45 % of dense
    assert seeds(ARCH, SearchSettings(0.565))  # more blocks can


def test_every_exchange_stays_within_the_budget_and_changes_one_thing():
    settings = SearchSettings(0.69)
    start = uniform(ARCH, (3, 6, 9), 7e-5, 0.69)
    trials = list(exchanges(ARCH, start, 8, settings))
    assert len(trials) > 10
    for trial, first in trials:
        assert trial != start and feasible(ARCH, trial) and cost(ARCH, trial) <= 0.69
        changed = [b for b in set(trial) | set(start) if trial.get(b) != start.get(b)]
        assert first == min(changed)
    kinds = {"threshold" if set(t) == set(start) and all(t[b][0] == start[b][0] for b in t) else "tokens"
             for t, _ in trials}
    assert kinds == {"threshold", "tokens"}
    assert any(set(t) - set(start) for t, _ in trials)  # a neighbour block takes tokens


def test_a_gain_counts_only_beyond_its_standard_errors():
    rng = np.random.default_rng(0)
    current = rng.random(100)
    assert significant_gain(current, current - 0.01, 2.0)  # the same small gain on every image
    noisy = current - 0.01 + rng.normal(0, 0.5, 100)
    assert noisy.mean() < current.mean() and not significant_gain(current, noisy, 2.0)
    assert not significant_gain(current, current + 0.01, 0.0)


class TokenCountRunner:
    """Logits that depend on the schedule only through how many tokens each block keeps: the further from dense the
    token counts, the larger the KL (an early block costs more than a late one)."""

    batch_size = 8

    def __init__(self, n=32):
        self.noise = np.random.default_rng(1).normal(size=(n, 10))
        self.images_run = []

    def states_at(self, kept, block):
        return list(range(len(self.noise) // self.batch_size))  # one "state" per batch

    def run(self, cfg, start, states, keep=False):
        r = dict(zip(cfg.pp_loc_list, cfg.r_per_pp_block(ARCH.depth)))
        damage = sum(r_b * (ARCH.depth - b) ** 2 for b, r_b in r.items()) / 1e4
        self.images_run.append(len(states) * self.batch_size)
        return self.noise[:len(states) * self.batch_size] * (1 - damage), {}


@pytest.mark.parametrize("screen", [64, 12])
def test_the_search_keeps_the_budget_and_never_ends_worse_than_its_best_seed(screen):
    runner = TokenCountRunner()
    dense = runner.run(to_config({}), 0, runner.states_at(None, 0))[0]
    from ppt_common.search import log_softmax
    saved = []
    search = Search(TINY, runner, log_softmax(dense), SearchSettings(0.8, min_gain_se=0.0, screen_images=screen),
                    on_step=lambda *a: saved.append(a))
    blocks, kl, _ = search.run()
    assert cost(ARCH, blocks) <= 0.8 and feasible(ARCH, blocks)
    assert kl <= min(s["kl"] for s in search.seed_scores)
    assert kl < min(s["kl"] for s in search.seed_scores)  # late blocks cost less here: exchanges find it
    assert saved[-1][0] == blocks and len(saved) >= 2
    assert max(blocks) > 9 or blocks != uniform(ARCH, (3, 6, 9), 7e-5, 0.8)
    assert gmacs(ARCH, to_config(blocks)) == cost(ARCH, blocks)
    # screening: with 12 of 32 images, exchanges are first run on the two batches holding them
    assert (16 in runner.images_run) == (screen == 12) and 32 in runner.images_run
