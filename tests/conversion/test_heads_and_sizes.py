"""A new head and another resolution on load, as timm's create_model does: the same file gives timm's logits."""
import logging

import mindspore as ms
import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed as timm_resample

import convert
import ms_ppt
import pt_reference
from ppt_common.config import get_arch
from ppt_common.macs import gmacs
from ppt_common.pos_embed import resample_abs_pos_embed
from pt_reference.factory import build_timm_model

NAME, DISTILLED, DEIT3 = "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224"


def timm_file(tmp_path, name, seed=0):
    """A random-weight timm model of the name, saved as timm saves state dicts."""
    torch.manual_seed(seed)
    path = tmp_path / f"{name}.pth"
    torch.save(build_timm_model(get_arch(name)).state_dict(), path)
    return str(path)


def ms_logits(model, x):
    return model(ms.Tensor(x)).asnumpy()


def pt_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("old, new, prefix", [(14, 24, 1), (14, 24, 2), (14, 24, 0), (14, 20, 1), (7, 9, 1)])
def test_a_grown_position_embedding_is_timms_bit_for_bit(old, new, prefix):
    pos = (np.random.default_rng(old * new + prefix).standard_normal((1, prefix + old * old, 48)) * 0.02)
    pos = pos.astype(np.float32)
    ours = resample_abs_pos_embed(pos, (new, new), prefix)
    theirs = timm_resample(torch.from_numpy(pos), [new, new], num_prefix_tokens=prefix).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("old, new", [(24, 14), (14, 7)])
def test_a_shrunk_position_embedding_is_within_one_float32_ulp_of_timms(old, new):
    """(of the embedding's largest value: the sums cancel, so the error is not relative to each result)"""
    pos = np.random.default_rng(old).standard_normal((1, 1 + old * old, 48)).astype(np.float32)
    ours = resample_abs_pos_embed(pos, (new, new), 1)
    theirs = timm_resample(torch.from_numpy(pos), [new, new], num_prefix_tokens=1).numpy()
    assert np.abs(ours - theirs).max() <= np.spacing(np.abs(pos).max())
    np.testing.assert_array_equal(ours[:, :1], pos[:, :1])  # the class token's embedding is kept


@pytest.mark.parametrize("name", [NAME, pytest.param(DISTILLED, marks=pytest.mark.slow),
                                  pytest.param(DEIT3, marks=pytest.mark.slow)])  # 2 and 0 prefix tokens resampled
def test_another_resolution_gives_timms_logits_in_float64(tmp_path, name):
    """timm.create_model(name, img_size=256, pretrained=True, pretrained_cfg_overlay=dict(file=...)) against
    create_model(name, checkpoint=..., img_size=256), dense, in both frameworks."""
    path = timm_file(tmp_path, name)
    reference = timm.create_model(name, img_size=256, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    x = np.random.default_rng(1).standard_normal((1, 3, 256, 256))
    expected = pt_logits(reference.double().eval(), x)
    ms_model = ms_ppt.create_model(name, checkpoint=path, img_size=256, r=0, dtype="float64", custom_kernels=False)
    pt_model = pt_reference.create_model(name, checkpoint=path, img_size=256, r=0, dtype="float64")
    assert ms_model.pos_embed.shape == tuple(reference.pos_embed.shape)
    assert np.abs(ms_logits(ms_model, x) - expected).max() <= 1e-9
    assert np.abs(pt_logits(pt_model, x) - expected).max() <= 1e-9


@pytest.mark.slow
def test_the_token_schedule_and_macs_follow_the_new_token_count(tmp_path):
    path = timm_file(tmp_path, NAME)
    model = ms_ppt.create_model(NAME, checkpoint=path, img_size=384, r=50)
    assert [p.tokens_in for p in model.plans if p.is_pp] == [577, 527, 477]  # 24 x 24 patches + the class token
    assert gmacs(model.arch, model.ppt_config) > 2.5 * gmacs(get_arch(NAME), model.ppt_config)
    twin = pt_reference.create_model(NAME, checkpoint=path, img_size=384, r=50, dtype="float64")
    x = np.random.default_rng(2).standard_normal((1, 3, 384, 384))
    ms64 = ms_ppt.create_model(NAME, checkpoint=path, img_size=384, r=50, dtype="float64", custom_kernels=False)
    assert np.abs(ms_logits(ms64, x) - pt_logits(twin, x)).max() <= 1e-9


def test_a_registered_384_model_takes_a_224_file(tmp_path):
    """As timm: the name's own image size decides, and the file's grid is resampled to it."""
    path = timm_file(tmp_path, NAME)
    model = ms_ppt.create_model("deit_tiny_patch16_384", checkpoint=path, r=0)
    assert model.arch.img_size == 384 and model.pos_embed.shape == (1, 577, 192)


def test_an_image_size_that_is_not_a_multiple_of_the_patch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of .* patch size 16"):
        ms_ppt.create_model(NAME, img_size=300)


@pytest.mark.parametrize("name", [NAME, DISTILLED])
def test_a_new_head_keeps_every_backbone_tensor_of_the_file(tmp_path, name, caplog):
    path = timm_file(tmp_path, name)
    saved = convert.read_state_dict(path)
    with caplog.at_level(logging.WARNING, logger="ppt"):
        model = ms_ppt.create_model(name, checkpoint=path, num_classes=7)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: the checkpoint's 1000-class head was left out; a new 7-class head is initialised (train it "
        "before use)"]
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    heads = [k for k in params if k.startswith("head")]
    assert all(np.array_equal(params[k], saved[k]) for k in params if k not in heads)
    assert {k: params[k].shape for k in heads if k.endswith("weight")} == {
        k: (7, 192) for k in ("head.weight", "head_dist.weight") if k in params}
    # timm's initialisation: trunc_normal(std 0.02) weights (truncated at +-2, as timm's), zero bias
    assert 0.018 < params["head.weight"].std() < 0.022 and abs(params["head.weight"].mean()) < 0.002
    assert not params["head.bias"].any()
    twin = pt_reference.create_model(name, checkpoint=path, num_classes=7)
    assert twin.head.weight.shape == (7, 192) and not twin.head.bias.detach().any()
    assert all(torch.equal(v, torch.from_numpy(saved[k])) for k, v in twin.state_dict().items()
               if not k.startswith("head"))


@pytest.mark.parametrize("name", [NAME, pytest.param(DISTILLED, marks=pytest.mark.slow)])
def test_num_classes_0_gives_timms_pooled_features(tmp_path, name):
    path = timm_file(tmp_path, name)
    reference = timm.create_model(name, num_classes=0, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224))
    expected = pt_logits(reference.double().eval(), x)
    assert expected.shape == (2, 192)
    ms_model = ms_ppt.create_model(name, checkpoint=path, num_classes=0, r=0, dtype="float64", custom_kernels=False)
    assert not [p.name for p in ms_model.get_parameters() if p.name.startswith("head")]
    assert np.abs(ms_logits(ms_model, x) - expected).max() <= 1e-9
    pt_model = pt_reference.create_model(name, checkpoint=path, num_classes=0, r=0, dtype="float64")
    assert np.abs(pt_logits(pt_model, x) - expected).max() <= 1e-9


def test_a_headless_checkpoint_round_trips_and_loads_as_features(tmp_path):
    model = ms_ppt.create_model(NAME, checkpoint=timm_file(tmp_path, NAME), num_classes=0)
    ms.save_checkpoint(model, str(tmp_path / "features.ckpt"))
    again = ms_ppt.create_model(NAME, checkpoint=str(tmp_path / "features.ckpt"))
    assert again.arch.num_classes == 0
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        ms_ppt.create_model(NAME, num_classes=-1)


def test_mindcv_create_model_forwards_num_classes_to_a_new_head(tmp_path):
    import mindcv
    path = timm_file(tmp_path, NAME)
    model = mindcv.create_model("ppt_" + NAME, num_classes=5, checkpoint=path)
    assert model.head.weight.shape == (5, 192)
