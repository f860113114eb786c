"""ms_ppt's compiled CPU kernels: same results as MindSpore's kernels, and a clean fallback."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

import ms_ppt
from conftest import DEIT_TINY
from ms_ppt.factory import run_with_trace
from ms_ppt.kernels import Kernels, compiler, ops as kernel_ops
from ms_ppt.kernels.cells import BiasGELU, FastLayerNorm, QkvHeads, ScaledSoftmax, ScaledSoftmaxLogSize, SwapMiddleAxes
from ms_ppt.layers import GELU, LayerNorm, PatchProjection
from ms_ppt.vision_transformer import TokenReduction
from ppt_common.trace import compare_traces


def need_kernel(name):
    if compiler.build(name) is None:
        pytest.skip("no C++ compiler on this machine: the model uses MindSpore's own ops (tested everywhere else)")


def test_gelu_kernel_matches_exact_gelu_to_float32_accuracy():
    from scipy.special import erfc
    need_kernel("gelu_cpu")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.concatenate([np.linspace(-12, 12, 100001), np.random.RandomState(0).randn(50000) * 3]).astype(np.float32)
    fast = GELU(Kernels(on=True))
    assert fast.fused
    got = fast(ms.Tensor(x)).asnumpy()
    exact = 0.5 * x.astype(np.float64) * erfc(-x.astype(np.float64) / np.sqrt(2))
    mindspore_kernel = nn.GELU(approximate=False)(ms.Tensor(x)).asnumpy()
    assert np.abs(got - exact).max() < 6e-7  # MindSpore's own float32 kernel: 4.5e-7
    assert np.abs(mindspore_kernel - exact).max() < 6e-7


def layer_norm_float64(x, w, b, eps):
    x = x.astype(np.float64)
    x_hat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return x_hat, x_hat * w + b


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_layer_norm_kernel_matches_float64_layer_norm_and_its_gradient(mode):
    """At least as accurate as MindSpore's own float32 LayerNorm, forward and backward (dx, dweight, dbias)."""
    need_kernel("layer_norm_cpu")
    ms.set_context(mode=mode)
    rng = np.random.RandomState(0)
    x = (rng.randn(4, 37, 96) * 3 + 2).astype(np.float32)  # an offset mean: a one-pass variance would lose digits
    w, b, dout = rng.randn(96).astype(np.float32), rng.randn(96).astype(np.float32), rng.randn(4, 37, 96)
    x_hat, expected = layer_norm_float64(x, w, b, 1e-6)
    g = dout * w
    expected_dx = (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True)) / np.sqrt(
        x.astype(np.float64).var(-1, keepdims=True) + 1e-6)
    expected_dw, expected_db = (dout * x_hat).reshape(-1, 96).sum(0), dout.reshape(-1, 96).sum(0)

    class Weighted(nn.Cell):
        def __init__(self, norm):
            super().__init__()
            self.norm = norm

        def construct(self, x, dout):
            return (self.norm(x) * dout).sum()

    errors = {}
    for custom in (True, False):
        norm = LayerNorm(96, 1e-6, Kernels(on=custom))
        assert norm.fused == custom
        norm.weight.set_data(ms.Tensor(w))
        norm.bias.set_data(ms.Tensor(b))
        y = norm(ms.Tensor(x)).asnumpy()
        dx, (dw, db) = ms.grad(Weighted(norm), grad_position=0, weights=[norm.weight, norm.bias])(
            ms.Tensor(x), ms.Tensor(dout.astype(np.float32)))
        errors[custom] = [np.abs(got - want).max() / np.abs(want).max() for got, want in (
            (y, expected), (dx.asnumpy(), expected_dx), (dw.asnumpy(), expected_dw), (db.asnumpy(), expected_db))]
    fast, mindspore_kernel = np.array(errors[True]), np.array(errors[False])
    assert (fast < 2e-6).all() and (mindspore_kernel < 2e-6).all(), errors  # relative to the largest value
    assert fast[0] <= mindspore_kernel[0]  # statistics in double: the forward is the more accurate one


class WeightedLayerNorm(nn.Cell):
    def __init__(self, cell, eps):
        super().__init__()
        self.cell, self.eps = cell, eps

    def construct(self, x, w, b, d):
        return (self.cell(x, w, b, self.eps) * d).sum()


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_layer_norm_backward_kernel_is_the_graph_backward_in_double(mode):
    """The compiled backward (one op) gives LayerNorm's gradients at least as accurately as the graph-op backward
    it replaces, and both agree with float64 to float32 rounding."""
    need_kernel("layer_norm_cpu")
    ms.set_context(mode=mode)
    rng = np.random.RandomState(1)
    x = (rng.randn(3, 50, 64) * 2 - 1).astype(np.float32)
    w, b, dout = rng.randn(64).astype(np.float32), rng.randn(64).astype(np.float32), rng.randn(3, 50, 64)
    x_hat, _ = layer_norm_float64(x, w, b, 1e-6)
    g = dout * w
    expected = [(g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True)) / np.sqrt(
        x.astype(np.float64).var(-1, keepdims=True) + 1e-6), (dout * x_hat).reshape(-1, 64).sum(0),
        dout.reshape(-1, 64).sum(0)]
    eps = ms.Tensor([1e-6], ms.float64)
    errors = {}
    for backward_op in (kernel_ops.layer_norm_backward_op(), None):
        cell = FastLayerNorm(kernel_ops.layer_norm_op(), backward_op)
        assert cell.fused_backward == (backward_op is not None)
        grads = ms.grad(WeightedLayerNorm(cell, eps), grad_position=(0, 1, 2))(
            ms.Tensor(x), ms.Tensor(w), ms.Tensor(b), ms.Tensor(dout.astype(np.float32)))
        errors[backward_op is not None] = np.array([np.abs(got.asnumpy() - want).max() / np.abs(want).max()
                                                    for got, want in zip(grads, expected)])
    assert (errors[True] < 2e-7).all() and (errors[False] < 2e-6).all(), errors
    assert (errors[True] <= errors[False]).all(), errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_swap_kernel_is_a_bit_identical_transpose_and_its_own_gradient(dtype):
    need_kernel("swap_axes_cpu")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.RandomState(0)
    x, dout = rng.randn(2, 5, 7, 3).astype(dtype), rng.randn(2, 7, 5, 3).astype(dtype)
    swap = SwapMiddleAxes(kernel_ops.swap_axes_op())
    assert swap.fused
    np.testing.assert_array_equal(swap(ms.Tensor(x)).asnumpy(), x.transpose(0, 2, 1, 3))
    dx = ms.grad(lambda t: (swap(t) * ms.Tensor(dout)).sum())(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(dx, dout.transpose(0, 2, 1, 3))


def test_patches_from_two_swaps_equal_the_six_axis_transpose():
    need_kernel("swap_axes_cpu")
    ms.set_context(mode=ms.GRAPH_MODE)
    x = ms.Tensor(np.random.RandomState(0).randn(2, 3, 64, 48).astype(np.float32))
    fast, reference = PatchProjection(3, 8, 16, kernels=Kernels(on=True)), PatchProjection(3, 8, 16)
    assert fast.swap.fused and not reference.swap.fused
    np.testing.assert_array_equal(fast.patches(x).asnumpy(), reference.patches(x).asnumpy())


class Weighted(nn.Cell):
    """sum(cell(*inputs) * cotangent), for gradients of cells with one or several outputs."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, a, b, cotangents):
        out = self.cell(a, b) if b is not None else self.cell(a)
        if isinstance(out, tuple):
            return sum((o * c).sum() for o, c in zip(out, cotangents))
        return (out * cotangents[0]).sum()


def grads_of(cell, a, b, cotangents):
    positions = (0, 1) if b is not None else 0
    return ms.grad(Weighted(cell), grad_position=positions)(a, b, cotangents)


def test_qkv_heads_kernel_is_bias_add_swap_and_split_and_its_gradient(rng):
    """The fused attention's head split: bit-identical to BiasAdd, the head swap and three slices, with the
    gradient of those graph ops (GRAPH_MODE, as in training)."""
    need_kernel("swap_axes_cpu")
    ms.set_context(mode=ms.GRAPH_MODE)
    B, N, H, D = 2, 9, 3, 4
    qkv, bias = rng.randn(B, N, 3 * H, D).astype(np.float32), rng.randn(3 * H * D).astype(np.float32)
    cotangents = tuple(ms.Tensor(rng.randn(B, H, N, D).astype(np.float32)) for _ in range(3))

    class GraphOps(nn.Cell):
        def construct(self, qkv, bias):
            heads = (qkv + bias.reshape(3 * H, D)).transpose(0, 2, 1, 3)
            return heads[:, :H], heads[:, H:2 * H], heads[:, 2 * H:]

    fused = QkvHeads(kernel_ops.qkv_heads_op())
    args = (ms.Tensor(qkv), ms.Tensor(bias))
    for got, want in zip(fused(*args), GraphOps()(*args)):
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())
    for got, want in zip(grads_of(fused, *args, cotangents), grads_of(GraphOps(), *args, cotangents)):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-6, atol=1e-6)


def test_bias_gelu_kernel_is_bias_add_then_gelu_and_its_gradient(rng):
    need_kernel("gelu_cpu")
    ms.set_context(mode=ms.GRAPH_MODE)
    x, bias = (rng.randn(37, 48) * 3).astype(np.float32), rng.randn(48).astype(np.float32)
    cotangents = (ms.Tensor(rng.randn(37, 48).astype(np.float32)),)

    class GraphOps(nn.Cell):
        def __init__(self):
            super().__init__()
            self.gelu = GELU(Kernels(on=True))

        def construct(self, x, bias):
            return self.gelu(ops.bias_add(x, bias))

    fused, reference = BiasGELU(kernel_ops.bias_gelu_op(), GELU()), GraphOps()
    args = (ms.Tensor(x), ms.Tensor(bias))
    np.testing.assert_array_equal(fused(*args).asnumpy(), reference(*args).asnumpy())
    for got, want in zip(grads_of(fused, *args, cotangents), grads_of(reference, *args, cotangents)):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-6, atol=1e-5)


def test_bias_gelu_backward_kernel_is_gelus_derivative_to_float32_accuracy(rng):
    """The compiled backward of gelu(x + b): dx and db as the graph-op backward gives them, and as close to the
    float64 derivative (Phi(z) + z phi(z))."""
    need_kernel("gelu_cpu")
    import math
    erf = np.vectorize(math.erf)
    ms.set_context(mode=ms.GRAPH_MODE)
    x, bias = (rng.randn(64, 96) * 3).astype(np.float32), rng.randn(96).astype(np.float32)
    dout = rng.randn(64, 96).astype(np.float32)
    z = (x + bias).astype(np.float64)  # x + b is exact in float64
    exact_dx = dout * (0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))
    exact = (exact_dx, exact_dx.sum(0))
    args, cotangents = (ms.Tensor(x), ms.Tensor(bias)), (ms.Tensor(dout),)
    compiled = BiasGELU(kernel_ops.bias_gelu_op(), GELU(), kernel_ops.bias_gelu_backward_op())
    assert compiled.fused_backward
    errors = {}
    for cell in (BiasGELU(kernel_ops.bias_gelu_op(), GELU()), compiled):
        grads = grads_of(cell, *args, cotangents)
        errors[cell.fused_backward] = [np.abs(got.asnumpy() - want).max() / np.abs(want).max()
                                       for got, want in zip(grads, exact)]
    assert max(errors[True]) < 1e-6 and max(errors[False]) < 1e-6, errors
    assert errors[True][1] <= errors[False][1] * 1.01 + 1e-8, errors  # db summed in double


@pytest.mark.parametrize("with_log_size", [False, True], ids=["plain", "proportional"])
def test_scaled_softmax_kernel_matches_float64_softmax_and_the_graph_gradient(rng, with_log_size):
    """softmax(scores * scale [+ log size]) with the logits rounded as the graph ops round them: closer to the
    float64 softmax than MindSpore's own CPU Softmax (PyTorch's accuracy class); the gradient, by graph ops or by the
    compiled backward, is the graph ops' and reaches the scores (times scale) and the log sizes."""
    need_kernel("softmax_cpu")
    ms.set_context(mode=ms.GRAPH_MODE)
    B, H, M, N, scale = 2, 3, 5, 37, 8 ** -0.5
    scores = (rng.randn(B, H, M, N) * 6).astype(np.float32)
    log_size = np.log(rng.randint(1, 5, (B, N))).astype(np.float32)
    cotangents = (ms.Tensor(rng.randn(B, H, M, N).astype(np.float32)),)
    logits = scores * np.float32(scale)
    if with_log_size:
        logits = logits + log_size[:, None, None, :]
    exact = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    exact /= exact.sum(-1, keepdims=True)

    class GraphOps(nn.Cell):
        def construct(self, scores, log_size=None):
            logits = scores * scale
            if log_size is not None:
                logits = logits + ops.broadcast_to(log_size.reshape(B, 1, 1, N), logits.shape)
            return ops.softmax(logits, -1)

    op = kernel_ops.scaled_softmax_op(with_log_size)
    fused = ScaledSoftmaxLogSize(op, scale) if with_log_size else ScaledSoftmax(op, scale)
    args = (ms.Tensor(scores), ms.Tensor(log_size) if with_log_size else None)
    inputs = args[:1 + with_log_size]
    error = {name: (np.abs(cell(*inputs).asnumpy() - exact) / exact).max()
             for name, cell in (("kernel", fused), ("mindspore", GraphOps()))}
    assert error["kernel"] < 1.5e-6 and error["kernel"] <= error["mindspore"] < 1e-5, error
    want_grads = grads_of(GraphOps(), *args, cotangents)
    want_grads = want_grads if with_log_size else (want_grads,)
    g = cotangents[0].asnumpy().astype(np.float64)
    dlogits = exact * (g - (g * exact).sum(-1, keepdims=True))  # float64
    exact_grads = (dlogits * scale, dlogits.sum((1, 2)))
    compiled = kernel_ops.scaled_softmax_backward_op(with_log_size)
    backward_error = {}
    for cell in (fused, type(fused)(op, scale, compiled)):
        got_grads = grads_of(cell, *args, cotangents)
        got_grads = got_grads if with_log_size else (got_grads,)
        for got, want in zip(got_grads, want_grads):
            np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-6)
            assert np.abs(want.asnumpy()).max() > 1e-3
        backward_error[cell.fused_backward] = max(np.abs(got.asnumpy() - want).max() / np.abs(want).max()
                                                  for got, want in zip(got_grads, exact_grads))
    # the compiled backward (dots and sums in double) is no less accurate than the graph ops' backward
    assert backward_error[True] <= backward_error[False] * 1.01 + 1e-7 and backward_error[True] < 2e-6, \
        backward_error


def test_fused_attention_and_mlp_are_dropped_for_other_dtypes():
    """float64 and float16 models keep the graph ops: the fused kernels are float32 only."""
    need_kernel("softmax_cpu")
    model = ms_ppt.create_model("deit_tiny_patch16_224", dtype="float64")
    assert not model.blocks[0].attn.fused and not model.blocks[0].mlp.fused
    assert ms_ppt.create_model("deit_tiny_patch16_224").blocks[0].attn.fused


def test_kernels_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("MS_PPT_CUSTOM_KERNELS", "0")
    compiler.build.cache_clear()
    try:
        assert compiler.build("gelu_cpu") is None
        assert not GELU(Kernels(on=True)).fused
    finally:
        compiler.build.cache_clear()


def test_missing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("MS_PPT_CACHE", str(tmp_path))
    compiler.build.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
            assert compiler.build("gelu_cpu") is None
    finally:
        compiler.build.cache_clear()


def test_kernel_builds_from_source_into_an_empty_cache(monkeypatch, tmp_path):
    import shutil
    if shutil.which("g++") is None:
        pytest.skip("no g++ on this machine: the fallback is tested above")
    monkeypatch.setenv("MS_PPT_CACHE", str(tmp_path))
    compiler.build.cache_clear()
    try:
        path = compiler.build("gelu_cpu")
        assert path is not None and path.startswith(str(tmp_path)) and path.endswith(".so")
        assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]  # no temporary left behind
    finally:
        compiler.build.cache_clear()


def reduction_inputs(rng, batch=6, n=27, c=8, heads=3, dh=5):
    """Random attention-block outputs with the traps in them: tokens with equal scores (same CLS attention and
    same v), A tokens with equal best similarity and an A token with two equally good B partners (duplicated k
    rows), and token sizes above 1."""
    x = rng.randn(batch, n, c)
    logits = rng.randn(batch, heads, n, n)
    logits[:, :, 0, [5, 9, 12]] = logits[:, :, 0, 12:13]
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    v = rng.randn(batch, heads, n, dh)
    v[:, :, [5, 9]] = v[:, :, 12:13]  # tokens 5, 9, 12: a three-way score tie
    k = rng.randn(batch, heads, n, dh)
    k[:, :, 6] = k[:, :, 4]  # A tokens 4 and 6: equal node_max, a tie in the merge order
    k[:, :, 7] = k[:, :, 3]  # B tokens 3 and 7: two equally good partners for A token 2
    k[:, :, 2] = k[:, :, 3]
    size = rng.randint(1, 5, size=(batch, n, 1))
    return [ms.Tensor(a.astype(np.float32)) for a in (x, attn, v, k, size)]


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
@pytest.mark.slow
def test_fused_reduction_takes_the_graph_reductions_decisions(mode, rng):
    """The compiled reduction against the graph ops in float32: same policies, same dest maps, same sizes, and
    the same scores, variances, similarities and merged tokens up to float32 rounding, in a batch that mixes
    both policies."""
    need_kernel("ppt_reduce_cpu")
    ms.set_context(mode=mode)
    inputs = reduction_inputs(rng)
    fused, graph = TokenReduction(8, 1.0, kernels=Kernels(on=True)), TokenReduction(8, 1.0)
    assert fused.fused and not graph.fused
    variances = graph(*inputs, None)[3][0][1].asnumpy()
    threshold = float(np.median(variances))  # half the images pool, half prune
    fused, graph = TokenReduction(8, threshold, kernels=Kernels(on=True)), TokenReduction(8, threshold)
    x_fused, size_fused, _, (got, got_sizes) = fused(*inputs, None)
    x_graph, _, _, (want, want_sizes) = graph(*inputs, None)
    pooling, variance, scores, node_max, dest = [t.asnumpy() for t in got]
    size_out = got_sizes.asnumpy()
    want = [t.asnumpy() for t in want] + [want_sizes.asnumpy()]
    assert set(pooling.tolist()) == {0, 1}
    np.testing.assert_array_equal(pooling, want[0].astype(np.int32))
    np.testing.assert_allclose(variance, want[1], rtol=1e-5)
    np.testing.assert_allclose(scores, want[2], rtol=1e-5)
    assert (scores[:, 5] == scores[:, 12]).all() and (scores[:, 9] == scores[:, 12]).all()
    np.testing.assert_array_equal(dest, want[4])
    np.testing.assert_array_equal(size_out, want[5])
    np.testing.assert_array_equal(size_fused.asnumpy(), size_out)
    pooled = pooling == 1
    np.testing.assert_allclose(node_max[pooled], want[3][pooled], rtol=1e-6)
    assert np.isnan(node_max[~pooled]).all()
    x_fused, x_graph = x_fused.asnumpy(), x_graph.asnumpy()
    np.testing.assert_array_equal(x_fused[~pooled], x_graph[~pooled])  # pruning copies tokens exactly
    np.testing.assert_allclose(x_fused[pooled], x_graph[pooled], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
@pytest.mark.slow
def test_fused_reduction_backward_is_the_graph_reductions(mode, rng):
    """Training through the compiled reduction: the gradient with respect to x is apply_reduction's (each kept
    token passes its gradient through, each merged token shares it by size), in a batch mixing both policies;
    the inputs that only decide (attention, v, k, sizes) get none."""
    need_kernel("ppt_reduce_cpu")
    ms.set_context(mode=mode)
    inputs = reduction_inputs(rng)
    cotangent = ms.Tensor(rng.randn(6, 27 - 8, 8).astype(np.float32))
    threshold = float(np.median(TokenReduction(8, 1.0)(*inputs, None)[3][0][1].asnumpy()))
    grads = {}
    for fused in (True, False):
        cell = TokenReduction(8, threshold, kernels=Kernels(on=fused))
        assert cell.fused == fused

        def loss(x, attn, v, k, size):
            return (cell(x, attn, v, k, size, None)[0] * cotangent).sum()
        grads[fused] = [g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1, 2, 3, 4))(*inputs)]
    policy = TokenReduction(8, threshold)(*inputs, None)[3][0][0].asnumpy()
    assert set(policy.tolist()) == {False, True}
    np.testing.assert_allclose(grads[True][0], grads[False][0], rtol=1e-6, atol=1e-7)
    assert np.abs(grads[False][0][~policy]).max() > 0 and np.abs(grads[False][0][policy]).max() > 0
    for got, want in zip(grads[True][1:], grads[False][1:]):
        assert not got.any() and not want.any()


def test_fused_reduction_keeps_tied_tokens_in_position_order(rng):
    need_kernel("ppt_reduce_cpu")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    n, heads, dh = 6, 2, 3
    attn = np.zeros((1, heads, n, n), np.float32)
    attn[0, :, 0] = [0.0, 0.1, 0.3, 0.1, 0.3, 0.2]
    v = np.ones((1, heads, n, dh), np.float32)  # equal ||v||: scores follow the CLS attention, ties included
    x = np.arange(n * 2, dtype=np.float32).reshape(1, n, 2)
    fused = TokenReduction(2, 0.0, kernels=Kernels(on=True))  # threshold 0: prune
    out, _, _, ((pooling, _, scores, _, dest), _) = fused(
        ms.Tensor(x), ms.Tensor(attn), ms.Tensor(v), ms.Tensor(v), ms.Tensor(np.ones((1, n, 1), np.float32)), None)
    assert pooling.asnumpy().tolist() == [0]
    np.testing.assert_allclose(scores.asnumpy()[0], [2.0, 0.1, 0.3, 0.1, 0.3, 0.2], rtol=1e-6)
    assert dest.asnumpy()[0].tolist() == [0, -1, 1, -1, 2, 3]  # kept: CLS, 2, 4 (tie, earlier first), 5
    np.testing.assert_array_equal(out.asnumpy()[0], x[0, [0, 2, 4, 5]])


@pytest.mark.slow
def test_float32_model_with_fused_reduction_equals_graph_reduction(real_images):
    """Real DeiT-Tiny, paper settings, mixed batch: the fused kernel and the graph ops give identical traces and
    source maps, and logits within float32 noise."""
    need_kernel("ppt_reduce_cpu")
    ms.set_context(mode=ms.GRAPH_MODE)
    x = real_images[0][:24]
    runs = []
    for custom in (True, False):
        model = ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=DEIT_TINY, trace=True, trace_source=True,
                                    custom_kernels=custom)
        runs.append(run_with_trace(model, x))
    (logits_a, traces_a, source_a), (logits_b, traces_b, source_b) = runs
    assert {0, 1} <= set(np.concatenate([t.policy for t in traces_a]).tolist())
    assert compare_traces(traces_a, traces_b, rtol=1e-5, atol=1e-7) == []
    np.testing.assert_array_equal(source_a, source_b)
    np.testing.assert_allclose(logits_a, logits_b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode, r_values", [(ms.PYNATIVE_MODE, (50, 20, 50))], ids=["pynative"])
@pytest.mark.slow
def test_models_with_different_r_coexist_in_one_process(mode, r_values):
    """Each model keeps its own reduction, whatever was built and run before it (PyNative once reused the first
    model's fused op for every later r: same logits for r=50, 30 and 10)."""
    need_kernel("ppt_reduce_cpu")
    ms.set_context(mode=mode)
    x = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
    models = {}
    for r in r_values:
        ms.set_seed(0)
        fused = ms_ppt.create_model("deit_tiny_patch16_224", r=r, threshold=1e-4, trace=True)
        reference = ms_ppt.create_model("deit_tiny_patch16_224", r=r, threshold=1e-4, trace=True,
                                        custom_kernels=False)
        reference.set_train(False)
        ms_ppt.vision_transformer.params_from_numpy(reference, {p.name: p.asnumpy() for p in fused.get_parameters()})
        logits, traces, _ = run_with_trace(fused, x)
        expected, expected_traces, _ = run_with_trace(reference, x)
        assert [t.r for t in traces] == [r, r, min(r, (197 - 2 * r - 1) // 2)]
        assert compare_traces(traces, expected_traces, rtol=1e-5, atol=1e-6) == []
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
        models.setdefault(r, logits)
    assert not np.allclose(models[50], models[20])
