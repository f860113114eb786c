"""create_model for the PyTorch reference: a timm VisionTransformer built from the shared registry, patched."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional, Sequence

import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from ppt_common.config import (DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, MODEL_CONFIGS, ArchConfig,
                               RSpec, get_arch)
from pt_reference.vision_transformer import apply_ppt

SUPPORTED_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


def list_models():
    return sorted(MODEL_CONFIGS)


def build_timm_model(arch: ArchConfig) -> VisionTransformer:
    """timm's own model for the flags (VisionTransformerDistilled for two prefix tokens)."""
    model_class = VisionTransformerDistilled if arch.distilled else VisionTransformer
    return model_class(img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
                       num_classes=arch.num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
                       num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, qkv_bias=arch.qkv_bias,
                       init_values=arch.init_values, no_embed_class=arch.no_embed_class, pre_norm=arch.pre_norm,
                       norm_layer=partial(torch.nn.LayerNorm, eps=arch.norm_eps), act_layer=arch.act)


def create_model(name: str, checkpoint: Optional[str] = None, r: RSpec = DEFAULT_R,
                 pp_loc_list: Sequence[int] = DEFAULT_PP_LOC_LIST, threshold: float = DEFAULT_THRESHOLD,
                 prop_attn: bool = True, trace_source: bool = False, trace: bool = False, dtype="float32",
                 num_classes: Optional[int] = None) -> VisionTransformer:
    """The reference twin of ms_ppt.create_model (same arguments, same checkpoints)."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype '{dtype}'; choose from {', '.join(SUPPORTED_DTYPES)}")
    arch = get_arch(name)
    state = None
    if checkpoint:
        from convert import load_checked
        _, arch, state = load_checked(checkpoint, name)
    if num_classes is not None and num_classes != arch.num_classes:
        if state is not None:
            raise ValueError(f"num_classes={num_classes} but the checkpoint's head has {arch.num_classes} classes")
        arch = dataclasses.replace(arch, num_classes=num_classes)
    model = build_timm_model(arch)
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    apply_ppt(model, r=r, pp_loc_list=pp_loc_list, threshold=threshold, prop_attn=prop_attn,
              trace_source=trace_source, trace=trace)
    return model.to(SUPPORTED_DTYPES[dtype]).eval()
