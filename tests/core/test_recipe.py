"""The recipe's pieces shared by both frameworks, checked against what DeiT's main.py builds with timm: the lr of
every epoch, the weight-decay groups, and the addressing of random draws that makes resume and msrun exact."""
import numpy as np
import pytest
import torch

from ppt_common.config import ArchConfig
from ppt_common.distributed import World
from ppt_common.training import RECIPE, Recipe, drop_path_draws, epoch_lr, parameter_groups, rank_steps, scaled_lr
from pt_reference.factory import build_timm_model


@pytest.mark.parametrize("recipe", [RECIPE, Recipe(epochs=12, lr=5e-4, min_lr=1e-6, warmup_lr=1e-7, warmup_epochs=3)])
def test_epoch_lr_is_the_lr_deits_loop_trains_each_epoch_with(recipe):
    """DeiT: create_scheduler(args, optimizer) (timm's cosine, stepped per epoch), then for each epoch
    train_one_epoch(...) followed by lr_scheduler.step(epoch)."""
    from timm.scheduler import CosineLRScheduler
    peak = scaled_lr(recipe.lr, 1024)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = CosineLRScheduler(optimizer, t_initial=recipe.epochs, lr_min=recipe.min_lr,
                                  warmup_lr_init=recipe.warmup_lr, warmup_t=recipe.warmup_epochs, t_in_epochs=True)
    for epoch in range(recipe.epochs):
        assert epoch_lr(epoch, peak, recipe) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), epoch
        scheduler.step(epoch)
    assert scaled_lr(1e-5, 4 * 256) == pytest.approx(2e-5)  # the authors' run: 4 GPUs x 256


def test_weight_decay_groups_are_timms():
    from timm.optim import param_groups_weight_decay
    model = build_timm_model(ArchConfig(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2,
                                        num_classes=5, num_prefix_tokens=2, init_values=0.1))
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    by_id = {id(p): name for name, p in model.named_parameters()}
    want_undecayed = sorted(by_id[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"])
    decayed, undecayed = parameter_groups((n, p.ndim) for n, p in model.named_parameters())
    assert sorted(undecayed) == want_undecayed and {"pos_embed", "cls_token", "dist_token"} <= set(undecayed)
    assert "blocks.0.ls1.gamma" in undecayed and "blocks.0.attn.qkv.weight" in decayed


@pytest.mark.parametrize("repeats", [1, 3])
def test_ranks_together_see_one_processs_global_batches(repeats):
    """N ranks with batch b take, step by step, exactly the images one process with batch N*b takes; each rank's
    positions say where its images sit in that global batch."""
    n, b = 50, 4
    single = rank_steps(n, epoch=2, seed=7, repeats=repeats, batch_size=2 * b, world=World(0, 1))
    ranks = [rank_steps(n, epoch=2, seed=7, repeats=repeats, batch_size=b, world=World(r, 2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == n // (2 * b)
    for s, (indices, positions) in enumerate(single):
        merged = np.empty(2 * b, int)
        for rank in ranks:
            merged[rank[s][1]] = rank[s][0]
        np.testing.assert_array_equal(merged, indices)
        np.testing.assert_array_equal(positions, np.arange(2 * b))
        draws = drop_path_draws(7, 2, s, 12, positions, 2 * b)
        for rank in ranks:  # each image gets the same drop-path draws on whichever rank it lands
            np.testing.assert_array_equal(drop_path_draws(7, 2, s, 12, rank[s][1], 2 * b), draws[:, :, rank[s][1]])
    other_epoch = rank_steps(n, epoch=3, seed=7, repeats=repeats, batch_size=2 * b, world=World(0, 1))
    assert not np.array_equal(other_epoch[0][0], single[0][0])
    if repeats == 3:  # repeated augmentation: each image three times in a row of the epoch order
        assert single[0][0][0] == single[0][0][1] == single[0][0][2]


def test_the_banner_states_the_lr_schedule_actually_used_and_warns_when_it_rises():
    """DeiT scales --lr by the global batch / 512 but not --min-lr or --warmup-lr: at global batch 2 the scaled
    lr is 3.9e-08 while the epochs run at 1e-06 to 1e-05 (#30 case 5). The banner says what is used."""
    from ppt_common.training import RECIPE, Recipe, describe_lr_schedule, epoch_lr, scaled_lr
    small = Recipe(epochs=2)
    text, warning = describe_lr_schedule(small, 1e-5, 2)
    used = [epoch_lr(e, scaled_lr(1e-5, 2), small) for e in range(2)]
    assert f"highest {max(used):.3g}" in text and "3.91e-08" in text
    assert warning.startswith("the scaled lr 3.91e-08 is below --warmup-lr 1e-06 and --min-lr 1e-05")
    text, warning = describe_lr_schedule(RECIPE, 1e-5, 1024)  # the authors' 4 x 256 run: a decaying cosine
    assert warning is None and "= 2e-05" in text


def test_a_capped_r_is_reported():
    from ppt_common.config import PPTConfig, get_arch
    from ppt_common.training import capped_r
    assert capped_r(get_arch("deit_tiny_patch16_224"), PPTConfig(r=16)) is None
    assert capped_r(get_arch("deit_tiny_patch16_224"), PPTConfig(r=50)).endswith("[50, 50, 48]")
