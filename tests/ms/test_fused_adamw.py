"""The compiled AdamW update (kernels/adamw_cpu.cc): bit for bit the graph ops' update, and the same finite check."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from ms_ppt import training
from ms_ppt.kernels import compiler

# (name, shape): decayed by ppt_common.training.decays when 2-D or more and not a bias; 1001 elements leaves a
# remainder after the vector loop
SHAPES = (("blocks.0.mlp.fc1.weight", (37, 19)), ("blocks.0.mlp.fc1.bias", (19,)), ("pos_embed", (1, 5, 8)),
          ("head.weight", (7, 11, 13)), ("norm.weight", (1001,)))


def need_kernel():
    if compiler.build("adamw_cpu") is None:
        pytest.skip("no C++ compiler on this machine: the optimizer runs the graph ops (tested everywhere else)")


class Update(nn.Cell):
    def __init__(self, optimizer):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer

    def construct(self, grads, decay_factor, step_size, bias_correction2_sqrt, checked):
        return self.optimizer(grads, decay_factor, step_size, bias_correction2_sqrt, checked)


def optimizers(dtype, rng):
    start = [rng.randn(*shape).astype(dtype) for _, shape in SHAPES]
    pair = []
    for fused in (True, False):
        params = [ms.Parameter(ms.Tensor(value), name=name) for (name, _), value in zip(SHAPES, start)]
        pair.append(training.AdamW(params, weight_decay=0.05, fused=fused))
    assert pair[0].fused and not pair[1].fused
    assert [p.name for p in pair[0].exp_avg] == [p.name for p in pair[1].exp_avg]  # the checkpoint's layout
    return pair


def state(optimizer):
    # copies: asnumpy() of a Parameter can share its memory, which the next step overwrites
    return [p.asnumpy().copy() for group in (optimizer.params, optimizer.exp_avg, optimizer.exp_avg_sq) for p in group]


def random_grads(dtype, rng):
    # magnitudes from 1e-30 to 1e4 within each tensor: both moments' ranges and eps's share of the denominator vary
    return [(rng.randn(*shape) * 10.0 ** rng.uniform(-30, 4, shape)).astype(dtype) for _, shape in SHAPES]


def tensors(arrays):
    """Gradients as a training step has them. A plain tuple argument is a constant to graph mode, whose constant
    folding then rounds the update's g * g * beta2_c as g * (g * beta2_c): not what a training step computes."""
    return ms.mutable(tuple(ms.Tensor(a) for a in arrays))


def run_steps(optimizer, mode, steps):
    ms.set_context(mode=mode)
    update, states = Update(optimizer), []
    for lr, grads in steps:
        grads = tensors(grads)
        finite = update(grads, *optimizer.scalars(lr), grads).asnumpy()
        assert finite.dtype == np.bool_ and finite
        states.append(state(optimizer))
    return states


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adamw_equals_the_graph_update_bit_for_bit(dtype, mode):
    """Over five steps, decayed parameters and not; the reference is the graph ops in graph mode, training's mode.
    In PyNative the kernel runs in the Python thread, which keeps denormals where MindSpore's threads may flush
    them to zero (adamw_cpu.cc): there the results differ by denormals, and where those were summed into the
    smallest normal numbers, by their last bit."""
    need_kernel()
    rng = np.random.RandomState(0)
    fused, graph = optimizers(dtype, rng)
    start = state(fused)
    steps = [(lr, random_grads(dtype, rng)) for lr in (1e-3, 5e-4, 3e-2, 1e-5, 1e-3)]
    expected = run_steps(graph, ms.GRAPH_MODE, steps)
    for got_step, expected_step in zip(run_steps(fused, mode, steps), expected):
        for got, want in zip(got_step, expected_step):
            assert got.dtype == dtype
            if mode == ms.GRAPH_MODE:
                assert np.array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=10 * np.finfo(dtype).tiny)
    assert all(not np.array_equal(a, b) for a, b in zip(state(fused), start))  # every tensor was updated


# each value, each position (first, middle, last parameter) and both clip settings at least once
@pytest.mark.parametrize("bad, where, clipped", [(np.inf, 0, False), (-np.inf, 4, True), (np.nan, 1, True),
                                                 (np.nan, 4, False)])
def test_a_non_finite_gradient_is_reported_and_applied_as_by_the_graph_ops(bad, where, clipped):
    """Any one non-finite element, in any parameter, makes the step not finite; the update is applied all the same
    (as torch applies it; the trainer stops on the report). With clipping the check is of the unclipped gradients,
    which the step passes as `checked`: an unclipped non-finite gradient counts even where the clipped is finite,
    and a non-finite clipped one does not where the unclipped is finite."""
    need_kernel()
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.RandomState(1)
    fused, graph = optimizers(np.float32, rng)
    steps = (Update(fused), Update(graph))
    grads = random_grads(np.float32, rng)
    checked = [g.copy() for g in grads] if clipped else grads
    checked[where].flat[rng.randint(checked[where].size)] = bad
    if clipped:
        grads[(where + 1) % len(grads)].flat[0] = np.nan  # the update's gradient: not what is checked
    grads = tensors(grads)
    checked = tensors(checked) if clipped else grads
    for step, optimizer in zip(steps, (fused, graph)):
        assert not step(grads, *optimizer.scalars(1e-3), checked).asnumpy()
    for got, expected in zip(state(fused), state(graph)):
        assert np.array_equal(got, expected, equal_nan=True)
    # and a finite step after it is reported finite again
    finite = tensors(random_grads(np.float32, rng))
    for step, optimizer in zip(steps, (fused, graph)):
        assert step(finite, *optimizer.scalars(1e-3), finite).asnumpy()
    if clipped:  # a non-finite update gradient with finite unclipped ones is reported finite, as before
        grads = random_grads(np.float32, rng)
        checked = tensors(grads)
        grads[where].flat[0] = bad
        grads = tensors(grads)
        for step, optimizer in zip(steps, (fused, graph)):
            assert step(grads, *optimizer.scalars(1e-3), checked).asnumpy()
        for got, expected in zip(state(fused), state(graph)):
            assert np.array_equal(got, expected, equal_nan=True)


def test_without_the_kernel_the_optimizer_runs_the_graph_ops(monkeypatch):
    with monkeypatch.context() as env:
        env.setenv("MS_PPT_CUSTOM_KERNELS", "0")
        compiler.build.cache_clear()
        params = [ms.Parameter(ms.Tensor(np.ones(3, np.float32)), name="w")]
        assert not training.AdamW(params, fused=True).fused
    compiler.build.cache_clear()
    need_kernel()
    assert training.AdamW(params, fused=True).fused
    assert not training.AdamW(params, fused=False).fused
    params = [ms.Parameter(ms.Tensor(np.ones(3, np.float16)), name="w")]
    assert not training.AdamW(params).fused  # float16: the kernel takes float32 and float64


@pytest.mark.slow  # 7 s each: a whole DeiT step compiled twice; the quick tier is at its limit
@pytest.mark.parametrize("clip_grad", [None, 0.05])
def test_a_training_step_with_the_fused_update_reaches_the_graph_ops_bits(clip_grad):
    """TrainStep (graph mode, float32, the model's kernels on) with either update: the same losses, finite flags,
    weights and Adam moments, bit for bit, over three steps, the third on a batch whose gradients are NaN (an inf
    pixel): reported not finite by both, and applied by both."""
    need_kernel()
    from ms_ppt.vision_transformer import VisionTransformer
    from ppt_common.config import ArchConfig, PPTConfig
    ms.set_context(mode=ms.GRAPH_MODE)
    arch = ArchConfig(img_size=32, embed_dim=24, depth=2, num_heads=2, num_classes=3)
    rng = np.random.RandomState(0)
    x = rng.randn(4, 3, 32, 32).astype(np.float32)
    bad_x = x.copy()
    bad_x[1, 0, 3, 3] = np.inf
    targets = ms.Tensor(np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
    start = None

    def run(fused):
        nonlocal start
        model = VisionTransformer(arch, PPTConfig(r=0, pp_loc_list=()))
        if start is None:
            start = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
        for p in model.get_parameters():
            p.set_data(ms.Tensor(start[p.name]))
        model.set_train(True)
        optimizer = training.AdamW(model.trainable_params(), fused=fused)
        assert optimizer.fused == fused
        step = training.TrainStep(training.LossCell(model, training.build_loss(0.1)), optimizer, clip_grad=clip_grad)
        outs = [step(ms.Tensor(images), targets, None, *optimizer.scalars(1e-2))
                for images in (x, x, bad_x)]
        results = [(loss.asnumpy(), bool(finite.asnumpy())) for loss, finite in outs]
        return results, [e["data"].asnumpy().copy() for e in training.training_state(model, optimizer, None)]

    (fused_results, fused_state), (graph_results, graph_state) = run(True), run(False)
    assert [finite for _, finite in fused_results] == [finite for _, finite in graph_results] == [True, True, False]
    np.testing.assert_array_equal(np.array([loss for loss, _ in fused_results]),
                                  np.array([loss for loss, _ in graph_results]))
    for got, want in zip(fused_state, graph_state):
        assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(fused_state[0]).any()  # the non-finite step was applied
