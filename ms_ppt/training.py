"""Training cells: DeiT's optimizer and EMA, the smoothed soft-target loss, one compiled training step, and the
training checkpoint. Mirrors pt_reference/training.py.

mindcv's AdamW and EMA are not used: its AdamW computes every update in float32 whatever the parameters' dtype (so
a float64 run cannot match PyTorch's), and its EMA warms the decay up as decay * (1 - exp(-t / 2000)) where DeiT's
timm ModelEma uses the decay from the first step (training-notes.md).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.parameter import ParameterTuple

from ms_ppt.kernels.ops import adamw_op
from ppt_common.heap import release_free_heap
from ppt_common.training import decays

# a training checkpoint holds the model's parameters under their own names (any tool loads it as weights), plus
# these prefixes (mindcv's names for EMA and Adam moments) and the scalars below
EMA_PREFIX, EXP_AVG_PREFIX, EXP_AVG_SQ_PREFIX = "ema", "adam_m", "adam_v"


class AdamW(nn.Cell):
    """torch.optim.AdamW as timm builds it for DeiT (decoupled weight decay, bias-corrected moments, eps added
    to the corrected root), in the parameters' own dtype. The step's scalars come from `adamw_scalars`, computed
    in Python double precision as torch does, so the lr schedule needs no recompilation.

    construct() also tells whether every tensor of `checked` (the step's unclipped gradients; the gradients by
    default) is finite: the compiled update (kernels/adamw_cpu.cc; float32 and float64 on the CPU backend, where
    it builds, unless fused=False) checks it in the same pass, bit-identical to the graph ops otherwise used. The
    update is applied either way, as torch applies it."""

    def __init__(self, params: Sequence[ms.Parameter], betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.05, fused: Optional[bool] = None):
        super().__init__()
        self.params = ParameterTuple(params)
        self.exp_avg = self.params.clone(EXP_AVG_PREFIX, "zeros")
        self.exp_avg_sq = self.params.clone(EXP_AVG_SQ_PREFIX, "zeros")
        self.betas, self.weight_decay = betas, weight_decay
        # Tensor constants in the parameters' dtype: a Python float in a float64 graph is rounded to float32
        dtype = params[0].dtype
        self.beta1_c = ms.Tensor(1.0 - betas[0], dtype)
        self.beta2, self.beta2_c = ms.Tensor(betas[1], dtype), ms.Tensor(1.0 - betas[1], dtype)
        self.eps = ms.Tensor(eps, dtype)
        self.decayed = tuple(decays(p.name, p.ndim) for p in params)
        self.num_steps = 0  # completed steps (torch's per-parameter 'step')
        self.map = ops.HyperMap()
        if fused is None:
            fused = ms.get_context("device_target") == "CPU"
        kernels = (adamw_op(True), adamw_op(False)) if fused and dtype in (ms.float32, ms.float64) else (None,)
        self.fused = kernels[0] is not None
        if self.fused:
            self.decayed_update, self.plain_update = kernels

    def scalars(self, lr: float):
        """Advance the step count; the Tensors the next construct() needs: (decay factor, step size, sqrt of the
        second bias correction), each as torch computes it."""
        self.num_steps += 1
        beta1, beta2 = self.betas
        dtype = self.params[0].dtype
        return (ms.Tensor(1.0 - lr * self.weight_decay, dtype), ms.Tensor(lr / (1.0 - beta1 ** self.num_steps), dtype),
                ms.Tensor(math.sqrt(1.0 - beta2 ** self.num_steps), dtype))

    def construct(self, grads, decay_factor, step_size, bias_correction2_sqrt, checked=None):
        if checked is None:
            checked = grads
        if self.fused:
            scalars = ops.stack((self.beta1_c, self.beta2, self.beta2_c, self.eps, decay_factor, step_size,
                                 bias_correction2_sqrt))
            flags = self.map(ops.partial(_fused_adamw_update, self.decayed_update, self.plain_update, scalars),
                             self.params, self.exp_avg, self.exp_avg_sq, grads, checked, self.decayed)
            return ops.stack(flags).all()
        updates = self.map(ops.partial(_adamw_update, self.beta1_c, self.beta2, self.beta2_c, self.eps, decay_factor,
                                       step_size, bias_correction2_sqrt),
                           self.params, self.exp_avg, self.exp_avg_sq, grads, self.decayed)
        return ops.depend(ops.stack([ops.isfinite(g).all() for g in checked]).all(), updates)


# one parameter's update, mapped over all of them (one compiled function instead of an unrolled loop)
_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Bool")
def _adamw_tensor(beta1_c, beta2, beta2_c, eps, decay_factor, step_size, bias_correction2_sqrt, param, m, v, g,
                  decayed):
    new_m = m + (g - m) * beta1_c
    new_v = v * beta2 + g * g * beta2_c
    p = param * decay_factor if decayed else param
    p = p - step_size * (new_m / (ops.sqrt(new_v) / bias_correction2_sqrt + eps))
    return ops.depend(ops.assign(param, p), (ops.assign(m, new_m), ops.assign(v, new_v)))


# the same update by the compiled kernel, in place, which also says whether `checked` (the unclipped gradient) is
# finite
_fused_adamw_update = ops.MultitypeFuncGraph("fused_adamw_update")


@_fused_adamw_update.register("Function", "Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                              "Bool")
def _fused_adamw_tensor(decayed_update, plain_update, scalars, param, m, v, g, checked, decayed):
    if decayed:
        return decayed_update(param, m, v, g, checked, scalars)
    return plain_update(param, m, v, g, checked, scalars)


class ModelEma(nn.Cell):
    """timm's ModelEma (DeiT's --model-ema): ema = decay * ema + (1 - decay) * weights after every step."""

    def __init__(self, params: Sequence[ms.Parameter], decay: float):
        super().__init__()
        self.params = ParameterTuple(params)
        self.ema = self.params.clone(EMA_PREFIX, "same")
        for p in self.ema:
            p.requires_grad = False
        dtype = params[0].dtype
        self.decay, self.decay_c = ms.Tensor(decay, dtype), ms.Tensor(1.0 - decay, dtype)
        self.map = ops.HyperMap()

    def construct(self):
        return self.map(ops.partial(_ema_update, self.decay, self.decay_c), self.ema, self.params)


_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor", "Tensor")
def _ema_tensor(decay, decay_c, ema, param):
    return ops.assign(ema, ema * decay + param * decay_c)


class LossCell(nn.Cell):
    """Model and loss; `draws` are the step's drop-path draws (None: the model draws its own). A model built
    with trace=True is trained on its logits (its records carry no gradient)."""

    def __init__(self, model: nn.Cell, loss_fn: nn.Cell):
        super().__init__(auto_prefix=False)
        self.model, self.loss_fn = model, loss_fn
        self.traced = bool(getattr(model, "trace", False))

    def construct(self, images, targets, draws):
        out = self.model(images, draws)
        return self.loss_fn(out[0] if self.traced else out, targets)


def build_optimizer(model: nn.Cell, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    weight_decay: float = 0.05) -> AdamW:
    """DeiT's optimizer over the model's trainable parameters (decayed by ppt_common.training's rule)."""
    return AdamW(model.trainable_params(), betas, eps, weight_decay)


def log_softmax(logits):
    """Log-softmax over the last axis, written out: MindSpore's CPU LogSoftmax is only float32-accurate in float64.
    The log is taken in float64: MindSpore's CPU float32 Log changes its bits with its thread split, which its
    kernels re-tune over their first launches (docs/ppt-spec.md); float64 Log is deterministic and, rounded to
    float32, correctly rounded."""
    shifted = logits - logits.max(-1, keepdims=True)
    sum_exp = ops.exp(shifted).sum(-1, keepdims=True)
    return shifted - ops.log(sum_exp.astype(ms.float64)).astype(logits.dtype)


class SoftTargetCrossEntropy(nn.Cell):
    """Cross entropy on soft targets [B, classes] (one-hot or mixed) smoothed by `smoothing`: timm's
    SoftTargetCrossEntropy on the targets DeiT's Mixup smooths, equal to mindcv's CE loss. Not mindcv's
    (ops.cross_entropy) because that takes a float64 target for class indices, so float64 training, and the
    parity it proves, would be impossible; float16 logits are scored in float32."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = smoothing
        # float64 constants cast to the logits' dtype (a Python float in a graph is rounded to float32)
        self.on = ms.Tensor(1.0 - smoothing, ms.float64)
        self.smooth = ms.Tensor(smoothing, ms.float64)

    def construct(self, logits, targets):
        if logits.dtype == ms.float16:
            logits = logits.astype(ms.float32)
        targets = targets.astype(logits.dtype)
        if self.smoothing > 0:
            targets = targets * self.on.astype(logits.dtype) + self.smooth.astype(logits.dtype) / logits.shape[-1]
        log_probs = log_softmax(logits)
        return -(targets * log_probs).sum(-1).mean()


def build_loss(smoothing: float) -> nn.Cell:
    return SoftTargetCrossEntropy(smoothing)


class _Scaled(nn.Cell):
    def __init__(self, loss_cell: LossCell, loss_scale: float):
        super().__init__(auto_prefix=False)
        self.loss_cell, self.loss_scale = loss_cell, loss_scale

    def construct(self, images, targets, draws):
        loss = self.loss_cell(images, targets, draws)
        return loss if self.loss_scale == 1.0 else loss * self.loss_scale


class TrainStep(nn.Cell):
    """One step: loss and gradients in one pass, the data-parallel mean over ranks (when launched by msrun), the
    loss scale undone, optional clipping of the global norm (after the mean, as torch DDP + DeiT), the AdamW
    update. Returns (loss, whether every gradient was finite), and with return_grads the averaged gradients too."""

    def __init__(self, loss_cell: LossCell, optimizer: AdamW, loss_scale: float = 1.0,
                 clip_grad: Optional[float] = None, world_size: int = 1, return_grads: bool = False):
        super().__init__(auto_prefix=False)
        self.return_grads = return_grads
        self.optimizer = optimizer
        self.weights = optimizer.params
        self.value_and_grad = ms.value_and_grad(_Scaled(loss_cell, loss_scale), None, self.weights)
        self.loss_scale, self.clip_grad = loss_scale, clip_grad
        self.reduce = world_size > 1
        if self.reduce:
            self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=world_size)

    def compile(self, *args, **kwargs):
        """MindSpore's compile, called before every run, compiles for arguments it has not seen; after a compile the
        heap the compiler freed goes back to the operating system (~100 MB of a DeiT step's peak memory, see
        ppt_common.heap)."""
        compiled = len(getattr(self, "compile_cache", ()))
        super().compile(*args, **kwargs)
        if len(getattr(self, "compile_cache", ())) != compiled:
            release_free_heap()

    def construct(self, images, targets, draws, decay_factor, step_size, bias_correction2_sqrt):
        loss, grads = self.value_and_grad(images, targets, draws)
        if self.reduce:
            grads = self.reducer(grads)
        if self.loss_scale != 1.0:
            loss = loss / self.loss_scale
            grads = tuple(g / self.loss_scale for g in grads)
        unclipped = grads
        if self.clip_grad is not None:
            grads = ops.clip_by_global_norm(grads, self.clip_grad)
        # the finite check is of the unclipped gradients: the optimizer does it (in its update's pass when fused)
        finite = self.optimizer(grads, decay_factor, step_size, bias_correction2_sqrt, unclipped)
        loss = ops.depend(loss, finite)
        if self.return_grads:
            return loss, finite, unclipped
        return loss, finite


def training_state(model: nn.Cell, optimizer: AdamW, ema: Optional[ModelEma]) -> list:
    """Every tensor of a training checkpoint: the model's parameters, then the EMA and the Adam moments."""
    params = list(model.get_parameters()) + list(optimizer.exp_avg) + list(optimizer.exp_avg_sq)
    if ema is not None:
        params += list(ema.ema)
    return [{"name": p.name, "data": p} for p in params]


def save_training_checkpoint(path: str, model: nn.Cell, optimizer: AdamW, ema: Optional[ModelEma],
                             meta: dict) -> None:
    """Write the checkpoint atomically: the previous one at `path` stays whole until the new one is complete."""
    from ppt_common.files import atomic_write
    entries = training_state(model, optimizer, ema)
    atomic_write(path, lambda tmp: ms.save_checkpoint(entries, tmp, append_dict=dict(meta)))


def load_training_state(path: str, optimizer: AdamW, ema: Optional[ModelEma]) -> Optional[dict]:
    """Restore the Adam moments and EMA of a training checkpoint (the model's weights are loaded by
    create_model); returns its scalars, or None when the file is plain weights (a fine-tune's start)."""
    from convert.io import TRAINING_SCALARS, load_mindspore_checkpoint
    from convert.mapping import CheckpointError
    if not path.endswith(".ckpt"):
        return None
    raw = load_mindspore_checkpoint(path)
    if "epoch" not in raw:
        return None
    for params in (optimizer.exp_avg, optimizer.exp_avg_sq) + ((ema.ema,) if ema is not None else ()):
        missing = [p.name for p in params if p.name not in raw]
        if missing:
            raise CheckpointError(f"{path}: a training checkpoint without '{missing[0]}' "
                                  f"({len(missing)} tensors missing): cannot resume exactly")
        for p in params:
            value = raw[p.name].asnumpy()
            if value.shape != tuple(p.shape):
                raise CheckpointError(f"{path}: '{p.name}' has shape {value.shape}, the model needs {tuple(p.shape)}")
            p.set_data(ms.Tensor(value, p.dtype))
    meta = {}
    for key, value in raw.items():
        if key in TRAINING_SCALARS:
            meta[key] = value if isinstance(value, str) else value.asnumpy().item()
    optimizer.num_steps = int(meta.get("optimizer_steps", 0))
    return meta

