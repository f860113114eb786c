"""Training pieces of the PyTorch reference, as DeiT's main.py builds them with timm: AdamW with timm's
weight-decay groups, the smoothed cross entropy, one training step. Mirrors ms_ppt/training.py, and is what the
cross-framework training parity compares against."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ppt_common.training import decays


def build_optimizer(model: torch.nn.Module, lr: float = 0.0, betas: Tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """timm's create_optimizer for DeiT: torch's AdamW, one group decayed and one not (ppt_common.training's
    rule, timm's param_groups_weight_decay)."""
    decayed, undecayed = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decayed if decays(name, p.ndim) else undecayed).append(p)
    return torch.optim.AdamW([{"params": undecayed, "weight_decay": 0.0},
                              {"params": decayed, "weight_decay": weight_decay}], lr=lr, betas=betas, eps=eps)


def build_loss(smoothing: float) -> torch.nn.Module:
    """Cross entropy on soft (mixed) or hard targets, with label smoothing: DeiT's SoftTargetCrossEntropy on
    targets Mixup smoothed, or its LabelSmoothingCrossEntropy without mixup."""
    return torch.nn.CrossEntropyLoss(label_smoothing=smoothing)


class TrainStep:
    """One step, as DeiT's train_one_epoch without AMP: the loss, its gradients, optional clipping of the global
    norm, the AdamW update at `lr`. Returns (loss, gradients by parameter name before the update)."""

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 clip_grad: Optional[float] = None):
        self.model, self.loss_fn, self.optimizer, self.clip_grad = model, loss_fn, optimizer, clip_grad

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, lr: float) -> Tuple[float, Dict[str, torch.Tensor]]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(images), targets)
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in self.model.named_parameters() if p.grad is not None}
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        return loss.item(), grads
