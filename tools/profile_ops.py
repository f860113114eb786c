#!/usr/bin/env python
"""Per-operation CPU profile of one transformer block, MindSpore (graph mode) vs PyTorch, at DeiT shapes.

    python tools/profile_ops.py --model deit_small_patch16_224 --batch-size 8

Each op is compiled alone and timed on the same input arrays in both frameworks, the two timed alternately
(median of --runs after warm-up, each call after a short pause so the other framework's spinning threads
are idle; both include fetching the result to a NumPy array). The table gives
milliseconds per call, the ratio, and the per-forward total (x depth, dense).
"""
import argparse
import sys

import _bootstrap  # noqa: F401

import numpy as np

from ppt_common.config import MODEL_CONFIGS, get_arch
from ppt_common.measure import time_interleaved


def ops_table(arch, batch):
    """(name, calls per forward, ms function, pt function, inputs) at the model's dense shapes."""
    import mindspore as ms
    import torch
    from mindspore import nn, ops
    from ms_ppt.kernels import Kernels, ops as kernel_ops
    from ms_ppt.kernels.cells import BiasGELU, QkvHeads, ScaledSoftmax, SwapMiddleAxes
    from ms_ppt.layers import GELU, LayerNorm
    B, N, C, H = batch, arch.num_tokens, arch.embed_dim, arch.num_heads
    d, hidden = C // H, arch.mlp_hidden
    rng = np.random.RandomState(0)
    x, h = rng.randn(B, N, C).astype(np.float32), rng.randn(B, N, hidden).astype(np.float32)
    q, k = rng.randn(B, H, N, d).astype(np.float32), rng.randn(B, H, N, d).astype(np.float32)
    att = rng.randn(B, H, N, N).astype(np.float32)
    w_qkv = rng.randn(3 * C, C).astype(np.float32) * 0.02
    w_fc1 = rng.randn(hidden, C).astype(np.float32) * 0.02

    class Linear(nn.Cell):
        def construct(self, a, w):
            return ops.matmul(a, w.swapaxes(0, 1))

    class QK(nn.Cell):
        def __init__(self):
            super().__init__()
            self.q_kt = ops.BatchMatMul(transpose_b=True)  # as the model's Attention

        def construct(self, a, b):
            return self.q_kt(a, b)

    class AV(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    class Softmax(nn.Cell):
        def construct(self, a):
            return ops.softmax(a, -1)

    class SplitHeads(nn.Cell):
        def construct(self, a):
            return a.reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4) * 1.0

    class BiasSwapSlices(nn.Cell):  # the unfused model's qkv bias add, head swap and slices
        def __init__(self):
            super().__init__()
            self.swap = SwapMiddleAxes(kernel_ops.swap_axes_op())

        def construct(self, a, b):
            heads = self.swap(ops.bias_add(a, b).reshape(B, N, 3 * H, d))
            return heads[:, :H], heads[:, H:2 * H], heads[:, 2 * H:]

    class ScaleSoftmax(nn.Cell):  # the unfused model's scale and softmax
        def construct(self, a):
            return ops.softmax(a * d ** -0.5, -1)

    class BiasThenGELU(nn.Cell):  # the unfused model's fc1 bias add and GELU kernel
        def __init__(self):
            super().__init__()
            self.gelu = GELU(Kernels(on=True))

        def construct(self, a, b):
            return self.gelu(ops.bias_add(a, b))

    def pt_heads(a, b):
        heads = (a + b).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).contiguous()
        return heads[0], heads[1], heads[2]

    ln = LayerNorm(C)
    dense_qkv = nn.Dense(C, 3 * C, has_bias=False)
    dense_qkv.weight.set_data(ms.Tensor(w_qkv))
    gelu_kernel = nn.GELU(approximate=False)
    T = ms.Tensor
    tt = torch.from_numpy
    qkv_rows = rng.randn(B * N, 3 * C).astype(np.float32)
    h_rows, b_qkv, b_fc1 = h.reshape(B * N, hidden), rng.randn(3 * C).astype(np.float32), rng.randn(hidden).astype(
        np.float32)
    fused = [] if kernel_ops.qkv_heads_op() is None else [
        ("qkv bias + head split, graph ops", 1, BiasSwapSlices(), (T(qkv_rows), T(b_qkv)),
         pt_heads, (tt(qkv_rows), tt(b_qkv))),
        ("qkv bias + head split, ms_ppt kernel", 1, QkvHeads(kernel_ops.qkv_heads_op()),
         (T(qkv_rows.reshape(B, N, 3 * H, d)), T(b_qkv)), pt_heads, (tt(qkv_rows), tt(b_qkv))),
        ("scale + softmax, graph ops", 1, ScaleSoftmax(), (T(att),), lambda a: (a * d ** -0.5).softmax(-1),
         (tt(att),)),
        ("scale + softmax, ms_ppt kernel", 1, ScaledSoftmax(kernel_ops.scaled_softmax_op(False), d ** -0.5), (T(att),),
         lambda a: (a * d ** -0.5).softmax(-1), (tt(att),)),
        ("fc1 bias + GELU, graph ops", 1, BiasThenGELU(), (T(h_rows), T(b_fc1)),
         lambda a, b: torch.nn.functional.gelu(a + b), (tt(h_rows), tt(b_fc1))),
        ("fc1 bias + GELU, ms_ppt kernel", 1, BiasGELU(kernel_ops.bias_gelu_op(), GELU()), (T(h_rows), T(b_fc1)),
         lambda a, b: torch.nn.functional.gelu(a + b), (tt(h_rows), tt(b_fc1))),
    ]
    return fused + [
        ("qkv linear (nn.Dense)", 1, dense_qkv, (T(x),),
         lambda a: torch.nn.functional.linear(a, tt(w_qkv)), (tt(x),)),
        ("qkv linear (matmul)", 1, Linear(), (T(x), T(w_qkv)),
         lambda a, w: torch.nn.functional.linear(a, w), (tt(x), tt(w_qkv))),
        ("q @ k^T", 1, QK(), (T(q), T(k)),
         lambda a, b: a @ b.transpose(-2, -1), (tt(q), tt(k))),
        ("softmax", 1, Softmax(), (T(att),), lambda a: a.softmax(-1), (tt(att),)),
        ("attn @ v", 1, AV(), (T(att), T(k)), lambda a, b: a @ b, (tt(att), tt(k))),
        ("fc1 linear", 1, Linear(), (T(x), T(w_fc1)),
         lambda a, w: torch.nn.functional.linear(a, w), (tt(x), tt(w_fc1))),
        ("GELU (exact), MindSpore kernel", 1, gelu_kernel, (T(h),),
         lambda a: torch.nn.functional.gelu(a), (tt(h),)),
        ("GELU (exact), ms_ppt kernel", 1, GELU(Kernels(on=True)), (T(h),),
         lambda a: torch.nn.functional.gelu(a), (tt(h),)),
        ("LayerNorm, MindSpore kernel", 2, ln, (T(x),),
         lambda a: torch.nn.functional.layer_norm(a, (C,), eps=1e-6), (tt(x),)),
        ("LayerNorm, ms_ppt kernel", 2, LayerNorm(C, 1e-6, Kernels(on=True)), (T(x),),
         lambda a: torch.nn.functional.layer_norm(a, (C,), eps=1e-6), (tt(x),)),
        ("head split, ms_ppt kernel", 1, SwapMiddleAxes(kernel_ops.swap_axes_op()),
         (T(np.concatenate([x] * 3, -1).reshape(B, N, 3 * H, d)),),
         lambda a: a.permute(0, 2, 1, 3).contiguous(), (tt(np.concatenate([x] * 3, -1).reshape(B, N, 3 * H, d)),)),
        ("qkv reshape+transpose", 1, SplitHeads(),
         (T(np.concatenate([x] * 3, -1)),),
         lambda a: a.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).contiguous(), (tt(np.concatenate([x] * 3, -1)),)),
    ]


def fetch(out):
    """To host: one tensor or a tuple of them, MindSpore's (asnumpy) or PyTorch's (numpy)."""
    outs = out if isinstance(out, tuple) else (out,)
    return [o.asnumpy() if hasattr(o, "asnumpy") else o.numpy() for o in outs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    import mindspore as ms
    import torch
    ms.set_context(mode=ms.GRAPH_MODE)
    arch = get_arch(args.model)
    print(f"{args.model}, batch {args.batch_size}, {arch.num_tokens} tokens, torch threads {torch.get_num_threads()}")
    print("| op | MindSpore ms | PyTorch ms | ratio | MindSpore ms per forward |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for name, calls, cell, ms_in, pt_fn, pt_in in ops_table(arch, args.batch_size):
            times = time_interleaved({"ms": lambda: fetch(cell(*ms_in)), "pt": lambda: fetch(pt_fn(*pt_in))},
                                     args.runs, warmup=3)
            t_ms, t_pt = 1000 * times["ms"], 1000 * times["pt"]
            print(f"| {name} | {t_ms:.2f} | {t_pt:.2f} | {t_ms / t_pt:.1f}x | {t_ms * calls * arch.depth:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
