"""Custom CPU kernels (MindSpore AOT custom ops), compiled on first use and cached.

Five kernel files (docs/performance.md has the measurements):
- gelu_cpu.cc: exact-semantics GELU, 9x faster than MindSpore's CPU GELU at DeiT shapes (float32), alone or with
  fc1's bias add folded in;
- layer_norm_cpu.cc: LayerNorm with double statistics, ~10x faster than MindSpore's CPU LayerNorm (float32);
- swap_axes_cpu.cc: the attention's head split and merge and the patch extraction, a plain copy (any dtype) that,
  unlike MindSpore's CPU Transpose, holds no buffers for the graph's lifetime; and the qkv head split with the
  qkv bias added in the same copy (float32);
- softmax_cpu.cc: the attention's scale, proportional-attention bias and softmax in one pass (float32);
- ppt_reduce_cpu.cc: PPT's whole token reduction (importance scores, policy, ranking, matching, merge) in one
  call, replacing ~75 small graph ops per PP block with the same decisions (float32).
They are compiled with the host's g++ for this CPU
(-march=native) into a cache folder keyed by source, flags and CPU model; without a compiler, or with
MS_PPT_CUSTOM_KERNELS=0, models fall back to MindSpore's own kernels.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from functools import lru_cache
from typing import Optional

from ppt_common.files import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
# -fno-trapping-math lets the compiler if-convert and vectorise the loop; unlike -ffast-math it changes no
# process-wide floating-point state and keeps IEEE results for finite inputs.
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]


def enabled() -> bool:
    return os.environ.get("MS_PPT_CUSTOM_KERNELS", "1") not in ("0", "false", "no")


def cache_dir() -> str:
    return os.environ.get("MS_PPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ms_ppt"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def _sources_digest(source: str) -> bytes:
    """The kernel's source and the shared headers it may include: a changed header rebuilds every kernel."""
    parts = [source] + sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".h"))
    digest = hashlib.sha256()
    for path in parts:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.digest()


class _CompileError(Exception):
    pass


@lru_cache(maxsize=None)
def build(name: str) -> Optional[str]:
    """Path of the compiled kernels/<name>.cc for this machine, compiling it if needed; None if impossible."""
    if not enabled() or platform.system() != "Linux":
        return None
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        warnings.warn("ms_ppt: no C++ compiler found, using MindSpore's own kernels (slower); install g++ for speed")
        return None
    source = os.path.join(HERE, f"{name}.cc")
    key = hashlib.sha256(_sources_digest(source) + " ".join(FLAGS).encode() + _cpu_model().encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), f"{name}-{key}.so")
    if os.path.exists(target):
        return target

    def compile_to(tmp):
        result = subprocess.run([compiler, *FLAGS, "-o", tmp, source], capture_output=True, text=True)
        if result.returncode != 0:
            raise _CompileError(result.stderr[:300])

    try:
        os.makedirs(cache_dir(), exist_ok=True)
        atomic_write(target, compile_to)  # concurrent processes never load a half-written library
        return target
    except _CompileError as e:
        warnings.warn(f"ms_ppt: compiling {name}.cc failed, using MindSpore's kernels: {e}")
        return None
    except OSError as e:
        warnings.warn(f"ms_ppt: cannot build {name}.cc in {cache_dir()} ({e}), using MindSpore's kernels")
        return None


def gelu_op():
    """An ops.Custom computing exact-semantics GELU on float32 CPU tensors, or None."""
    path = build("gelu_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:GeluErf", out_shape=lambda x: x, out_dtype=lambda x: x, func_type="aot")


def bias_gelu_op():
    """An ops.Custom computing gelu(x + b) (b over the last axis) on float32 CPU tensors, or None; bit-identical
    to BiasAdd then gelu_op. No backward of its own: vision_transformer.BiasGELU gives it one."""
    path = build("gelu_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:BiasGeluErf", out_shape=lambda x, b: x, out_dtype=lambda x, b: x, func_type="aot")


def layer_norm_op():
    """An ops.Custom computing LayerNorm over the last axis on float32 CPU tensors, or None.

    (x, weight, bias, eps[1] float64) -> y. No backward of its own: vision_transformer.FastLayerNorm gives it one.
    """
    path = build("layer_norm_cpu")
    if path is None:
        return None
    from mindspore import ops
    return ops.Custom(f"{path}:LayerNormF32", out_shape=lambda x, w, b, eps: x, out_dtype=lambda x, w, b, eps: x,
                      func_type="aot")


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

    (scores, scale[1] float32[, log_size]) -> probabilities. No backward of its own: vision_transformer's
    ScaledSoftmax and ScaledSoftmaxLogSize give it one."""
    path = build("softmax_cpu")
    if path is None:
        return None
    from mindspore import ops
    if with_log_size:
        return ops.Custom(f"{path}:ScaledSoftmaxLogSize", out_shape=lambda s, scale, log_size: s,
                          out_dtype=lambda s, scale, log_size: s, func_type="aot")
    return ops.Custom(f"{path}:ScaledSoftmax", out_shape=lambda s, scale: s, out_dtype=lambda s, scale: s,
                      func_type="aot")


def ppt_reduce_op(r: int):
    """An ops.Custom computing PPT's reduction (ppt.importance_scores, the merge metric, ppt.decide,
    ppt.apply_reduction) on float32 CPU tensors for a fixed r, or None.

    (x, attn, v, k, size, threshold[1]) -> (x_out, size_out, dest int32, pooling int32, variance, scores, node_max)

    It has no backward of its own: vision_transformer.FusedReduction gives it apply_reduction's.
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
