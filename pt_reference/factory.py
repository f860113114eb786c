"""create_model for the PyTorch reference: a timm VisionTransformer built from the shared registry, patched."""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from ppt_common.schedule import config_from_settings
from ppt_common.config import MODEL_CONFIGS, ArchConfig, PPTConfig, RSpec
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
                       norm_layer=partial(torch.nn.LayerNorm, eps=arch.norm_eps), act_layer=arch.act,
                       drop_rate=arch.drop_rate, pos_drop_rate=arch.pos_drop_rate, proj_drop_rate=arch.proj_drop_rate,
                       attn_drop_rate=arch.attn_drop_rate, drop_path_rate=arch.drop_path_rate)


def create_model(name: Optional[str] = None, checkpoint: Optional[str] = None, pretrained: bool = False,
                 ppt_config: Optional[PPTConfig] = None, r: Optional[RSpec] = None,
                 pp_loc_list: Optional[Sequence[int]] = None, threshold: Optional[float] = None,
                 prop_attn: Optional[bool] = None, trace_source: Optional[bool] = None,
                 method: Optional[str] = None, schedule=None,
                 trace: bool = False,
                 dtype="float32", num_classes: Optional[int] = None, img_size: Optional[int] = None,
                 ema: bool = False,
                 **training_flags) -> VisionTransformer:
    """The reference twin of ms_ppt.create_model (same arguments, same checkpoints)."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype '{dtype}'; choose from {', '.join(SUPPORTED_DTYPES)}")
    ppt_config = config_from_settings(name, schedule, ppt_config, img_size, r=r, pp_loc_list=pp_loc_list,
                                      threshold=threshold, prop_attn=prop_attn, trace_source=trace_source,
                                      method=method)
    from convert import new_head, resolve_model
    arch, state = resolve_model(name, checkpoint, num_classes, pretrained, img_size, ema, **training_flags)
    model = build_timm_model(arch)
    if state is not None:
        tensors = {k: torch.from_numpy(v) for k, v in state.items()}
        if new_head(arch, state):  # timm's own initialisation of the head
            tensors.update({k: v for k, v in model.state_dict().items() if k.startswith("head")})
        model.load_state_dict(tensors, strict=True)
    apply_ppt(model, ppt_config, trace=trace)
    return model.to(SUPPORTED_DTYPES[dtype]).eval()


def run_with_trace(model: VisionTransformer, images: np.ndarray):
    """Run a model built with trace=True: (logits [B, classes], traces, source [B, N, N0] or None), as NumPy."""
    if not model._ppt_info["want_trace"]:
        raise ValueError("run_with_trace needs a model created with trace=True")
    weight = next(model.parameters())
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(images)).to(weight.device, weight.dtype))
    source = model.ppt_source.cpu().numpy() if model.ppt_config.trace_source else None
    return logits.cpu().numpy(), list(model.ppt_trace), source
