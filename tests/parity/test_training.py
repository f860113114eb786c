"""Training through PPT: gradients equal to the reference's, and timm's drop rates (identity in eval)."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest
import torch

from ms_ppt.factory import run_with_trace
from ms_ppt.vision_transformer import VisionTransformer, params_from_numpy
from ppt_common.config import ArchConfig, PPTConfig
from pt_reference.factory import build_timm_model
from pt_reference.vision_transformer import apply_ppt

SMALL = ArchConfig(img_size=64, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=10)
FLAGS = {"plain": {}, "distilled_layer_scale": dict(num_prefix_tokens=2, init_values=0.5)}


def twin_models(arch, threshold, seed=0, train=False, method="ppt"):
    """A float64 pt_reference model and the MindSpore model with its weights, PPT at blocks 1 and 2."""
    torch.manual_seed(seed)
    cfg = PPTConfig(r=10, pp_loc_list=(1, 2), threshold=threshold, method=method)
    pt = apply_ppt(build_timm_model(arch).double().train(train), cfg, trace=True)
    ms_model = VisionTransformer(arch, cfg, trace=True).to_dtype(ms.float64)
    params_from_numpy(ms_model, {k: v.numpy() for k, v in pt.state_dict().items()})
    ms_model.set_train(train)
    return pt, ms_model


def mixed_threshold(arch, x):
    pt, _ = twin_models(arch, 0.0)
    with torch.no_grad():
        pt(torch.from_numpy(x))
    v = np.sort(pt.ppt_trace[0].variance)
    return float(np.sqrt(v[0] * v[-1]))


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.slow
def test_parameter_gradients_match_the_reference_in_float64(flags, mode, rng):
    """Back-propagation through decide-then-apply: with the same weights, inputs and a batch that mixes pooling
    and pruning, every parameter's gradient equals pt_reference's (autograd through the authors' gather and
    scatter) to float64 rounding. Both models are in training mode, with no random element (drop rates 0)."""
    ms.set_context(mode=mode)
    arch = dataclasses.replace(SMALL, **FLAGS[flags])
    x = rng.randn(4, 3, 64, 64)
    cotangent = rng.randn(4, arch.num_classes)
    pt, ms_model = twin_models(arch, mixed_threshold(arch, x), train=True)

    (pt(torch.from_numpy(x)) * torch.from_numpy(cotangent)).sum().backward()
    assert set(pt.ppt_trace[0].policy.tolist()) == {0, 1}
    expected = {name: p.grad.numpy() for name, p in pt.named_parameters()}

    params = ms_model.trainable_params()
    c = ms.Tensor(cotangent)

    def loss(images):
        return (ms_model(images)[0] * c).sum()
    grads = ms.grad(loss, grad_position=None, weights=params)(ms.Tensor(x))
    assert_gradients_equal(params, grads, expected)


def assert_gradients_equal(params, grads, expected):
    assert sorted(p.name for p in params) == sorted(expected)
    for p, g in zip(params, grads):
        want = expected[p.name]
        np.testing.assert_allclose(g.asnumpy(), want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()),
                                   err_msg=p.name)


@pytest.mark.parametrize("method", ["prune_fuse", "decouple_merge"])
@pytest.mark.slow
def test_single_rule_methods_back_propagate_like_the_reference_in_graph_mode(method, rng):
    """The fused token passes s_j / sum(s) of its gradient to each dropped token, a merged token size_j / sum(size)
    to each member: the same gradients as autograd through pt_reference's gather and scatter_add."""
    ms.set_context(mode=ms.GRAPH_MODE)
    x, cotangent = rng.randn(2, 3, 64, 64), rng.randn(2, SMALL.num_classes)
    pt, ms_model = twin_models(SMALL, 0.0, train=True, method=method)
    (pt(torch.from_numpy(x)) * torch.from_numpy(cotangent)).sum().backward()
    params, c = ms_model.trainable_params(), ms.Tensor(cotangent)

    def loss(images):
        return (ms_model(images)[0] * c).sum()
    grads = ms.grad(loss, grad_position=None, weights=params)(ms.Tensor(x))
    assert_gradients_equal(params, grads, {name: p.grad.numpy() for name, p in pt.named_parameters()})


def test_drop_path_rates_follow_timms_linear_rule():
    arch = dataclasses.replace(SMALL, drop_path_rate=0.3)
    assert arch.drop_path_rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    timm_model = build_timm_model(arch)
    assert [b.drop_path1.drop_prob for b in timm_model.blocks[1:]] == pytest.approx(arch.drop_path_rates[1:])
    ms_model = VisionTransformer(arch)
    assert [b.drop_path1.keep for b in ms_model.blocks] == pytest.approx([1 - p for p in arch.drop_path_rates])


@pytest.mark.parametrize("flag", ["drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"])
def test_drop_rates_are_identity_in_eval_and_random_in_training(flag, rng):
    """Each rate changes nothing in eval (same logits and traces as the model without it) and draws a new mask
    at every training step."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = rng.randn(2, 3, 64, 64).astype(np.float32)
    cfg = PPTConfig(r=10, pp_loc_list=(1, 2))
    plain = VisionTransformer(SMALL, cfg, trace=True)
    dropping = VisionTransformer(dataclasses.replace(SMALL, **{flag: 0.5}), cfg, trace=True)
    params_from_numpy(dropping, {p.name: p.asnumpy() for p in plain.get_parameters()})
    plain.set_train(False)
    dropping.set_train(False)
    want_logits, want_traces, _ = run_with_trace(plain, x)
    got_logits, got_traces, _ = run_with_trace(dropping, x)
    np.testing.assert_array_equal(got_logits, want_logits)
    assert [t.kept.tolist() for t in got_traces] == [t.kept.tolist() for t in want_traces]
    dropping.set_train(True)
    first, second = (dropping(ms.Tensor(x))[0].asnumpy() for _ in range(2))
    assert not np.allclose(first, want_logits) and not np.allclose(first, second)


@pytest.mark.parametrize("flag, bad", [("drop_rate", 1.0), ("drop_path_rate", -0.1), ("attn_drop_rate", "0.1")])
def test_drop_rates_outside_zero_to_one_are_refused(flag, bad):
    with pytest.raises(ValueError, match=flag):
        dataclasses.replace(SMALL, **{flag: bad})


def adamw_twins(arch, x, seed=0):
    pt, ms_model = twin_models(arch, mixed_threshold(arch, x), seed=seed, train=True)
    from ms_ppt import training as mst
    from pt_reference import training as ptt
    pt_step = ptt.TrainStep(pt, ptt.build_loss(0.1), ptt.build_optimizer(pt, weight_decay=0.05))
    optimizer = mst.build_optimizer(ms_model, weight_decay=0.05)
    ms_step = mst.TrainStep(mst.LossCell(ms_model, mst.build_loss(0.1)), optimizer, return_grads=True)
    return pt, ms_model, pt_step, ms_step, optimizer


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE])  # PyNative: scripts/train_parity.py's test, real DeiT-Tiny
@pytest.mark.slow
def test_adamw_steps_keep_weights_and_traces_equal_to_the_reference_in_float64(mode, rng):
    """DeiT's training step in both frameworks (smoothed cross entropy on soft targets, AdamW with timm's decay
    groups, a changing lr): after each of 5 steps every weight agrees to float64 rounding, and the forward of
    every step kept the same tokens."""
    ms.set_context(mode=mode)
    arch = dataclasses.replace(SMALL, num_prefix_tokens=2, init_values=0.5)
    x = rng.randn(4, 3, 64, 64)
    targets = rng.dirichlet(np.ones(arch.num_classes), 4)
    pt, ms_model, pt_step, ms_step, optimizer = adamw_twins(arch, x)
    for step, lr in enumerate([1e-3, 2e-3, 3e-3, 2e-3, 1e-3]):
        want_logits = pt(torch.from_numpy(x)).detach().numpy()
        want_traces = pt.ppt_trace
        got_logits, got_traces, _ = run_with_trace(ms_model, x)
        assert [t.kept.tolist() for t in got_traces] == [t.kept.tolist() for t in want_traces], step
        if step == 0:
            assert set(got_traces[0].policy.tolist()) == {0, 1}  # the batch mixes pooling and pruning
        np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=1e-9)
        want_loss, want_grads = pt_step(torch.from_numpy(x), torch.from_numpy(targets), lr)
        loss, finite, grads = ms_step(ms.Tensor(x), ms.Tensor(targets), None, *optimizer.scalars(lr))
        assert bool(finite.asnumpy())
        assert abs(float(loss.asnumpy()) - want_loss) <= 1e-12 * max(1.0, abs(want_loss))
        for p, g in zip(optimizer.params, grads):
            want = want_grads[p.name].numpy()
            np.testing.assert_allclose(g.asnumpy(), want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()),
                                       err_msg=f"{p.name} step {step}")
        state = pt.state_dict()
        for p in optimizer.params:
            want = state[p.name].numpy()
            np.testing.assert_allclose(p.asnumpy(), want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()),
                                       err_msg=f"{p.name} after step {step}")


@pytest.mark.slow
def test_mixed_precision_o2_trains_like_float32_in_graph_mode(rng):
    """auto_mixed_precision O2 (float16 matmuls, float32 master weights; LayerNorm, softmax and PPT's scores in
    float32): over 3 AdamW steps the losses follow float32's to float16 accuracy, so the optimizer's updates
    reach the float16 computation."""
    ms.set_context(mode=ms.GRAPH_MODE)
    from ms_ppt import training as mst
    arch = dataclasses.replace(SMALL, depth=2)
    x = ms.Tensor(rng.randn(4, 3, 64, 64).astype(np.float32))
    targets = ms.Tensor(np.eye(arch.num_classes, dtype=np.float32)[[1, 2, 3, 4]])
    losses = {}
    for level in ("O0", "O2"):
        ms.set_seed(0)
        model = VisionTransformer(arch, PPTConfig(r=10, pp_loc_list=(1,)))
        network = model if level == "O0" else ms.amp.auto_mixed_precision(model.drop_fast_kernels(), level)
        model.set_train(True)
        optimizer = mst.build_optimizer(model)
        step = mst.TrainStep(mst.LossCell(network, mst.build_loss(0.1)), optimizer,
                             loss_scale=1.0 if level == "O0" else 1024.0)
        losses[level] = [float(step(x, targets, None, *optimizer.scalars(1e-3))[0].asnumpy()) for _ in range(3)]
    assert losses["O0"][2] < losses["O0"][0] - 0.3  # the steps do move the loss
    np.testing.assert_allclose(losses["O2"], losses["O0"], rtol=2e-3)
