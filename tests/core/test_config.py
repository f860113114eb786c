"""The r schedule, the static token trajectory, and the MAC counter."""
import dataclasses

import numpy as np
import pytest

from ppt_common.config import PPTConfig, get_arch, parse_r, token_schedule
from ppt_common.macs import count_macs, gmacs, r_for_target_gmacs


def test_trajectory_224_r50_at_3_6_9_is_197_147_97_49():
    plans = token_schedule(197, 12, PPTConfig(r=50, pp_loc_list=(3, 6, 9)))
    assert [p.tokens_out for p in plans] == [197] * 3 + [147] * 3 + [97] * 3 + [49] * 3
    assert [p.r for p in plans if p.is_pp] == [50, 50, 48]  # the last PP block clamps r to (97-1)//2


def test_r_is_clamped_to_half_the_patches():
    plans = token_schedule(11, 4, PPTConfig(r=100, pp_loc_list=(0, 1, 2, 3)))
    assert [p.r for p in plans] == [5, 2, 1, 1]
    assert [p.tokens_out for p in plans] == [6, 4, 3, 2]


def test_prune_fuse_adds_its_fused_token_back_and_the_other_methods_remove_r():
    for method, trajectory in (("prune_fuse", [148, 99, 51]), ("decouple_merge", [147, 97, 49]),
                               ("prune", [147, 97, 49]), ("pool", [147, 97, 49])):
        plans = token_schedule(197, 12, PPTConfig(r=50, method=method))
        assert [p.tokens_out for p in plans if p.is_pp] == trajectory, method
        assert [p.r for p in plans if p.is_pp] == [50, 50, 48 if method != "prune_fuse" else 49]


def test_prune_and_pool_are_ppt_with_the_choice_fixed():
    assert PPTConfig(method="prune", threshold=1.0).policy_threshold == 0.0  # no variance is below 0
    assert PPTConfig(method="pool").policy_threshold == float("inf")
    assert PPTConfig(threshold=3e-5).policy_threshold == 3e-5


def test_per_pp_block_list_and_tome_schedule():
    assert PPTConfig(r=[40, 30, 20], pp_loc_list=(3, 6, 9)).r_per_pp_block(12) == [40, 30, 20]
    # the authors pop a 12-long ToMe schedule, one value per PP block
    assert PPTConfig(r=(50, 0.5), pp_loc_list=(3, 6, 9)).r_per_pp_block(12) == parse_r(12, (50, 0.5))[:3]
    assert parse_r(4, (10, 1.0)) == [0, 6, 13, 20]
    assert parse_r(3, 7) == [7, 7, 7]


def test_threshold_per_pp_block():
    """The i-th PP block takes the i-th threshold; prune and pool still fix every block's choice."""
    cfg = PPTConfig(r=(20, 30, 40), pp_loc_list=(2, 5, 9), threshold=[0, 7e-5, 1])
    assert cfg.threshold == (0.0, 7e-5, 1.0) and cfg.per_block_threshold
    assert [cfg.policy_threshold_at(b) for b in (2, 5, 9)] == [0.0, 7e-5, 1.0]
    assert cfg.threshold_text == "0 7e-05 1"
    pool = PPTConfig(pp_loc_list=(2, 5, 9), threshold=[0, 7e-5, 1], method="pool")
    assert [pool.policy_threshold_at(b) for b in (2, 5, 9)] == [float("inf")] * 3
    with pytest.raises(ValueError, match="policy_threshold_at"):
        cfg.policy_threshold
    with pytest.raises(ValueError, match="block 3 is not a PP block"):
        cfg.policy_threshold_at(3)
    uniform = PPTConfig(threshold=3e-5)  # one float: every PP block, as before
    assert [uniform.policy_threshold_at(b) for b in (3, 6, 9)] == [3e-5] * 3 and not uniform.per_block_threshold
    # the threshold changes no MAC: the similarity is counted wherever an image may pool (macs.similarity_macs)
    assert count_macs(get_arch("deit_tiny_patch16_224"), cfg) == count_macs(
        get_arch("deit_tiny_patch16_224"), dataclasses.replace(cfg, threshold=7e-5))


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=[1e-5, 2e-5]), "threshold lists 2 values for 3 PP blocks"),
    (dict(threshold=[1e-5, -1.0, 2e-5]), "each threshold value must be a finite number >= 0"),
    (dict(threshold=[1e-5, float("inf"), 2e-5]), "each threshold value must be a finite number >= 0"),
])
def test_bad_per_block_thresholds_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPTConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=-1), "r must be >= 0"),
    (dict(threshold=-1.0), "threshold"),
    (dict(pp_loc_list=(6, 3)), "strictly increasing"),
    (dict(r=[1, 2, 3, 4], pp_loc_list=(3, 6, 9)), "4 values for 3 PP blocks"),
    (dict(r=[40, 30], pp_loc_list=(3, 6, 9)), "2 values for 3 PP blocks"),  # never padded with zeros
    (dict(threshold=float("nan")), "finite"),
    (dict(threshold=float("inf")), "finite"),
    (dict(pp_loc_list=(-1, 3)), ">= 0"),
    (dict(method="tome"), "method must be one of ppt, prune, pool, prune_fuse, decouple_merge"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPTConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(r="50"), "r must be an int"),  # not parsed as the list ['5', '0']
    (dict(r=True), "r must be an integer"),
    (dict(r=None), "r must be an int"),
    (dict(r=[50, 49.5, 48]), "each r value must be an integer"),
    (dict(pp_loc_list=(3.0, 6, 9)), "pp_loc_list entry must be an integer"),  # not truncated
    (dict(pp_loc_list=None), "pp_loc_list must be a sequence"),
    (dict(threshold="7e-5"), "threshold must be a number"),
    (dict(threshold=[7e-5, "1", 0]), "each threshold value must be a number"),
    (dict(prop_attn=1), "prop_attn must be True or False"),
])
def test_wrong_types_are_refused_not_coerced(kwargs, message):
    with pytest.raises(TypeError, match=message):
        PPTConfig(**kwargs)


def test_numpy_integers_are_plain_integers():
    cfg = PPTConfig(r=np.int64(30), pp_loc_list=np.array([3, 6, 9]), threshold=np.float32(1e-4))
    assert cfg.r == 30 and cfg.pp_loc_list == (3, 6, 9) and type(cfg.r) is int
    assert PPTConfig(r=np.array([3, 2, 1])).r == (3, 2, 1)


def test_pp_block_beyond_depth_is_refused():
    with pytest.raises(ValueError, match="outside the model's blocks"):
        token_schedule(197, 12, PPTConfig(pp_loc_list=(3, 12)))


def test_unknown_models_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        get_arch("resnet50")


def test_distilled_models_protect_two_prefix_tokens_in_the_schedule():
    arch = get_arch("deit_small_distilled_patch16_224")
    assert arch.num_tokens == 198 and arch.pos_embed_tokens == 198
    plans = token_schedule(arch.num_tokens, arch.depth, PPTConfig(r=100, pp_loc_list=(3, 6, 9)), 2)
    assert [p.r for p in plans if p.is_pp] == [98, 49, 24]  # half the patch tokens: (N - 2) // 2
    assert get_arch("deit3_small_patch16_224").pos_embed_tokens == 196  # no class position embedding
    assert gmacs(arch) == pytest.approx(4.626, abs=1e-3)  # one token more and a second head (DeiT paper: 4.6)


@pytest.mark.parametrize("name, r, dense, ppt", [
    ("deit_small_patch16_224", 50, 4.60, 2.944),
    ("deit_tiny_patch16_224", 50, 1.25, 0.80),
    ("deit_base_patch16_224", 47, 17.57, 11.60),
])
def test_macs_match_the_paper(name, r, dense, ppt):
    arch = get_arch(name)
    assert gmacs(arch) == pytest.approx(dense, abs=0.005)
    assert gmacs(arch, PPTConfig(r=r)) == pytest.approx(ppt, abs=0.001 if name.startswith("deit_small") else 0.005)


def test_macs_without_reduction_equal_dense():
    arch = get_arch("deit_tiny_patch16_224")
    assert gmacs(arch, PPTConfig(r=0)) == gmacs(arch) == gmacs(arch, PPTConfig(pp_loc_list=()))


def test_each_method_counts_the_similarities_it_computes():
    """PPT (any threshold) and pool-only: ToMe's bipartite matmul at N = 197, 147, 97; decouple_merge: r x r among
    the inattentive tokens (r = 50, 50, 48); pruning: none. DeiT-T's head_dim is 64."""
    arch = get_arch("deit_tiny_patch16_224")
    macs = {m: gmacs(arch, PPTConfig(r=50, method=m)) * 1e9 for m in ("ppt", "pool", "prune", "decouple_merge")}
    assert macs["ppt"] == macs["pool"]
    assert macs["ppt"] - macs["prune"] == pytest.approx((99 * 98 + 74 * 73 + 49 * 48) * 64, abs=1)
    assert macs["decouple_merge"] - macs["prune"] == pytest.approx((50 * 50 + 50 * 50 + 48 * 48) * 64, abs=1)


def test_target_gmacs_takes_the_nearest_r_and_states_the_rule():
    """The paper's '0.8G' for DeiT-T is r=50 at blocks 3 6 9 (0.8001), its '11.6G' for DeiT-B is r=47."""
    r, g, message = r_for_target_gmacs(get_arch("deit_tiny_patch16_224"), 0.8, [3, 6, 9])
    assert (r, round(g, 4)) == (50, 0.8001)
    assert "r=50" in message and "0.8001" in message and "r=49: 0.8061" in message and "r=51: 0.7941" in message
    assert "nearest" in message and "ties to the smaller r" in message and "outside" not in message
    assert r_for_target_gmacs(get_arch("deit_base_patch16_224"), 11.6, [3, 6, 9])[0] == 47


def test_target_gmacs_ties_go_to_the_smaller_r_and_unreachable_targets_are_said():
    arch = get_arch("deit_tiny_patch16_224")
    g49, g50 = (gmacs(arch, PPTConfig(r=r)) for r in (49, 50))
    middle = (g49 + g50) / 2
    r = r_for_target_gmacs(arch, middle, [3, 6, 9])[0]
    assert r == (49 if abs(g49 - middle) <= abs(g50 - middle) else 50)
    r, g, message = r_for_target_gmacs(arch, 0.1, [3, 6, 9])
    assert g == gmacs(arch, PPTConfig(r=r)) == gmacs(arch, PPTConfig(r=r + 20))  # every PP block clamped
    assert g < gmacs(arch, PPTConfig(r=r - 1)) and "outside the reachable" in message
    assert r_for_target_gmacs(arch, 9.0, [3, 6, 9])[0] == 0
    with pytest.raises(ValueError, match="must be positive"):
        r_for_target_gmacs(arch, 0.0, [3, 6, 9])
