"""Which architecture a state dict holds, and a strict check that it fits one.

Parameter names are timm's on both sides (the MindSpore cells use the same dotted names), so conversion maps each
name to itself; what this module adds is certainty that every parameter is present once with the right shape.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from typing import Dict, Optional, Tuple

from ppt_common.config import MODEL_CONFIGS, TRAINING_FLAGS, ArchConfig, get_arch
from convert.io import CheckpointError, StateDict

HEAD_DIM = 64  # heads are not visible in the weights; every DeiT/ViT config uses 64-wide heads
HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")  # the classifier(s)


def expected_shapes(arch: ArchConfig) -> Dict[str, Tuple[int, ...]]:
    """timm's parameter names and shapes for the architecture its flags describe."""
    C, P, hidden = arch.embed_dim, arch.patch_size, arch.mlp_hidden
    shapes = {"cls_token": (1, 1, C)}
    if arch.distilled:
        shapes["dist_token"] = (1, 1, C)
    shapes["pos_embed"] = (1, arch.pos_embed_tokens, C)
    shapes["patch_embed.proj.weight"] = (C, arch.in_chans, P, P)
    if arch.patch_bias:
        shapes["patch_embed.proj.bias"] = (C,)
    if arch.pre_norm:
        shapes.update({"norm_pre.weight": (C,), "norm_pre.bias": (C,)})
    for i in range(arch.depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (C,), b + "norm1.bias": (C,), b + "attn.qkv.weight": (3 * C, C)})
        if arch.qkv_bias:
            shapes[b + "attn.qkv.bias"] = (3 * C,)
        shapes.update({b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,)})
        if arch.init_values is not None:
            shapes.update({b + "ls1.gamma": (C,), b + "ls2.gamma": (C,)})
        shapes.update({
            b + "norm2.weight": (C,), b + "norm2.bias": (C,),
            b + "mlp.fc1.weight": (hidden, C), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (C, hidden), b + "mlp.fc2.bias": (C,),
        })
    shapes.update({"norm.weight": (C,), "norm.bias": (C,),
                   "head.weight": (arch.num_classes, C), "head.bias": (arch.num_classes,)})
    if arch.distilled:
        shapes.update({"head_dist.weight": (arch.num_classes, C), "head_dist.bias": (arch.num_classes,)})
    if not arch.num_classes:  # timm's num_classes=0: no head, the model returns its pooled features
        shapes = {k: v for k, v in shapes.items() if k not in HEAD_KEYS}
    return shapes


# The official DeiT-III release (models_v2.py) names LayerScale gamma_1/gamma_2; timm names it ls1/ls2.gamma.
_OFFICIAL_KEYS = [(re.compile(r"^(blocks\.\d+\.)gamma_([12])$"), r"\1ls\2.gamma")]


def timm_names(state: StateDict) -> StateDict:
    """The state dict with official release names mapped to timm's (other names unchanged)."""
    out = {}
    for k, v in state.items():
        for pattern, replacement in _OFFICIAL_KEYS:
            k = pattern.sub(replacement, k)
        out[k] = v
    return out


def infer_arch(state: StateDict) -> Tuple[Optional[str], ArchConfig]:
    """The flags, depth, width, heads (64-wide), patch, image size and classes from the tensors; the registry name
    if any. Norm epsilon and activation leave no trace in the weights: pre-norm towers are taken as CLIP's (1e-5,
    GELU); pass the model name for quick-GELU ones."""
    for key in ("pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise CheckpointError(f"cannot infer the architecture: key '{key}' is missing "
                                  f"(is this a ViT/DeiT checkpoint? first keys: {', '.join(list(state)[:5])})")
    if "reg_token" in state:
        raise CheckpointError("checkpoint has register tokens (reg_token): PPT here protects class and "
                              "distillation tokens only")
    C, in_chans, P, _ = state["patch_embed.proj.weight"].shape
    prefix = 2 if "dist_token" in state else 1
    pos_tokens = state["pos_embed"].shape[1]
    grid = int(round((pos_tokens - prefix) ** 0.5))
    no_embed_class = False
    if grid * grid + prefix != pos_tokens:
        grid = int(round(pos_tokens ** 0.5))
        no_embed_class = True
        if grid * grid != pos_tokens:
            raise CheckpointError(f"pos_embed has {pos_tokens} tokens: not a square grid (plus prefix tokens)")
    pre_norm = "norm_pre.weight" in state
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    arch = ArchConfig(img_size=grid * P, patch_size=P, embed_dim=C, depth=max(blocks) + 1 if blocks else 0,
                      num_heads=max(C // HEAD_DIM, 1), mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / C,
                      qkv_bias="blocks.0.attn.qkv.bias" in state,
                      num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
                      in_chans=in_chans, num_prefix_tokens=prefix, no_embed_class=no_embed_class,
                      init_values=1e-6 if "blocks.0.ls1.gamma" in state else None, pre_norm=pre_norm,
                      norm_eps=1e-5 if pre_norm else 1e-6)
    names = [n for n, a in MODEL_CONFIGS.items() if dataclasses.replace(a, num_classes=arch.num_classes) == arch]
    return (sorted(names)[0] if names else None), arch


def check_state(state: StateDict, arch: ArchConfig, model: Optional[str] = None) -> None:
    """Every parameter exactly once with the right shape, and finite; all problems in one (bounded) error."""
    want = expected_shapes(arch)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {want[k]}" for k in sorted(set(want) & set(state))
             if tuple(state[k].shape) != want[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(describe_mismatch(missing, unexpected, wrong, model=model,
                                                likely=_likely_architecture(state, arch)))
    not_finite = [k for k, v in state.items() if not np.isfinite(v).all()]
    if not_finite:
        raise CheckpointError(f"checkpoint holds NaN or infinite values in {len(not_finite)} tensor(s): "
                              f"{_first(not_finite)}; its predictions would be meaningless")


def _first(names, shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def _likely_architecture(state: StateDict, target: ArchConfig) -> Optional[str]:
    """The registry name (or a description) of what the tensors hold, when it is not `target`."""
    try:
        name, arch = infer_arch(state)
    except CheckpointError:
        return None
    if arch == target:
        return None
    return name or (f"a ViT with width {arch.embed_dim}, depth {arch.depth}, patch {arch.patch_size}, "
                    f"image size {arch.img_size}")


def describe_mismatch(missing, unexpected, wrong, model: Optional[str] = None, likely: Optional[str] = None) -> str:
    """One message with the count and the first few names of each kind of problem, and what the checkpoint
    looks like instead."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} tensors of the wrong shape, checkpoint vs model ({_first(wrong, 3)})")
    target = f"the model {model}" if model else "the model"
    message = f"checkpoint does not match {target}: " + "; ".join(parts)
    if likely:
        message += f". Its tensors look like {likely}"
    return message


def resolve_arch(state: StateDict, model: Optional[str] = None) -> Tuple[str, ArchConfig]:
    """The architecture the tensors hold: the model's if given (everything must fit but the head's classes and the
    position embedding's grid, which are the checkpoint's), else inferred."""
    inferred_name, inferred = infer_arch(state)
    if model is None:
        return inferred_name or "custom", inferred
    return model, dataclasses.replace(get_arch(model), num_classes=inferred.num_classes, img_size=inferred.img_size)


# ---- checkpoints that describe their architecture (a Hugging Face config.json, a converted file's record) --------

_DESCRIBED_VALUES = ("norm_eps", "act", "num_classes")  # what a description may change in a registered architecture


def arch_record(arch: ArchConfig) -> dict:
    """The architecture's fields (not timm's training flags), as a converted file records them."""
    return {f.name: getattr(arch, f.name) for f in dataclasses.fields(ArchConfig) if f.name not in TRAINING_FLAGS}


def arch_from_record(record: dict, source: str) -> ArchConfig:
    try:
        return ArchConfig(**record)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: its architecture record is not one this version reads ({e})") from None


def registered_name(arch: ArchConfig) -> Optional[str]:
    """The registry name of the same network up to norm eps, activation and classes (the hub's DeiT folders carry
    1e-12 where timm's DeiT has 1e-6)."""
    names = [n for n, a in MODEL_CONFIGS.items()
             if dataclasses.replace(a, **{k: getattr(arch, k) for k in _DESCRIBED_VALUES}) == arch]
    return sorted(names)[0] if names else None


def check_matches(described: ArchConfig, target: ArchConfig, source: str, what: str = "the model",
                  ignore: Tuple[str, ...] = ()) -> None:
    """Refuse, naming each field, a description of another network than target (timm's training flags aside)."""
    fields = [f.name for f in dataclasses.fields(ArchConfig) if f.name not in TRAINING_FLAGS and f.name not in ignore]
    differ = [f"{f} {getattr(described, f)} vs {getattr(target, f)}" for f in fields
              if getattr(described, f) != getattr(target, f)]
    if differ:
        raise CheckpointError(f"{source} describes another network than {what} (checkpoint vs model: "
                              f"{'; '.join(differ)})")


def resolve_described(state: StateDict, described: ArchConfig, model: Optional[str], source: str
                      ) -> Tuple[str, ArchConfig]:
    """resolve_arch + check_state for a checkpoint that describes its architecture: under a name, the shapes must
    fit it and the description's norm eps, activation, classes and image size replace the name's; anything else that differs
    (heads, which leave no trace in the shapes) is refused by name."""
    if model is None:
        check_state(state, described)
        return registered_name(described) or "custom", described
    named = get_arch(model)
    kept = _DESCRIBED_VALUES + ("img_size",)  # the grid is resampled on load (convert.resolve_model)
    check_state(state, dataclasses.replace(named, num_classes=described.num_classes, img_size=described.img_size),
                model)
    check_matches(described, named, source, f"the model {model}", ignore=kept)
    return model, dataclasses.replace(named, **{k: getattr(described, k) for k in kept})
