"""The compiled kernels as MindSpore AOT custom ops (ops.Custom), one factory each; None where the kernel
cannot be built (compiler.build). None has a backward of its own: ms_ppt.kernels.cells gives each one.
"""
from ms_ppt.kernels.compiler import build


def gelu_op():
    """An ops.Custom computing exact-semantics GELU on float32 CPU tensors, or None."""
    path = build("gelu_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:GeluErf", out_shape=lambda x: x, out_dtype=lambda x: x, func_type="aot")


def bias_gelu_op():
    """An ops.Custom computing gelu(x + b) (b over the last axis) on float32 CPU tensors, or None; bit-identical
    to BiasAdd then gelu_op. No backward of its own: cells.BiasGELU gives it one."""
    path = build("gelu_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:BiasGeluErf", out_shape=lambda x, b: x, out_dtype=lambda x, b: x, func_type="aot")


def bias_gelu_backward_op():
    """An ops.Custom computing bias_gelu_op's backward on float32 CPU tensors, or None: (x, b, dout) -> (dx, db),
    db summed in double."""
    path = build("gelu_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:BiasGeluErfBackward", out_shape=lambda x, b, d: (x, b),
                      out_dtype=lambda x, b, d: (x, b), func_type="aot")


def layer_norm_op():
    """An ops.Custom computing LayerNorm over the last axis on float32 CPU tensors, or None.

    (x, weight, bias, eps[1] float64) -> y. No backward of its own: cells.FastLayerNorm gives it one.
    """
    path = build("layer_norm_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:LayerNormF32", out_shape=lambda x, w, b, eps: x, out_dtype=lambda x, w, b, eps: x,
                      func_type="aot")


def layer_norm_backward_op():
    """An ops.Custom computing LayerNorm's backward on float32 CPU tensors, or None.

    (x, weight, dout, eps[1] float64) -> (dx, dweight, dbias), statistics and sums in double: cells.FastLayerNorm's
    backward in one op instead of ~20 graph ops."""
    path = build("layer_norm_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:LayerNormBackwardF32", out_shape=lambda x, w, d, eps: (x, w, w),
                      out_dtype=lambda x, w, d, eps: (x, w, w), func_type="aot")


def swap_axes_op():
    """An ops.Custom taking [A, B, C, D] to [A, C, B, D] (any dtype; pure data movement), or None."""
    path = build("swap_axes_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:SwapAxes12", out_shape=lambda s: (s[0], s[2], s[1], s[3]), out_dtype=lambda t: t,
                      func_type="aot")


def qkv_heads_op():
    """An ops.Custom taking the qkv projection [B, N, 3H, D] and its bias [3H * D] to q, k, v, each [B, H, N, D]
    (float32), or None: BiasAdd, the head swap and three slices in one copy, bit-identical."""
    path = build("swap_axes_cpu")
    if path is None:
        return None
    from mindspore import ops

    def out_shape(qkv, bias):
        head = (qkv[0], qkv[2] // 3, qkv[1], qkv[3])
        return head, head, head

    return ops.Custom(f"{path}:QkvHeads", out_shape=out_shape, out_dtype=lambda qkv, bias: (qkv, qkv, qkv),
                      func_type="aot")


def scaled_softmax_op(with_log_size: bool):
    """An ops.Custom computing softmax(scores * scale) over the last axis, or with `with_log_size`
    softmax(scores * scale + log_size[b]) for scores [B, H, M, N] and log_size [B, N] (float32), or None.

    (scores, scale[1] float32[, log_size]) -> probabilities. No backward of its own: cells.ScaledSoftmax
    and cells.ScaledSoftmaxLogSize give it one."""
    path = build("softmax_cpu")
    if path is None:
        return None
    from mindspore import ops
    if with_log_size:
        return ops.Custom(f"{path}:ScaledSoftmaxLogSize", out_shape=lambda s, scale, log_size: s,
                          out_dtype=lambda s, scale, log_size: s, func_type="aot")
    return ops.Custom(f"{path}:ScaledSoftmax", out_shape=lambda s, scale: s, out_dtype=lambda s, scale: s,
                      func_type="aot")


def scaled_softmax_backward_op(with_log_size: bool):
    """An ops.Custom computing the backward of scaled_softmax_op(with_log_size) from its output p and gradient g
    (float32), or None: (p, g, scale[1]) -> dscores, or with `with_log_size` (dscores, dlog_size [B, N]); the
    rows' dots and the log-size sums in double."""
    path = build("softmax_cpu")
    if path is None:
        return None
    from mindspore import ops
    if with_log_size:
        return ops.Custom(f"{path}:ScaledSoftmaxLogSizeBackward",
                          out_shape=lambda p, g, scale: (p, (p[0], p[3])), out_dtype=lambda p, g, scale: (p, p),
                          func_type="aot")
    return ops.Custom(f"{path}:ScaledSoftmaxBackward", out_shape=lambda p, g, scale: p,
                      out_dtype=lambda p, g, scale: p, func_type="aot")


def ppt_reduce_op(r: int):
    """An ops.Custom computing PPT's reduction (ms_ppt.ppt.importance_scores, the merge metric, ppt.decide,
    ppt.apply_reduction) on float32 CPU tensors for a fixed r, or None.

    (x, attn, v, k, size, threshold[1]) -> (x_out, size_out, dest int32, pooling int32, variance, scores, node_max)

    It has no backward of its own: cells.FusedReduction gives it apply_reduction's.
    """
    path = build("ppt_reduce_cpu")
    if path is None:
        return None
    from mindspore import int32, ops

    def out_shape(x, attn, v, k, size, threshold):
        B, N, C = x
        return (B, N - r, C), (B, N - r, 1), (B, N), (B,), (B,), (B, N), (B, (N + 1) // 2)

    def out_dtype(x, attn, v, k, size, threshold):
        return x, x, int32, int32, x, x, x

    op = ops.Custom(f"{path}:PptReduce", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")
    # MindSpore caches an op's inferred shapes by primitive and attributes (PyNative reuses them across models),
    # and r lives only in out_shape's closure: without r as an attribute, a second model with another r would
    # get the first model's output shape and reduction.
    op.add_prim_attr("r", r)
    return op


def adamw_op(decayed: bool):
    """An op computing one parameter's AdamW step in place and its gradient's finiteness on float32 or float64 CPU
    tensors, or None: (param, exp_avg, exp_avg_sq, grad, checked, scalars[7]) -> finite[1] bool, the first three
    updated, bit-identical to ms_ppt.training's graph update; `decayed` multiplies the parameter by the decay
    factor first (adamw_cpu.cc)."""
    path = build("adamw_cpu")
    if path is None:
        return None
    from mindspore import bool_, ops
    from mindspore.ops import signature as sig

    class InPlaceAdamW(ops.Custom):
        # the three written inputs declared as MindSpore's own optimizer ops (ApplyMomentum, Adam) declare theirs:
        # the framework then orders the write after every read of the old values (or keeps a copy for a read it
        # cannot order), where writing into an undeclared input would race with the backward's reads
        __mindspore_signature__ = (
            sig.make_sig("param", sig.sig_rw.RW_WRITE, dtype=sig.sig_dtype.T),
            sig.make_sig("exp_avg", sig.sig_rw.RW_WRITE, dtype=sig.sig_dtype.T),
            sig.make_sig("exp_avg_sq", sig.sig_rw.RW_WRITE, dtype=sig.sig_dtype.T),
            sig.make_sig("grad", dtype=sig.sig_dtype.T),
            sig.make_sig("checked", dtype=sig.sig_dtype.T),
            sig.make_sig("scalars", dtype=sig.sig_dtype.T))

        def __init__(self):
            super().__init__(f"{path}:{'AdamWDecayed' if decayed else 'AdamW'}",
                             out_shape=lambda p, m, v, g, checked, s: (1,),
                             out_dtype=lambda p, m, v, g, checked, s: bool_, func_type="aot")
            self.add_prim_attr("side_effect_mem", True)

    return InPlaceAdamW()
