"""The ViT's generic layers in MindSpore, with timm's parameter names: LayerNorm, the patch embedding, attention,
the MLP and its activations, LayerScale, DropPath (read beside timm.layers).

Layers with a compiled CPU path take their model's `Kernels` switch (ms_ppt.kernels) and ask it for their op once,
at construction; `fused` says whether they got it (then they run the kernel cells of ms_ppt.kernels.cells), and
`unfuse()` goes back to the graph ops. Without the switch every layer runs MindSpore's own ops.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from ms_ppt import ppt
from ms_ppt.kernels import GRAPH_OPS, Kernels
from ms_ppt.kernels.cells import (BiasGELU, FastLayerNorm, QkvHeads, ScaledSoftmax, ScaledSoftmaxLogSize,
                                  SwapMiddleAxes)


def accum_dtype(dtype):
    """The dtype attention statistics and PPT's decisions are computed in: float32 for float16 models."""
    return ms.float32 if dtype == ms.float16 else dtype


class LayerNorm(nn.Cell):
    """LayerNorm with timm's parameter names (weight, bias) and the model's eps (DeiT 1e-6, CLIP 1e-5; MindSpore's
    default is 1e-7). float32 on CPU uses ms_ppt's compiled kernel when available (about 10x faster than
    MindSpore's CPU LayerNorm; statistics in double)."""

    def __init__(self, dim: int, eps: float = 1e-6, kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.weight = Parameter(initializer("ones", (dim,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (dim,), ms.float32), name="bias")
        self.eps = eps
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        op = kernels.layer_norm()
        self.kernel = FastLayerNorm(op, kernels.layer_norm_backward()) if op is not None else None
        self.fused = self.kernel is not None
        self.eps_tensor = Tensor([eps], ms.float64)

    def unfuse(self) -> None:
        self.kernel = None
        self.fused = False

    def construct(self, x):
        dtype = x.dtype
        if self.fused:
            return self.kernel(x, self.weight, self.bias, self.eps_tensor)
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


class PatchProjection(nn.Cell):
    """The patch convolution (kernel = stride = patch) as a matmul; works in every dtype, float64 included."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, bias: bool = True,
                 kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.patch_size = patch_size
        self.weight = Parameter(initializer(TruncatedNormal(0.02), (embed_dim, in_chans, patch_size, patch_size),
                                            ms.float32), name="weight")
        self.has_bias = bias
        if bias:
            self.bias = Parameter(initializer("zeros", (embed_dim,), ms.float32), name="bias")
        self.swap = SwapMiddleAxes(kernels.swap_axes())

    def patches(self, x):
        """[B, C, H, W] -> [B, gh * gw, C * p * p], each patch flattened in (channel, row, column) order."""
        B, C, H, W = x.shape
        p = self.patch_size
        gh, gw = H // p, W // p
        if self.swap.fused:  # the same permutation as two middle-axis swaps: (p, gw) then (C, gh * gw)
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
                 kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = PatchProjection(in_chans, embed_dim, patch_size, bias, kernels)

    def construct(self, x):
        return self.proj(x)


class Attention(nn.Cell):
    """Multi-head self-attention; with `with_scores` it also returns what PPT's scores and merge metric are made
    of: the attention map, v and k (float32 for float16 models).

    float32 on CPU with a qkv bias runs fused: the qkv matmul without its bias, then one kernel for the bias add
    and head split (QkvHeads) and one for scale, proportional bias and softmax (ScaledSoftmax*). Seven graph ops
    of the largest activations become two; the logits are bit-identical, the softmax within rounding."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_size: bool, with_scores: bool,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        # a float64 constant cast to x's dtype: a Python float would be rounded to float32 (exact only for 64-wide
        # heads' 1/8; 32-wide heads' scale would lose 3e-9 relative in float64 models)
        self.scale_tensor = Tensor(self.scale, ms.float64)
        self.use_size = use_size
        self.with_scores = with_scores
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.swap_heads = SwapMiddleAxes(kernels.swap_axes())
        # q @ k^T without a transposed copy of k: equal in float64, within one rounding of the sum in float32
        self.q_kt = ops.BatchMatMul(transpose_b=True)
        # attn @ v as a BatchMatMul, not ops.matmul: the latter's gradient makes transposed copies of attn and v with
        # Transpose ops, which hold their buffers in a CPU graph (690 MB of DeiT-S training at batch 16); this one's
        # gradient is two transposed BatchMatMuls. The forward is the same kernel (ops.matmul expands to it).
        self.attn_v = ops.BatchMatMul()
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)
        heads_op = kernels.qkv_heads() if qkv_bias else None
        softmax_op = kernels.scaled_softmax(use_size) if heads_op is not None else None
        self.fused = heads_op is not None and softmax_op is not None
        self.qkv_heads = QkvHeads(heads_op) if self.fused else None
        self.softmax = (ScaledSoftmaxLogSize if use_size else ScaledSoftmax)(
            softmax_op, self.scale, kernels.scaled_softmax_backward(use_size)) if self.fused else None

    def unfuse(self) -> None:
        """See GELU.unfuse."""
        self.qkv_heads = None
        self.softmax = None
        self.fused = False

    def construct(self, x, log_size):
        """log_size [B, N]: the tokens' log sizes (proportional attention), used where use_size."""
        B, N, C = x.shape
        h = self.num_heads
        accum = accum_dtype(x.dtype)
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
            attn = (self.q_kt(q, k) * self.scale_tensor.astype(x.dtype)).astype(accum)
            if self.use_size:
                attn = broadcast_add(attn, ppt.proportional_bias(log_size))
            attn = ops.softmax(attn, -1)
        out = self.swap_heads(self.attn_v(self.attn_drop(attn).astype(x.dtype), v)).reshape(B, N, C)
        out = self.proj_drop(self.proj(out))
        if self.with_scores:  # PPT decides on the attention before dropout
            return out, attn, v.astype(accum), k.astype(accum)
        return out


class GELU(nn.Cell):
    """Exact (erf) GELU as in timm (MindSpore's nn.GELU defaults to the tanh approximation).

    float32 on CPU uses ms_ppt's compiled kernel when available (12x faster than MindSpore's, same accuracy
    class: 4.7e-7 from float64 GELU against MindSpore's 4.5e-7); every other case uses MindSpore's kernel.
    """

    def __init__(self, kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.exact = nn.GELU(approximate=False)
        self.kernel = kernels.gelu()
        # float64 constants cast to x's dtype (a Python float would be rounded to float32)
        self.sqrt_half = Tensor(0.5 ** 0.5, ms.float64)
        self.inv_sqrt_2pi = Tensor((2 * np.pi) ** -0.5, ms.float64)
        self.fused = self.kernel is not None

    def unfuse(self) -> None:
        """For float16/float64 models: the kernel is float32-only, and even an untaken branch holding it would be
        type-checked at graph compilation."""
        self.kernel = None
        self.fused = False

    def construct(self, x):
        if self.fused:
            return self.kernel(x)
        return self.exact(x)

    def derivative(self, x):
        """d/dx x Phi(x) = Phi(x) + x phi(x)."""
        cdf = 0.5 * (1.0 + ops.erf(x * self.sqrt_half.astype(x.dtype)))
        pdf = ops.exp(-0.5 * x * x) * self.inv_sqrt_2pi.astype(x.dtype)
        return cdf + x * pdf

    def bprop(self, x, out, dout):
        """For both paths (the compiled kernel has no backward of its own)."""
        return (dout * self.derivative(x),)


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
        # broadcast explicitly (see broadcast_add): implicitly, the 24 drop paths of a DeiT-S held 760 MB of its
        # training at batch 16
        return x * ops.broadcast_to(mask.astype(x.dtype) / self.keep, x.shape)


class Mlp(nn.Cell):
    """fc1, activation, fc2; with GELU in float32 on CPU, fc1's bias add runs inside the GELU kernel (BiasGELU)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0, kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.fc1 = nn.Dense(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else GELU(kernels)
        self.drop1 = nn.Dropout(p=drop)
        self.fc2 = nn.Dense(hidden, dim)
        self.drop2 = nn.Dropout(p=drop)
        op = kernels.bias_gelu() if act == "gelu" else None
        self.fused = op is not None
        self.bias_act = BiasGELU(op, GELU(), kernels.bias_gelu_backward()) if self.fused else None

    def unfuse(self) -> None:
        """See GELU.unfuse."""
        self.bias_act = None
        self.fused = False

    def construct(self, x):
        if self.fused:
            rows = x.reshape(-1, x.shape[-1])
            hidden = self.bias_act(self.fc1.matmul(rows, self.fc1.weight), self.fc1.bias)  # nn.Dense's MatMul
            return self.drop2(self.fc2(self.drop1(hidden))).reshape(x.shape)
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
