"""Which architecture a state dict holds, and a strict check that it fits one.

Parameter names are timm's on both sides (the MindSpore cells use the same dotted names), so conversion maps each
name to itself; what this module adds is certainty that every parameter is present once with the right shape.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from ppt_common.config import MODEL_CONFIGS, ArchConfig, get_arch
from convert.io import CheckpointError, StateDict

HEAD_DIM = 64  # heads are not visible in the weights; every DeiT/ViT config uses 64-wide heads


def expected_shapes(arch: ArchConfig) -> Dict[str, Tuple[int, ...]]:
    C, P, hidden = arch.embed_dim, arch.patch_size, arch.mlp_hidden
    shapes = {
        "cls_token": (1, 1, C),
        "pos_embed": (1, arch.num_tokens, C),
        "patch_embed.proj.weight": (C, arch.in_chans, P, P),
        "patch_embed.proj.bias": (C,),
    }
    for i in range(arch.depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (C,), b + "norm1.bias": (C,),
            b + "attn.qkv.weight": (3 * C, C), b + "attn.qkv.bias": (3 * C,),
            b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
            b + "norm2.weight": (C,), b + "norm2.bias": (C,),
            b + "mlp.fc1.weight": (hidden, C), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (C, hidden), b + "mlp.fc2.bias": (C,),
        })
    shapes.update({"norm.weight": (C,), "norm.bias": (C,),
                   "head.weight": (arch.num_classes, C), "head.bias": (arch.num_classes,)})
    return shapes


def infer_arch(state: StateDict) -> Tuple[Optional[str], ArchConfig]:
    """Depth, width, heads (64-wide), patch, image size and classes from the tensors; the registry name if any."""
    if "dist_token" in state or "head_dist.weight" in state:
        raise CheckpointError("checkpoint is a distilled DeiT (dist_token/head_dist): not supported by PPT here")
    for key in ("pos_embed", "patch_embed.proj.weight", "head.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise CheckpointError(f"cannot infer the architecture: key '{key}' is missing "
                                  f"(is this a ViT/DeiT checkpoint? first keys: {', '.join(list(state)[:5])})")
    C, in_chans, P, _ = state["patch_embed.proj.weight"].shape
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    if grid * grid + 1 != state["pos_embed"].shape[1]:
        raise CheckpointError(f"pos_embed has {state['pos_embed'].shape[1]} tokens: not a square grid plus CLS")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    arch = ArchConfig(img_size=grid * P, patch_size=P, embed_dim=C, depth=max(blocks) + 1 if blocks else 0,
                      num_heads=max(C // HEAD_DIM, 1), mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / C,
                      qkv_bias="blocks.0.attn.qkv.bias" in state, num_classes=state["head.weight"].shape[0],
                      in_chans=in_chans)
    names = [n for n, a in MODEL_CONFIGS.items() if a == arch]
    return (sorted(names)[0] if names else None), arch


def check_state(state: StateDict, arch: ArchConfig) -> None:
    """Every parameter exactly once with the right shape; all problems listed by name in one error."""
    want = expected_shapes(arch)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {want[k]}" for k in sorted(set(want) & set(state))
             if tuple(state[k].shape) != want[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(describe_mismatch(missing, unexpected, wrong))


def describe_mismatch(missing, unexpected, wrong) -> str:
    """One message naming every missing, unexpected and mis-shaped key."""
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes ({len(wrong)}; checkpoint vs model): {', '.join(wrong)}")
    return "checkpoint does not match the model: " + "; ".join(parts)


def resolve_arch(state: StateDict, model: Optional[str] = None) -> Tuple[str, ArchConfig]:
    """The architecture to convert for: --model if given (and it must fit), else inferred."""
    inferred_name, inferred = infer_arch(state)
    if model is None:
        return inferred_name or "custom", inferred
    arch = get_arch(model)
    if arch.num_classes != inferred.num_classes:
        arch = ArchConfig(**{**arch.__dict__, "num_classes": inferred.num_classes})
    return model, arch
