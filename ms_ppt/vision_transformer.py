"""DeiT/ViT with PPT in MindSpore (read beside pt_reference/vision_transformer.py).

Parameter names are timm's dotted names (`blocks.0.attn.qkv.weight`, ...), so checkpoints map one to one.
The token schedule is static (see ppt_common.config.arch_schedule): every block knows at construction how many
tokens it sees and how many it removes, which is what lets the graph compile with fixed shapes.
"""
from typing import List, Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from ppt_common.config import SINGLE_RULE_METHODS, ArchConfig, BlockPlan, PPTConfig, arch_schedule
from ppt_common.proportional import log_size_table
from ms_ppt import kernels, ppt

# float16 runs matmuls in float16; softmax, scores, variance, similarity and LayerNorm run in float32.
SUPPORTED_DTYPES = {"float32": ms.float32, "float64": ms.float64, "float16": ms.float16}


def _accum_dtype(dtype):
    return ms.float32 if dtype == ms.float16 else dtype


class FastLayerNorm(nn.Cell):
    """The compiled float32 LayerNorm (kernels/layer_norm_cpu.cc) with LayerNorm's backward as graph ops."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x, weight, bias, eps):
        return self.op(x, weight, bias, eps)

    def bprop(self, x, weight, bias, eps, out, dout):
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


class LayerNorm(nn.Cell):
    """LayerNorm with timm's parameter names (weight, bias) and the model's eps (DeiT 1e-6, CLIP 1e-5; MindSpore's
    default is 1e-7). float32 on CPU uses ms_ppt's compiled kernel when available (about 10x faster than
    MindSpore's CPU LayerNorm; statistics in double)."""

    def __init__(self, dim: int, eps: float = 1e-6, custom_kernels: bool = False):
        super().__init__()
        self.weight = Parameter(initializer("ones", (dim,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (dim,), ms.float32), name="bias")
        self.eps = eps
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        op = kernels.layer_norm_op() if custom_kernels else None
        self.fast = FastLayerNorm(op) if op is not None else None
        self.use_fast = self.fast is not None
        self.eps_tensor = Tensor([eps], ms.float64)

    def drop_fast_kernel(self) -> None:
        self.fast = None
        self.use_fast = False

    def construct(self, x):
        dtype = x.dtype
        if self.use_fast:
            return self.fast(x, self.weight, self.bias, self.eps_tensor)
        if dtype == ms.float64:
            # the CPU LayerNorm kernel is only float32-accurate in float64 (error ~6e-7): use the formula
            centred = x - ops.mean(x, -1, True)
            var = ops.mean(centred * centred, -1, True)
            return centred / ops.sqrt(var + self.eps) * self.weight + self.bias
        if dtype == ms.float16:
            y = self.layer_norm(x.astype(ms.float32), self.weight.astype(ms.float32), self.bias.astype(ms.float32))[0]
            return y.astype(dtype)
        return self.layer_norm(x, self.weight, self.bias)[0]


def broadcast_add(x, y):
    """x + y with y broadcast explicitly: an implicitly broadcasting add holds extra output-sized buffers for the
    graph's lifetime in a MindSpore 2.10 CPU graph (measured); broadcast_to + add does not, bit-identical."""
    return x + ops.broadcast_to(y, x.shape)


class SwapMiddleAxes(nn.Cell):
    """[A, B, C, D] -> [A, C, B, D]: the attention's head split and merge, the patch extraction. On CPU with custom
    kernels a compiled copy (kernels/swap_axes_cpu.cc, bit-identical): MindSpore's CPU Transpose holds two
    output-sized buffers per call site for the graph's lifetime, which made evaluation memory grow by ~40 MB per
    image of the batch (DeiT-S)."""

    def __init__(self, custom_kernels: bool):
        super().__init__()
        self.op = kernels.swap_axes_op() if custom_kernels else None
        self.use_op = self.op is not None

    def construct(self, x):
        if self.use_op:
            return self.op(x)
        return x.transpose(0, 2, 1, 3)

    def bprop(self, x, out, dout):
        """The swap is its own inverse (the compiled kernel has no backward of its own)."""
        return (self.construct(dout),)


class PatchProjection(nn.Cell):
    """The patch convolution (kernel = stride = patch) as a matmul; works in every dtype, float64 included."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, bias: bool = True,
                 custom_kernels: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.weight = Parameter(initializer(TruncatedNormal(0.02), (embed_dim, in_chans, patch_size, patch_size),
                                            ms.float32), name="weight")
        self.has_bias = bias
        if bias:
            self.bias = Parameter(initializer("zeros", (embed_dim,), ms.float32), name="bias")
        self.swap = SwapMiddleAxes(custom_kernels)

    def patches(self, x):
        """[B, C, H, W] -> [B, gh * gw, C * p * p], each patch flattened in (channel, row, column) order."""
        B, C, H, W = x.shape
        p = self.patch_size
        gh, gw = H // p, W // p
        if self.swap.use_op:  # the same permutation as two middle-axis swaps: (p, gw) then (C, gh * gw)
            rows = self.swap(x.reshape(B * C * gh, p, gw, p))
            return self.swap(rows.reshape(B, C, gh * gw, p * p)).reshape(B, gh * gw, C * p * p)
        return x.reshape(B, C, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * p * p)

    def construct(self, x):
        w = self.weight.reshape(self.weight.shape[0], -1)
        out = ops.matmul(self.patches(x), w.swapaxes(0, 1))
        if self.has_bias:
            out = broadcast_add(out, self.bias)
        return out


class PatchEmbed(nn.Cell):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True,
                 custom_kernels: bool = False):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = PatchProjection(in_chans, embed_dim, patch_size, bias, custom_kernels)

    def construct(self, x):
        return self.proj(x)


class QkvHeads(nn.Cell):
    """The compiled qkv head split (kernels.qkv_heads_op: bias add, head swap, q/k/v split in one copy) with its
    backward as graph ops: the three gradients joined and swapped back, the bias's summed."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.swap = SwapMiddleAxes(custom_kernels=True)

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
    """softmax(scores * scale) over the last axis, by the compiled kernel (kernels.scaled_softmax_op)."""

    def __init__(self, op, scale: float):
        super().__init__()
        self.op = op
        self.scale = scale
        self.scale_tensor = Tensor([scale], ms.float32)

    def construct(self, scores):
        return self.op(scores, self.scale_tensor)

    def bprop(self, scores, out, dout):
        return (softmax_grad(out, dout) * self.scale,)


class ScaledSoftmaxLogSize(ScaledSoftmax):
    """softmax(scores * scale + log_size) for scores [B, H, M, N], log_size [B, N]: PPT's proportional attention,
    by the compiled kernel (kernels.scaled_softmax_op(with_log_size=True))."""

    def construct(self, scores, log_size):
        return self.op(scores, self.scale_tensor, log_size)

    def bprop(self, scores, log_size, out, dout):
        dlogits = softmax_grad(out, dout)
        return dlogits * self.scale, dlogits.sum((1, 2))


class Attention(nn.Cell):
    """Multi-head self-attention; with `with_scores` it also returns what PPT's scores and merge metric are made
    of: the attention map, v and k (float32 for float16 models).

    float32 on CPU with a qkv bias runs fused: the qkv matmul without its bias, then one kernel for the bias add
    and head split (QkvHeads) and one for scale, proportional bias and softmax (ScaledSoftmax*). Seven graph ops
    of the largest activations become two; the logits are bit-identical, the softmax within rounding."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_size: bool, with_scores: bool,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, custom_kernels: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.use_size = use_size
        self.with_scores = with_scores
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.swap_heads = SwapMiddleAxes(custom_kernels)
        # q @ k^T without a transposed copy of k: equal in float64, within one rounding of the sum in float32
        self.q_kt = ops.BatchMatMul(transpose_b=True)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)
        heads_op = kernels.qkv_heads_op() if custom_kernels and qkv_bias else None
        softmax_op = kernels.scaled_softmax_op(use_size) if heads_op is not None else None
        self.fused = heads_op is not None and softmax_op is not None
        self.qkv_heads = QkvHeads(heads_op) if self.fused else None
        self.softmax = (ScaledSoftmaxLogSize if use_size else ScaledSoftmax)(softmax_op, self.scale) \
            if self.fused else None

    def drop_fast_kernel(self) -> None:
        """See GELU.drop_fast_kernel."""
        self.qkv_heads = None
        self.softmax = None
        self.fused = False

    def construct(self, x, log_size):
        """log_size [B, N]: the tokens' log sizes (proportional attention), used where use_size."""
        B, N, C = x.shape
        h = self.num_heads
        accum = _accum_dtype(x.dtype)
        if self.fused:
            qkv = self.qkv.matmul(x.reshape(B * N, C), self.qkv.weight)  # nn.Dense's MatMul, its bias in qkv_heads
            q, k, v = self.qkv_heads(qkv.reshape(B, N, 3 * h, self.head_dim), self.qkv.bias)
            if self.use_size:
                attn = self.softmax(self.q_kt(q, k), log_size)
            else:
                attn = self.softmax(self.q_kt(q, k))
        else:
            # one 4D head split and three slices: 8x faster on CPU than timm's 5D permute + indexing (bit-identical)
            qkv = self.swap_heads(self.qkv(x).reshape(B, N, 3 * h, self.head_dim))
            q, k, v = qkv[:, :h], qkv[:, h:2 * h], qkv[:, 2 * h:]  # slices: ops.split's gradient fails in GRAPH_MODE
            attn = (self.q_kt(q, k) * self.scale).astype(accum)
            if self.use_size:
                attn = broadcast_add(attn, ppt.proportional_bias(log_size))
            attn = ops.softmax(attn, -1)
        out = self.swap_heads(ops.matmul(self.attn_drop(attn).astype(x.dtype), v)).reshape(B, N, C)
        out = self.proj_drop(self.proj(out))
        if self.with_scores:  # PPT decides on the attention before dropout
            return out, attn, v.astype(accum), k.astype(accum)
        return out


class GELU(nn.Cell):
    """Exact (erf) GELU as in timm (MindSpore's nn.GELU defaults to the tanh approximation).

    float32 on CPU uses ms_ppt's compiled kernel when available (12x faster than MindSpore's, same accuracy
    class: 4.7e-7 from float64 GELU against MindSpore's 4.5e-7); every other case uses MindSpore's kernel.
    """

    def __init__(self, custom_kernels: bool):
        super().__init__()
        self.exact = nn.GELU(approximate=False)
        self.fast = kernels.gelu_op() if custom_kernels else None
        # float64 constants cast to x's dtype (a Python float would be rounded to float32)
        self.sqrt_half = Tensor(0.5 ** 0.5, ms.float64)
        self.inv_sqrt_2pi = Tensor((2 * np.pi) ** -0.5, ms.float64)
        self.use_fast = self.fast is not None

    def drop_fast_kernel(self) -> None:
        """For float16/float64 models: the kernel is float32-only, and even an untaken branch holding it would be
        type-checked at graph compilation."""
        self.fast = None
        self.use_fast = False

    def construct(self, x):
        if self.use_fast:
            return self.fast(x)
        return self.exact(x)

    def derivative(self, x):
        """d/dx x Phi(x) = Phi(x) + x phi(x)."""
        cdf = 0.5 * (1.0 + ops.erf(x * self.sqrt_half.astype(x.dtype)))
        pdf = ops.exp(-0.5 * x * x) * self.inv_sqrt_2pi.astype(x.dtype)
        return cdf + x * pdf

    def bprop(self, x, out, dout):
        """For both paths (the compiled kernel has no backward of its own)."""
        return (dout * self.derivative(x),)


class BiasGELU(nn.Cell):
    """gelu(x + bias) by the compiled kernel (kernels.bias_gelu_op): fc1's bias add folded into the activation,
    bit-identical to BiasAdd then GELU; the backward is GELU's, the bias's summed."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.gelu = GELU(custom_kernels=False)

    def construct(self, x, bias):
        return self.op(x, bias)

    def bprop(self, x, bias, out, dout):
        dx = dout * self.gelu.derivative(broadcast_add(x, bias))
        return dx, dx.reshape(-1, bias.shape[0]).sum(0)


class QuickGELU(nn.Cell):
    """CLIP's activation, x * sigmoid(1.702 x) (timm's 'quick_gelu')."""

    def __init__(self):
        super().__init__()
        # a float64 constant cast to x's dtype: a Python scalar would be taken as float32 (1.70200002...)
        self.alpha = Tensor(1.702, ms.float64)

    def construct(self, x):
        return x * ops.sigmoid(x * self.alpha.astype(x.dtype))


class LayerScale(nn.Cell):
    """timm's LayerScale (DeiT-III): a learned per-channel factor `gamma`."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = Parameter(initializer(init_values, (dim,), ms.float32), name="gamma")

    def construct(self, x):
        return x * ops.broadcast_to(self.gamma, x.shape)  # see broadcast_add


class DropPath(nn.Cell):
    """Stochastic depth as timm's drop_path: in training, each image's residual branch is zeroed with probability
    `rate` and the survivors scaled by 1 / (1 - rate); identity in eval. `draws` ([B] uniform in [0, 1)) decide
    it when given: the trainer passes them so that a resumed run repeats the uninterrupted one (MindSpore's own
    random ops cannot be reseeded once compiled); without them MindSpore draws."""

    def __init__(self, rate: float):
        super().__init__()
        self.keep = 1.0 - rate

    def construct(self, x, draws=None):
        if not self.training or self.keep == 1.0:
            return x
        if draws is None:
            draws = ops.rand((x.shape[0],))
        mask = draws.reshape((x.shape[0],) + (1,) * (x.ndim - 1)) < self.keep
        return x * (mask.astype(x.dtype) / self.keep)


class Mlp(nn.Cell):
    """fc1, activation, fc2; with GELU in float32 on CPU, fc1's bias add runs inside the GELU kernel (BiasGELU)."""

    def __init__(self, dim: int, hidden: int, custom_kernels: bool, act: str = "gelu", drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Dense(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else GELU(custom_kernels)
        self.drop1 = nn.Dropout(p=drop)
        self.fc2 = nn.Dense(hidden, dim)
        self.drop2 = nn.Dropout(p=drop)
        op = kernels.bias_gelu_op() if custom_kernels and act == "gelu" else None
        self.fused = op is not None
        self.bias_act = BiasGELU(op) if self.fused else None

    def drop_fast_kernel(self) -> None:
        """See GELU.drop_fast_kernel."""
        self.bias_act = None
        self.fused = False

    def construct(self, x):
        if self.fused:
            rows = x.reshape(-1, x.shape[-1])
            hidden = self.bias_act(self.fc1.matmul(rows, self.fc1.weight), self.fc1.bias)  # nn.Dense's MatMul
            return self.drop2(self.fc2(self.drop1(hidden))).reshape(x.shape)
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


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


class TokenReduction(nn.Cell):
    """The reduction of a PP block: importance scores, merge metric (k averaged over heads) and
    ppt.reduce_tokens as graph ops, or, for PPT's policies in float32 on CPU, one compiled kernel
    (kernels/ppt_reduce_cpu.cc) taking the same decisions in one op instead of ~75, for only the policy each image
    takes. The graph ops stay the reference: float64, float16, other backends, MindIR export and the single-rule
    methods (prune_fuse, decouple_merge) use them. `threshold` is PPTConfig.policy_threshold."""

    def __init__(self, r: int, threshold: float, custom_kernels: bool, num_prefix_tokens: int = 1,
                 method: str = "ppt"):
        super().__init__()
        self.r = r
        self.threshold = threshold
        self.num_prefix_tokens = num_prefix_tokens
        self.method = method
        self.threshold_tensor = Tensor([threshold], ms.float32)
        # the fused kernel takes PPT's two policies and protects the class token only
        ppt_policies = method not in SINGLE_RULE_METHODS
        op = kernels.ppt_reduce_op(r) if custom_kernels and num_prefix_tokens == 1 and ppt_policies else None
        self.fused = FusedReduction(op) if op is not None else None
        self.use_fused = self.fused is not None

    def drop_fast_kernel(self) -> None:
        self.fused = None
        self.use_fused = False

    def construct(self, x, attn, v, k, size, source):
        """(x, size, source, (plan, sizes)): decide, then apply; the fused kernel does both in one op."""
        if self.use_fused:
            x, size, dest, policy, variance, scores, node_max = self.fused(x, attn, v, k, size, self.threshold_tensor)
            plan = (policy, variance, scores, node_max, dest)  # a ReductionPlan
            if source is not None:
                source = ppt.apply_to_source(plan, source, self.r)
            return x, size, source, (plan, size)
        attn, v, k = ops.stop_gradient(attn), ops.stop_gradient(v), ops.stop_gradient(k)  # decisions only
        scores = ppt.importance_scores(attn, v, self.num_prefix_tokens)
        x, size, source, plan = ppt.reduce_tokens(x, scores, k.mean(1), size, self.r, self.threshold, source,
                                                  self.num_prefix_tokens, self.method)
        return x, size, source, (plan, size)


class Block(nn.Cell):
    """Pre-norm block; a PP block reduces tokens between the attention residual and the MLP."""

    def __init__(self, arch: ArchConfig, plan: BlockPlan, ppt_cfg: PPTConfig, use_size: bool, trace: bool,
                 custom_kernels: bool, drop_path: float = 0.0):
        super().__init__()
        dim = arch.embed_dim
        self.reduces = plan.r > 0
        self.merge_with_sizes = ppt_cfg.prop_attn  # with prop_attn off every PP block merges with unit sizes
        self.trace = trace
        self.trace_source = ppt_cfg.trace_source
        self.norm1 = LayerNorm(dim, arch.norm_eps, custom_kernels)
        self.attn = Attention(dim, arch.num_heads, arch.qkv_bias, use_size=use_size, with_scores=self.reduces,
                              attn_drop=arch.attn_drop_rate, proj_drop=arch.proj_drop_rate,
                              custom_kernels=custom_kernels)
        self.layer_scale = arch.init_values is not None
        if self.layer_scale:
            self.ls1 = LayerScale(dim, arch.init_values)
            self.ls2 = LayerScale(dim, arch.init_values)
        self.norm2 = LayerNorm(dim, arch.norm_eps, custom_kernels)
        self.mlp = Mlp(dim, arch.mlp_hidden, custom_kernels, arch.act, arch.proj_drop_rate)
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)
        if self.reduces:
            self.reduction = TokenReduction(plan.r, ppt_cfg.policy_threshold, custom_kernels, arch.num_prefix_tokens,
                                            ppt_cfg.method)

    def branch1(self, x, draws):
        return self.drop_path1(self.ls1(x) if self.layer_scale else x, None if draws is None else draws[0])

    def branch2(self, x, draws):
        return self.drop_path2(self.ls2(x) if self.layer_scale else x, None if draws is None else draws[1])

    def construct(self, x, size, log_size, source, draws=None):
        record = ()
        if self.reduces:
            x_attn, attn, v, k = self.attn(self.norm1(x), log_size)
            x = x + self.branch1(x_attn, draws)
            if not self.merge_with_sizes:
                size = ops.ones_like(size)
            if self.trace_source:
                x, size, source, block_record = self.reduction(x, attn, v, k, size, source)
            else:
                x, size, _, block_record = self.reduction(x, attn, v, k, size, None)
            if self.trace:
                record = (block_record,)
        else:
            x = x + self.branch1(self.attn(self.norm1(x), log_size), draws)
        x = x + self.branch2(self.mlp(self.norm2(x)), draws)
        return x, size, source, record


class VisionTransformer(nn.Cell):
    """ViT/DeiT classifier with PPT, built from an ArchConfig's flags as timm's VisionTransformer. `construct(images)`
    returns logits; with trace on (logits, records), plus the source map with trace_source."""

    def __init__(self, arch: ArchConfig, ppt_cfg: Optional[PPTConfig] = None, trace: bool = False,
                 custom_kernels: Optional[bool] = None):
        super().__init__()
        ppt_cfg = ppt_cfg if ppt_cfg is not None else PPTConfig(r=0, pp_loc_list=())
        self.arch = arch
        self.ppt_config = ppt_cfg
        self.plans: List[BlockPlan] = arch_schedule(arch, ppt_cfg)
        self.trace = trace
        self.trace_source = ppt_cfg.trace_source
        self.distilled = arch.distilled
        self.no_embed_class = arch.no_embed_class
        self.pre_norm = arch.pre_norm
        dim = arch.embed_dim
        if custom_kernels is None:  # compiled CPU kernels only where they run: the CPU backend
            custom_kernels = ms.get_context("device_target") == "CPU"
        self.patch_embed = PatchEmbed(arch.img_size, arch.patch_size, arch.in_chans, dim, bias=arch.patch_bias,
                                      custom_kernels=custom_kernels)
        self.cls_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, dim), ms.float32), name="cls_token")
        if self.distilled:
            self.dist_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, dim), ms.float32),
                                        name="dist_token")
        self.pos_embed = Parameter(initializer(TruncatedNormal(0.02), (1, arch.pos_embed_tokens, dim), ms.float32),
                                   name="pos_embed")
        self.pos_drop = nn.Dropout(p=arch.pos_drop_rate)
        if self.pre_norm:
            self.norm_pre = LayerNorm(dim, arch.norm_eps, custom_kernels)
        blocks, reduced, self.log_table = [], False, None
        for plan, drop_path in zip(self.plans, arch.drop_path_rates):
            # proportional attention needs sizes only once some earlier block has reduced (log 1 = 0 before)
            blocks.append(Block(arch, plan, ppt_cfg, use_size=ppt_cfg.prop_attn and reduced, trace=trace,
                                custom_kernels=custom_kernels, drop_path=drop_path))
            reduced = reduced or plan.r > 0
        self.blocks = nn.CellList(blocks)
        if ppt_cfg.prop_attn and reduced:
            self.set_log_table(ms.float32)
        self.norm = LayerNorm(dim, arch.norm_eps, custom_kernels)
        self.head_drop = nn.Dropout(p=arch.drop_rate)
        self.head = nn.Dense(dim, arch.num_classes)
        if self.distilled:
            self.head_dist = nn.Dense(dim, arch.num_classes)

    @property
    def pp_blocks(self) -> List[BlockPlan]:
        return [p for p in self.plans if p.r > 0]

    def _pos_embed(self, x):
        """Prefix tokens (class, distillation) joined to the patches, with the position embedding: added after
        joining, or (no_embed_class, DeiT-III) to the patches before joining."""
        B, _, C = x.shape
        prefix = ops.broadcast_to(self.cls_token, (B, 1, C))
        if self.distilled:
            prefix = ops.concat([prefix, ops.broadcast_to(self.dist_token, (B, 1, C))], 1)
        if self.no_embed_class:
            return self.pos_drop(ops.concat([prefix, broadcast_add(x, self.pos_embed)], 1))
        return self.pos_drop(broadcast_add(ops.concat([prefix, x], 1), self.pos_embed))

    def forward_features(self, x, drop_path_draws=None):
        x = self._pos_embed(self.patch_embed(x.astype(self.cls_token.dtype)))
        if self.pre_norm:
            x = self.norm_pre(x)
        B = x.shape[0]
        size = ops.ones((B, x.shape[1], 1), _accum_dtype(x.dtype))
        log_size = None  # looked up once after each reduction, for the attention of every later block
        source = ppt.initial_source(B, x.shape[1], x) if self.trace_source else None
        records = ()
        i = 0
        for blk in self.blocks:
            draws = None if drop_path_draws is None else drop_path_draws[i]
            x, size, source, record = blk(x, size, log_size, source, draws)
            if blk.reduces and self.log_table is not None:
                log_size = ppt.log_sizes(size, self.log_table)
            records = records + record
            i += 1
        return self.norm(x), records, source

    def forward_head(self, x):
        """The class token's logits; distilled DeiT averages them with the distillation token's (as timm, which
        has no head dropout there)."""
        if self.distilled:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(self.head_drop(x[:, 0]))

    def construct(self, x, drop_path_draws=None):
        """drop_path_draws: [depth, 2, B] uniform draws deciding stochastic depth in training (see DropPath)."""
        x, records, source = self.forward_features(x, drop_path_draws)
        logits = self.forward_head(x)
        if self.trace and self.trace_source:
            return logits, records, source
        if self.trace:  # no None output: with a Custom op in the graph, MindSpore 2.10 fails to infer it
            return logits, records
        return logits

    def to_dtype(self, dtype) -> "VisionTransformer":
        """Cast every parameter (float16 keeps LayerNorm's internal maths in float32)."""
        for p in self.get_parameters():
            p.set_dtype(dtype)
        if self.log_table is not None:
            self.set_log_table(dtype)
        if dtype != ms.float32:
            self.drop_fast_kernels()
        return self

    def set_log_table(self, dtype) -> None:
        """Proportional attention's log-size table (ppt_common.proportional) in the attention's dtype (float32 for
        float16 models), rounded once from float64."""
        table = log_size_table(self.arch.num_tokens)
        self.log_table = Tensor(table.astype(ms.dtype_to_nptype(_accum_dtype(dtype))))

    def drop_fast_kernels(self) -> "VisionTransformer":
        """Use graph ops instead of the float32-only compiled CPU kernels: for float16/float64 models, and for
        mixed precision (auto_mixed_precision feeds the cells float16). The swap kernel stays: it copies any dtype."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, (Attention, GELU, LayerNorm, Mlp, TokenReduction)):
                cell.drop_fast_kernel()
        return self


def params_from_numpy(model: nn.Cell, state: dict, strict: bool = True) -> None:
    """Assign numpy arrays by dotted name; strict checks names and shapes both ways."""
    params = {p.name: p for p in model.get_parameters()}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    mis_shaped = sorted(k for k in set(params) & set(state) if tuple(params[k].shape) != tuple(np.shape(state[k])))
    if strict and (missing or unexpected or mis_shaped):
        from convert.mapping import CheckpointError, describe_mismatch
        raise CheckpointError(describe_mismatch(missing, unexpected,
                                                [f"{k}: {tuple(np.shape(state[k]))} vs {tuple(params[k].shape)}"
                                                 for k in mis_shaped]))
    for k, p in params.items():
        if k in state:
            p.set_data(Tensor(np.asarray(state[k]), p.dtype))
