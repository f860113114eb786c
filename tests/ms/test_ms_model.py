"""ms_ppt models: float64 parity with the reference (every trace field, logits to 1e-9), both execution modes."""
import dataclasses
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_ppt
import pt_reference
from conftest import DEIT_TINY, ROOT, need_shared_data
from ms_ppt.factory import run_with_trace
from ms_ppt.vision_transformer import params_from_numpy
from ppt_common.trace import compare_traces

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def pt_model(name, checkpoint=None, **kwargs):
    torch.manual_seed(0)
    return pt_reference.create_model(name, checkpoint=checkpoint, dtype="float64", trace=True, **kwargs)


def ms_twin(pt, name, **kwargs):
    """The MindSpore model with the very same weights as a pt_reference model."""
    model = ms_ppt.create_model(name, dtype="float64", trace=True, **kwargs)
    params_from_numpy(model, {k: v.numpy() for k, v in pt.state_dict().items()})
    return model


def run_pt(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy(), model.ppt_trace


def mixed_threshold(name, x, checkpoint=None):
    """Midway between the batch's block-3 variances: the batch then mixes pool and prune."""
    _, trace = run_pt(pt_model(name, checkpoint, threshold=0.0), x)
    v = np.sort(trace[0].variance)
    return float(np.sqrt(v[0] * v[-1]))


def images(n, seed=0):
    return np.random.RandomState(seed).randn(n, 3, 224, 224)


def assert_parity(name, x, threshold, mode, checkpoint=None, expect_policies=None):
    ms.set_context(mode=MODES[mode])
    pt = pt_model(name, checkpoint, threshold=threshold)
    pt_logits, pt_trace = run_pt(pt, x)
    ms_logits, ms_trace, _ = run_with_trace(ms_twin(pt, name, threshold=threshold), x)
    assert compare_traces(pt_trace, ms_trace) == []
    np.testing.assert_allclose(ms_logits, pt_logits, rtol=0, atol=1e-9)
    if expect_policies is not None:
        assert set(pt_trace[0].policy.tolist()) == expect_policies
    return pt_trace


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224"])  # DeiT-B below; DeiT-S differs only in width
@pytest.mark.slow
def test_random_init_parity_all_pool_all_prune_mixed(name, mode):
    x = images(3)
    if mode == "pynative":  # each threshold is a new graph: GRAPH_MODE takes the mixed batch, which has both
        assert_parity(name, x, 1e9, mode, expect_policies={1})
        assert_parity(name, x, 0.0, mode, expect_policies={0})
    assert_parity(name, x, mixed_threshold(name, x), mode, expect_policies={0, 1})


@pytest.mark.slow
def test_random_init_parity_deit_base_mixed():
    x = images(2)  # PyNative: DeiT-B's graph compiles like DeiT-T's, at twice the cost
    assert_parity("deit_base_patch16_224", x, mixed_threshold("deit_base_patch16_224", x), "pynative",
                  expect_policies={0, 1})


@pytest.mark.parametrize("mode", ["pynative"])  # GRAPH_MODE: tests/test_parity.py, on all 270 photos
@pytest.mark.slow
def test_real_deit_tiny_parity_paper_settings(mode, real_images):
    """The forced policies on real photos: tests/test_parity.py (prune and pool methods)."""
    need_shared_data()
    x = real_images[0][::27].astype(np.float64)  # 10 photos across the sample
    traces = assert_parity("deit_tiny_patch16_224", x, 7e-5, mode, checkpoint=DEIT_TINY)
    assert {0, 1} <= set(np.concatenate([t.policy for t in traces]).tolist())


@pytest.mark.slow
def test_graph_mode_and_pynative_give_identical_results():
    x = images(3, seed=1).astype(np.float32)
    thr = mixed_threshold("deit_tiny_patch16_224", x.astype(np.float64))
    outputs = {}
    for mode in ("graph", "pynative"):
        ms.set_context(mode=MODES[mode])
        model = ms_ppt.create_model("deit_tiny_patch16_224", threshold=thr, trace=True, trace_source=True)
        params_from_numpy(model, {p.name: np.random.RandomState(abs(hash(p.name)) % 2**31).randn(*p.shape) * 0.05
                                  for p in model.get_parameters()})
        outputs[mode] = run_with_trace(model, x)
    (lg, tg, sg), (lp, tp, sp) = outputs["graph"], outputs["pynative"]
    np.testing.assert_allclose(lg, lp, rtol=0, atol=1e-5)
    assert compare_traces(tg, tp, rtol=1e-5, atol=1e-9) == []
    np.testing.assert_array_equal(sg, sp)


@pytest.mark.slow
def test_no_reduction_equals_the_dense_model_and_timm():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = images(2)
    pt = pt_model("deit_tiny_patch16_224", r=0)
    pt_logits, _ = run_pt(pt, x)
    a = ms_twin(pt, "deit_tiny_patch16_224", r=0)(ms.Tensor(x))[0].asnumpy()
    b = ms_twin(pt, "deit_tiny_patch16_224", pp_loc_list=())(ms.Tensor(x))[0].asnumpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, pt_logits, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_mixed_batch_equals_each_image_alone():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = images(4, seed=2)
    thr = mixed_threshold("deit_tiny_patch16_224", x)
    pt = pt_model("deit_tiny_patch16_224")
    model = ms_twin(pt, "deit_tiny_patch16_224", threshold=thr, trace_source=True)
    logits, traces, source = run_with_trace(model, x)
    assert set(traces[0].policy.tolist()) == {0, 1}
    for i in range(4):
        li, ti, si = run_with_trace(model, x[i:i + 1])
        np.testing.assert_allclose(li[0], logits[i], rtol=0, atol=1e-12)
        assert compare_traces([t.image(i) for t in traces], ti) == []
        np.testing.assert_array_equal(si[0], source[i])


@pytest.mark.slow
def test_source_maps_match_the_reference_in_a_mixed_batch():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = images(4, seed=3)
    thr = mixed_threshold("deit_tiny_patch16_224", x)
    pt = pt_model("deit_tiny_patch16_224", threshold=thr, trace_source=True)
    run_pt(pt, x)
    _, _, source = run_with_trace(ms_twin(pt, "deit_tiny_patch16_224", threshold=thr, trace_source=True), x)
    np.testing.assert_array_equal(source, pt.ppt_source.numpy())


@pytest.mark.parametrize("method", ["prune_fuse", "decouple_merge"])
@pytest.mark.slow
def test_single_rule_methods_give_the_reference_traces_logits_and_sources_in_graph_mode(method):
    ms.set_context(mode=ms.GRAPH_MODE)
    x = images(2, seed=4)
    pt = pt_model("deit_tiny_patch16_224", method=method, trace_source=True)
    pt_logits, pt_trace = run_pt(pt, x)
    logits, traces, source = run_with_trace(ms_twin(pt, "deit_tiny_patch16_224", method=method, trace_source=True), x)
    assert compare_traces(pt_trace, traces) == []
    np.testing.assert_allclose(logits, pt_logits, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(source, pt.ppt_source.numpy())
    # r=50 at blocks 3 6 9, clamped to half the patches at block 9; prune_fuse adds its fused token back
    assert [t.tokens_out for t in traces] == ([148, 99, 51] if method == "prune_fuse" else [147, 97, 49])
    assert (source.sum(1) == 1).all()  # nothing dropped: every patch is held by exactly one token


def test_float16_keeps_decisions_in_float32_and_runs():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = ms_ppt.create_model("deit_tiny_patch16_224", dtype="float16", trace=True)
    logits, traces, _ = run_with_trace(model, images(1).astype(np.float16))
    assert logits.dtype == np.float16 and np.isfinite(logits).all()
    assert traces[0].variance.dtype == np.float64 and [t.tokens_out for t in traces] == [147, 97, 49]


def test_create_model_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        ms_ppt.create_model("nope")
    with pytest.raises(ValueError, match="unsupported dtype"):
        ms_ppt.create_model("deit_tiny_patch16_224", dtype="int8")
    with pytest.raises(ValueError, match="no official weights are registered for deit_tiny_patch16_384"):
        ms_ppt.create_model("deit_tiny_patch16_384", pretrained=True)
    with pytest.raises(ValueError, match="two sources of weights"):
        ms_ppt.create_model("deit_tiny_patch16_224", pretrained=True, checkpoint=DEIT_TINY)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=str(tmp_path / "missing.pth"))


def test_mindcv_registry_builds_ppt_models():
    import mindcv
    model = mindcv.create_model("ppt_deit_small_patch16_224", r=[40, 30, 20], threshold=1e-4)
    assert [p.r for p in model.pp_blocks] == [40, 30, 20] and model.ppt_config.threshold == 1e-4


def test_mindcv_registry_takes_the_arguments_of_mindcvs_train_script(tmp_path):
    """mindcv's train.py builds its network with num_classes, in_channels, drop_rate, drop_path_rate, pretrained,
    checkpoint_path and ema."""
    import mindcv
    import convert
    ms.set_seed(0)
    state = {p.name: p.asnumpy() for p in ms_ppt.create_model("deit_tiny_patch16_224", num_classes=10).get_parameters()}
    convert.write_state_dict(state, tmp_path / "ten.ckpt")
    model = mindcv.create_model("ppt_deit_tiny_patch16_224", num_classes=10, in_channels=3, drop_rate=0.1,
                                drop_path_rate=0.2, pretrained=False, checkpoint_path=str(tmp_path / "ten.ckpt"),
                                ema=False)
    assert (model.arch.drop_rate, model.arch.drop_path_rate, model.arch.num_classes) == (0.1, 0.2, 10)
    assert model.blocks[-1].drop_path1.keep == pytest.approx(0.8)
    np.testing.assert_array_equal(model.head.weight.asnumpy(), state["head.weight"])
    with pytest.raises(TypeError, match="unknown model keyword.*drop_out"):
        mindcv.create_model("ppt_deit_tiny_patch16_224", drop_out=0.1)


def test_ppt_settings_come_as_a_config_or_as_keywords_not_both():
    cfg = ms_ppt.PPTConfig(r=[40, 30, 20], threshold=1e-4)
    assert ms_ppt.create_model("deit_tiny_patch16_224", ppt_config=cfg).ppt_config == cfg
    assert ms_ppt.create_model("deit_tiny_patch16_224", r=[40, 30, 20], threshold=1e-4).ppt_config == cfg
    with pytest.raises(TypeError, match="either as ppt_config=PPTConfig.*or as keywords \\(r\\), not both"):
        ms_ppt.create_model("deit_tiny_patch16_224", ppt_config=cfg, r=10)


def test_mindcv_checkpoint_path_is_as_strict_as_create_model_after_the_explicit_call(tmp_path):
    """mindcv alone would return random weights for a missing file and load a file lacking a tensor."""
    import mindcv
    import convert
    from convert import CheckpointError
    ms_ppt.mindcv_strict_loading()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        mindcv.create_model("ppt_deit_tiny_patch16_224", checkpoint_path=str(tmp_path / "missing.ckpt"))
    ms.set_seed(0)
    state = {p.name: p.asnumpy() for p in ms_ppt.create_model("deit_tiny_patch16_224").get_parameters()}
    convert.write_state_dict(state, tmp_path / "full.ckpt")
    model = mindcv.create_model("ppt_deit_tiny_patch16_224", checkpoint_path=str(tmp_path / "full.ckpt"))
    np.testing.assert_array_equal(model.head.weight.asnumpy(), state["head.weight"])
    del state["blocks.3.mlp.fc1.bias"]
    convert.write_state_dict(state, tmp_path / "lacking.ckpt")
    with pytest.raises(CheckpointError, match="1 missing keys \\(blocks.3.mlp.fc1.bias\\)"):
        mindcv.create_model("ppt_deit_tiny_patch16_224", checkpoint_path=str(tmp_path / "lacking.ckpt"))


def test_non_finite_weights_are_refused(tmp_path):
    import convert
    from convert import CheckpointError
    state = {p.name: p.asnumpy() for p in ms_ppt.create_model("deit_tiny_patch16_224").get_parameters()}
    state["blocks.5.attn.qkv.weight"][0, 0] = np.nan
    convert.write_state_dict(state, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensor.*blocks.5.attn.qkv.weight"):
        ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=str(tmp_path / "nan.ckpt"))


def test_ppt_settings_are_checked_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(TypeError, match="r must be an int"):
        ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=str(tmp_path / "never-read.pth"), r="50")


@pytest.mark.slow
def test_mindcv_and_mindspore_model_users_can_silence_the_exit_noise(tmp_path):
    """MindSpore's Cell.__del__ fails at interpreter exit in GRAPH_MODE ('del_net_res'); after the explicit call
    (what the command-line tools do), nothing reaches stderr."""
    script = ("import ms_ppt, mindcv, numpy as np, mindspore as ms\n"
              "ms_ppt.silence_mindspore_exit_noise()\n"
              "from mindspore.train import Model\n"
              "ms.set_context(mode=ms.GRAPH_MODE)\n"
              "net = mindcv.create_model('ppt_deit_tiny_patch16_224', r=20)\n"
              "print(Model(net).predict(ms.Tensor(np.zeros((1, 3, 224, 224), np.float32))).shape)\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and "(1, 1000)" in res.stdout, res.stderr
    assert "del_net_res" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr


def randomised_layer_scale(pt):
    """timm initialises LayerScale at 1e-6, which would hide the blocks: give it values that matter."""
    with torch.no_grad():
        for name, p in pt.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.5, 1.5)
    return pt


@pytest.mark.parametrize("name, mode, thresholds", [
    ("deit_tiny_distilled_patch16_224", "pynative", ("mixed",)),  # a mixed batch: both policies
    ("deit_tiny_distilled_patch16_224", "graph", ("mixed",)),
    ("deit3_small_patch16_224", "pynative", ("mixed",)),
    ("deit3_small_patch16_224", "graph", ("mixed",)),
    ("vit_base_patch16_clip_quickgelu_224", "pynative", ("mixed",)),
])
@pytest.mark.slow
def test_new_backbones_give_the_reference_traces_and_logits_in_float64(name, mode, thresholds):
    """Distilled DeiT (two protected prefix tokens), DeiT-III (LayerScale, no class position embedding) and CLIP
    (pre-norm, eps 1e-5, quick GELU, no patch bias): every trace field identical, logits within 1e-9."""
    ms.set_context(mode=MODES[mode])
    x = images(2)
    pt = randomised_layer_scale(pt_model(name, threshold=0.0))
    variances = np.sort(run_pt(pt, x)[1][0].variance)
    for policy in thresholds:
        threshold = {"pool": 1e9, "prune": 0.0, "mixed": float(np.sqrt(variances[0] * variances[-1]))}[policy]
        pt._ppt_info["config"] = dataclasses.replace(pt.ppt_config, threshold=threshold)
        pt_logits, pt_trace = run_pt(pt, x)
        ms_logits, ms_trace, _ = run_with_trace(ms_twin(pt, name, threshold=threshold), x)
        assert compare_traces(pt_trace, ms_trace) == []
        np.testing.assert_allclose(ms_logits, pt_logits, rtol=0, atol=1e-9)
        assert {"pool": {1}, "prune": {0}, "mixed": {0, 1}}[policy] == set(pt_trace[0].policy.tolist())
        if "distilled" in name:  # both prefix tokens survive every PP block on their own
            for t in pt_trace:
                pruned = t.policy == 0
                assert (t.kept[pruned][:, :2] == [0, 1]).all()
                assert not np.isin(t.merge_src, [0, 1]).any() and not (t.merge_dst == 1).any()


@pytest.mark.parametrize("name", ["deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
                                  "deit3_base_patch16_224", "deit3_small_patch16_384", "vit_base_patch16_clip_224"])
@pytest.mark.slow
def test_dense_backbones_give_timms_logits_in_float64(name):
    from pt_reference.factory import build_timm_model
    ms.set_context(mode=ms.PYNATIVE_MODE)
    torch.manual_seed(0)
    timm_model = randomised_layer_scale(build_timm_model(ms_ppt.create_model(name, r=0).arch).double().eval())
    size = timm_model.patch_embed.img_size[0]
    x = np.random.RandomState(0).randn(1, 3, size, size)
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(x)).numpy()
    model = ms_ppt.create_model(name, r=0, dtype="float64")
    params_from_numpy(model, {k: v.numpy() for k, v in timm_model.state_dict().items()})
    np.testing.assert_allclose(model(ms.Tensor(x)).asnumpy(), expected, rtol=0, atol=1e-9)
