"""Custom CPU kernels (MindSpore AOT custom ops), compiled on first use and cached, behind one switch.

Six kernel files (docs/performance.md has the measurements):
- gelu_cpu.cc: exact-semantics GELU, 9x faster than MindSpore's CPU GELU at DeiT shapes (float32), alone or with
  fc1's bias add folded in;
- layer_norm_cpu.cc: LayerNorm with double statistics, ~10x faster than MindSpore's CPU LayerNorm (float32);
- swap_axes_cpu.cc: the attention's head split and merge and the patch extraction, a plain copy (any dtype) that,
  unlike MindSpore's CPU Transpose, holds no buffers for the graph's lifetime; and the qkv head split with the
  qkv bias added in the same copy (float32);
- softmax_cpu.cc: the attention's scale, proportional-attention bias and softmax in one pass (float32);
- the backwards of GELU (with fc1's bias), LayerNorm and the scaled softmax, in the same files, for training;
- ppt_reduce_cpu.cc: PPT's whole token reduction (importance scores, policy, ranking, matching, merge) in one
  call, replacing ~75 small graph ops per PP block with the same decisions (float32);
- adamw_cpu.cc: one parameter's AdamW step and its gradient's finite check in one pass, bit-identical to
  ms_ppt.training's graph ops (float32 and float64; used by training.AdamW, not by the layers).

Three modules: `compiler` builds them (with the host's g++, -march=native, cached by source, flags and CPU model;
without a compiler, or with MS_PPT_CUSTOM_KERNELS=0, there is nothing to build and models fall back to MindSpore's
own kernels), `ops` makes them MindSpore ops, `cells` gives each op a backward. `Kernels`, chosen once per model,
is the one switch the layers ask for their ops.
"""
import dataclasses
from typing import Optional

from ms_ppt.kernels import ops


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Whether a model's layers use the compiled kernels. Each method gives a layer its op, or None where the
    kernels are off or cannot be built: the layer then runs its graph ops and its `fused` is False."""
    on: bool = False

    @classmethod
    def choose(cls, custom_kernels: Optional[bool] = None) -> "Kernels":
        """custom_kernels as create_model takes it: None turns them on where they run, the CPU backend."""
        if custom_kernels is None:
            import mindspore as ms
            custom_kernels = ms.get_context("device_target") == "CPU"
        return cls(bool(custom_kernels))

    def gelu(self):
        return ops.gelu_op() if self.on else None

    def bias_gelu(self):
        return ops.bias_gelu_op() if self.on else None

    def bias_gelu_backward(self):
        return ops.bias_gelu_backward_op() if self.on else None

    def layer_norm(self):
        return ops.layer_norm_op() if self.on else None

    def layer_norm_backward(self):
        return ops.layer_norm_backward_op() if self.on else None

    def swap_axes(self):
        return ops.swap_axes_op() if self.on else None

    def qkv_heads(self):
        return ops.qkv_heads_op() if self.on else None

    def scaled_softmax(self, with_log_size: bool):
        return ops.scaled_softmax_op(with_log_size) if self.on else None

    def scaled_softmax_backward(self, with_log_size: bool):
        return ops.scaled_softmax_backward_op(with_log_size) if self.on else None

    def ppt_reduce(self, r: int):
        return ops.ppt_reduce_op(r) if self.on else None


GRAPH_OPS = Kernels(on=False)  # MindSpore's own ops everywhere: the layers' default
