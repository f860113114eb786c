"""pt_reference on whole models: the spec's model-level behaviour."""
import numpy as np
import pytest
import timm
import torch

from pt_reference import apply_ppt, create_model, run_with_trace
from pt_reference.factory import build_timm_model
from ppt_common.config import PPTConfig, get_arch

TINY = "deit_tiny_patch16_224"


def tiny_pair(dtype=torch.float64, **ppt_kwargs):
    torch.manual_seed(0)
    dense = build_timm_model(get_arch(TINY)).to(dtype).eval()
    patched = build_timm_model(get_arch(TINY)).to(dtype).eval()
    patched.load_state_dict(dense.state_dict())
    return dense, apply_ppt(patched, **ppt_kwargs)


def images(n, seed=0, dtype=torch.float64):
    return torch.from_numpy(np.random.RandomState(seed).randn(n, 3, 224, 224)).to(dtype)


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(pp_loc_list=())])
def test_no_reduction_gives_exactly_timm_logits(kwargs):
    dense, patched = tiny_pair(torch.float32, **kwargs)
    x = images(2, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(dense(x), patched(x))


def test_state_dict_keys_are_unchanged_by_the_patch():
    dense, patched = tiny_pair()
    assert list(dense.state_dict()) == list(patched.state_dict())


def test_token_trajectory_on_a_real_forward():
    _, model = tiny_pair(trace=True, trace_source=True)
    with torch.no_grad():
        model(images(2))
    assert [(t.block, t.tokens_in, t.tokens_out) for t in model.ppt_trace] == [(3, 197, 147), (6, 147, 97), (9, 97, 49)]
    assert model.ppt_source.shape == (2, 49, 197)


def test_tracing_works_where_gradients_flow():
    """Outside torch.no_grad() (training, a saliency map) the trace is a detached record of the same forward."""
    _, model = tiny_pair(threshold=1e9, trace=True, trace_source=True)
    x = images(2).requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    traced = model.ppt_trace
    with torch.no_grad():
        model(x)
    assert [t.block for t in traced] == [3, 6, 9]
    for a, b in zip(traced, model.ppt_trace):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.merge_src, b.merge_src)


@pytest.mark.parametrize("threshold, expected", [(0.0, {0}), (1e9, {1})])
def test_threshold_forces_all_prune_or_all_pool(threshold, expected):
    _, model = tiny_pair(threshold=threshold, trace=True)
    with torch.no_grad():
        model(images(3))
    for t in model.ppt_trace:
        assert set(t.policy.tolist()) == expected
        assert (t.sizes.sum(-1) == 197).all() if expected == {1} else (t.sizes == 1).all()


def mixed_threshold(model, x):
    """A threshold between the images' block-3 variances, so the batch mixes both policies."""
    model._ppt_info["config"] = model._ppt_info["config"].__class__(threshold=0.0, r=50)
    with torch.no_grad():
        model(x)
    v = np.sort(model.ppt_trace[0].variance)
    return float((v[0] + v[-1]) / 2)


def test_mixed_batch_equals_each_image_alone():
    """Same selections and sources image by image; logits to 1e-12 in float64 (the dense timm model itself is
    not bitwise batch-invariant on CPU: BLAS picks other kernels for other batch sizes; measured 2e-15)."""
    _, model = tiny_pair(trace=True, trace_source=True)
    x = images(4)
    thr = mixed_threshold(model, x)
    _, model = tiny_pair(threshold=thr, trace=True, trace_source=True)
    with torch.no_grad():
        batch_logits = model(x)
        batch_trace, batch_source = model.ppt_trace, model.ppt_source
        assert set(batch_trace[0].policy.tolist()) == {0, 1}
        for i in range(4):
            alone = model(x[i:i + 1])
            np.testing.assert_allclose(alone[0].numpy(), batch_logits[i].numpy(), rtol=0, atol=1e-12)
            assert torch.equal(model.ppt_source[0], batch_source[i]), f"source map of image {i}"
            for tb, ta in zip(batch_trace, model.ppt_trace):
                assert (tb.policy[i], tb.kept[i].tolist(), tb.merge_src[i].tolist(), tb.merge_dst[i].tolist()) == \
                    (ta.policy[0], ta.kept[0].tolist(), ta.merge_src[0].tolist(), ta.merge_dst[0].tolist())


def test_reduction_of_a_mixed_batch_is_bit_identical_to_each_image_alone(rng):
    from pt_reference import ppt
    B, N, C, r = 6, 21, 8, 7
    x, metric = torch.from_numpy(rng.randn(B, N, C)).float(), torch.from_numpy(rng.randn(B, N, 4)).float()
    scores = torch.from_numpy(np.concatenate([np.full((B, 1), 2.0), rng.dirichlet(np.ones(N - 1) * 0.5, B)], 1)).float()
    size = torch.from_numpy(rng.randint(1, 5, (B, N, 1))).float()
    source = torch.from_numpy(rng.rand(B, N, 30) > 0.5).float()
    thr = float(ppt.score_variance(scores).median())
    xb, sb, srcb, plan = ppt.reduce_tokens(x, scores, metric, size, r, thr, source=source)
    assert set(plan.policy.tolist()) == {False, True}
    for i in range(B):
        xa, sa, srca, _ = ppt.reduce_tokens(x[i:i + 1], scores[i:i + 1], metric[i:i + 1], size[i:i + 1], r, thr,
                                             source=source[i:i + 1])
        assert torch.equal(xa[0], xb[i]) and torch.equal(sa[0], sb[i]) and torch.equal(srca[0], srcb[i])


def test_source_maps_partition_the_patches_and_match_sizes():
    _, model = tiny_pair(threshold=1e9, trace=True, trace_source=True)  # all pool: nothing is dropped
    with torch.no_grad():
        model(images(2))
    src = model.ppt_source.numpy()
    assert set(np.unique(src)) <= {0.0, 1.0}
    np.testing.assert_array_equal(src.sum(1), 1.0)  # every original token in exactly one final token
    np.testing.assert_array_equal(src.sum(2), model.ppt_trace[-1].sizes)


def duplicated_patch_model(**kwargs):
    """Zero position embedding: identical patches give identical tokens, so scores and similarities tie."""
    _, model = tiny_pair(**kwargs)
    with torch.no_grad():
        model.pos_embed.zero_()
    return model


def test_ties_from_duplicated_patches_follow_the_stable_policy():
    """A uniform image with no position embedding: many scores and similarities are exactly equal, and wherever
    they are, the lower position wins (prune order, merge order, first maximal partner)."""
    x = torch.full((1, 3, 224, 224), 0.5, dtype=torch.float64)
    model = duplicated_patch_model(threshold=0.0, trace=True)  # prune
    with torch.no_grad():
        model(x)
    t = model.ppt_trace[0]
    s = t.scores[0]
    assert len(s) - len(np.unique(s)) > 50, "fixture should produce exact ties"
    assert t.kept[0].tolist() == sorted(range(len(s)), key=lambda i: (-s[i], i))[:t.tokens_out]
    model = duplicated_patch_model(threshold=1e9, trace=True)  # pool
    with torch.no_grad():
        model(x)
    t = model.ppt_trace[0]
    nm = t.node_max[0]
    assert len(nm) - len(np.unique(nm)) > 20, "fixture should produce exact ties"
    merged_a = sorted(range(len(nm)), key=lambda a: (-nm[a], a))[:t.r]
    assert t.merge_src[0].tolist() == sorted(2 * a for a in merged_a)


def test_unsupported_models_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="no class token"):
        apply_ppt(timm.models.vision_transformer.VisionTransformer(depth=2, embed_dim=64, num_heads=2,
                                                                   class_token=False, global_pool="avg", img_size=32))
    with pytest.raises(ValueError, match="register tokens"):
        apply_ppt(timm.models.vision_transformer.VisionTransformer(depth=2, embed_dim=64, num_heads=2,
                                                                   reg_tokens=4, img_size=32))
    with pytest.raises(TypeError, match="VisionTransformer"):
        apply_ppt(torch.nn.Linear(2, 2))


def test_timm_models_of_every_supported_family_are_patched_in_place():
    """apply_ppt takes timm's own distilled DeiT, DeiT-III (LayerScale) and CLIP (pre-norm) models."""
    for name in ("deit_tiny_distilled_patch16_224", "deit3_small_patch16_224", "vit_base_patch16_clip_224"):
        model = apply_ppt(timm.create_model(name, pretrained=False).eval(), r=30, trace=True)
        with torch.no_grad():
            assert model(images(1, dtype=torch.float32)).shape == (1, 1000)
        assert [t.tokens_out for t in model.ppt_trace][0] == model.patch_embed.num_patches + model.num_prefix_tokens - 30


@pytest.mark.parametrize("name", ["deit_small_patch16_384", "vit_base_patch32_224"])
def test_other_resolutions_and_patch_sizes_follow_the_schedule(name):
    model = create_model(name, trace=True, r=20)
    arch = get_arch(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, arch.img_size, arch.img_size))
    assert out.shape == (1, 1000)
    assert [t.tokens_in for t in model.ppt_trace][0] == arch.num_tokens


def test_ppt_settings_come_as_a_config_or_as_keywords_not_both():
    cfg = PPTConfig(r=[40, 30, 20], threshold=1e-4)
    assert create_model("deit_tiny_patch16_224", ppt_config=cfg).ppt_config == cfg
    assert create_model("deit_tiny_patch16_224", r=[40, 30, 20], threshold=1e-4).ppt_config == cfg
    with pytest.raises(TypeError, match="not both"):
        create_model("deit_tiny_patch16_224", ppt_config=cfg, threshold=1e-3)
    with pytest.raises(TypeError, match="unknown PPT setting.*ratio"):
        apply_ppt(timm.create_model("deit_tiny_patch16_224", pretrained=False), ratio=0.5)


def test_run_with_trace_returns_what_the_forward_recorded():
    model = create_model("deit_tiny_patch16_224", trace=True, trace_source=True, r=20)
    logits, traces, source = run_with_trace(model, images(2, dtype=torch.float32).numpy())
    assert logits.shape == (2, 1000) and [t.block for t in traces] == [3, 6, 9]
    assert source.shape == (2, traces[-1].tokens_out, 197) and (source.sum(-1) == traces[-1].sizes).all()
    with pytest.raises(ValueError, match="trace=True"):
        run_with_trace(create_model("deit_tiny_patch16_224"), images(1, dtype=torch.float32).numpy())
