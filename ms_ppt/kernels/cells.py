"""The cells around ms_ppt's compiled kernels (kernels.ops): each runs its op forward and gives it a backward (the
ops have none of their own): LayerNorm, the scaled softmax and bias-GELU through compiled backward ops where given
(float32 CPU training: their graph-op backwards cost ~20 % of a step), the others, and those without one, as
graph ops. The layers (ms_ppt.layers, ms_ppt.vision_transformer) hold them
where their model's Kernels switch (ms_ppt.kernels.Kernels) gives them an op; tests and tools build them alone.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from ms_ppt.kernels.ops import swap_axes_op


class FastLayerNorm(nn.Cell):
    """The compiled float32 LayerNorm (kernels/layer_norm_cpu.cc) with LayerNorm's backward: the compiled backward
    (kernels.ops.layer_norm_backward_op) where given, else as graph ops."""

    def __init__(self, op, backward_op=None):
        super().__init__()
        self.op = op
        self.backward_op = backward_op
        self.fused_backward = backward_op is not None

    def construct(self, x, weight, bias, eps):
        return self.op(x, weight, bias, eps)

    def bprop(self, x, weight, bias, eps, out, dout):
        if self.fused_backward:
            dx, dweight, dbias = self.backward_op(x, weight, dout, eps)
            return dx, dweight, dbias, ops.zeros_like(eps)
        n = x.shape[-1]
        centred = x - ops.broadcast_to(ops.mean(x, -1, True), x.shape)
        rstd = ops.broadcast_to(ops.rsqrt(ops.mean(centred * centred, -1, True) + eps.astype(x.dtype)), x.shape)
        x_hat = centred * rstd
        g = dout * ops.broadcast_to(weight, x.shape)
        mean_g = ops.broadcast_to(ops.mean(g, -1, True), x.shape)
        mean_g_x_hat = ops.broadcast_to(ops.mean(g * x_hat, -1, True), x.shape)
        dx = rstd * (g - mean_g - x_hat * mean_g_x_hat)
        rows = dout.reshape(-1, n)
        return (dx, (rows * x_hat.reshape(-1, n)).sum(0), rows.sum(0), ops.zeros_like(eps))


class SwapMiddleAxes(nn.Cell):
    """[A, B, C, D] -> [A, C, B, D]: the attention's head split and merge, the patch extraction. With its op (the
    compiled kernels on CPU) a compiled copy (kernels/swap_axes_cpu.cc, bit-identical): MindSpore's CPU Transpose
    holds two output-sized buffers per call site for the graph's lifetime, which made evaluation memory grow by
    ~40 MB per image of the batch (DeiT-S)."""

    def __init__(self, op=None):
        """op: kernels.ops.swap_axes_op() (Kernels.swap_axes()), or None for MindSpore's Transpose."""
        super().__init__()
        self.op = op
        self.fused = op is not None

    def construct(self, x):
        if self.fused:
            return self.op(x)
        return x.transpose(0, 2, 1, 3)

    def bprop(self, x, out, dout):
        """The swap is its own inverse (the compiled kernel has no backward of its own)."""
        return (self.construct(dout),)


class QkvHeads(nn.Cell):
    """The compiled qkv head split (kernels.ops.qkv_heads_op: bias add, head swap, q/k/v split in one copy) with its
    backward as graph ops: the three gradients joined and swapped back, the bias's summed."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.swap = SwapMiddleAxes(swap_axes_op())

    def construct(self, qkv, bias):
        return self.op(qkv, bias)

    def bprop(self, qkv, bias, out, dout):
        dqkv = self.swap(ops.concat(dout, 1))
        return dqkv, dqkv.reshape(-1, bias.shape[0]).sum(0)


def softmax_grad(probs, dout):
    """The softmax's backward over the last axis: probs * (dout - sum(dout * probs))."""
    dot = ops.broadcast_to((dout * probs).sum(-1, keepdims=True), probs.shape)
    return probs * (dout - dot)


class ScaledSoftmax(nn.Cell):
    """softmax(scores * scale) over the last axis, by the compiled kernel (kernels.ops.scaled_softmax_op)."""

    def __init__(self, op, scale: float, backward_op=None):
        """backward_op: kernels.ops.scaled_softmax_backward_op (the compiled backward), or None for graph ops."""
        super().__init__()
        self.op = op
        self.scale = scale
        self.scale_tensor = Tensor([scale], ms.float32)
        self.backward_op = backward_op
        self.fused_backward = backward_op is not None

    def construct(self, scores):
        return self.op(scores, self.scale_tensor)

    def bprop(self, scores, out, dout):
        if self.fused_backward:
            return (self.backward_op(out, dout, self.scale_tensor),)
        return (softmax_grad(out, dout) * self.scale,)


class ScaledSoftmaxLogSize(ScaledSoftmax):
    """softmax(scores * scale + log_size) for scores [B, H, M, N], log_size [B, N]: PPT's proportional attention,
    by the compiled kernel (kernels.ops.scaled_softmax_op(with_log_size=True))."""

    def construct(self, scores, log_size):
        return self.op(scores, self.scale_tensor, log_size)

    def bprop(self, scores, log_size, out, dout):
        if self.fused_backward:
            dscores, dlog_size = self.backward_op(out, dout, self.scale_tensor)
            return dscores, dlog_size
        dlogits = softmax_grad(out, dout)
        return dlogits * self.scale, dlogits.sum((1, 2))


class BiasGELU(nn.Cell):
    """gelu(x + bias) by the compiled kernel (kernels.ops.bias_gelu_op): fc1's bias add folded into the activation,
    bit-identical to BiasAdd then GELU; the backward is GELU's, the bias's summed. `gelu`: a graph-op
    ms_ppt.layers.GELU, whose derivative the backward takes."""

    def __init__(self, op, gelu, backward_op=None):
        """backward_op: kernels.ops.bias_gelu_backward_op (the compiled backward), or None for graph ops."""
        super().__init__()
        self.op = op
        self.gelu = gelu
        self.backward_op = backward_op
        self.fused_backward = backward_op is not None

    def construct(self, x, bias):
        return self.op(x, bias)

    def bprop(self, x, bias, out, dout):
        if self.fused_backward:
            dx, dbias = self.backward_op(x, bias, dout)
            return dx, dbias
        dx = dout * self.gelu.derivative(x + ops.broadcast_to(bias, x.shape))  # layers.broadcast_add
        return dx, dx.reshape(-1, bias.shape[0]).sum(0)


class FusedReduction(nn.Cell):
    """The compiled reduction kernel with apply_reduction's backward: the gradient reaches x through the plan the
    kernel took (a one-hot transpose, weighted as the forward merged); decisions and sizes get none."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x, attn, v, k, size, threshold):
        return self.op(x, attn, v, k, size, threshold)

    def bprop(self, x, attn, v, k, size, threshold, out, dout):
        x_out, size_out, dest, pooling = out[0], out[1], out[2], out[3]
        pooled = (pooling != 0)[:, None, None]
        weight = ops.where(pooled, size, ops.ones_like(size))  # [B, N, 1]
        total = ops.where(pooled, size_out, ops.ones_like(size_out))  # [B, N-r, 1]
        onehot = (dest[:, None, :] == ops.arange(x_out.shape[1]).astype(ms.int32)[None, :, None]).astype(x.dtype)
        dx = ops.matmul(onehot.swapaxes(1, 2), dout[0] / total) * weight
        return (dx, ops.zeros_like(attn), ops.zeros_like(v), ops.zeros_like(k), ops.zeros_like(size),
                ops.zeros_like(threshold))
