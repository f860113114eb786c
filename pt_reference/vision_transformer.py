"""PPT patched into timm's VisionTransformer (read beside ms_ppt/vision_transformer.py).

`apply_ppt(model, ...)` swaps the classes of the model's attention and block modules, as ToMe and the authors do;
weights and state-dict keys are unchanged. Blocks that see no token sizes and reduce nothing run timm's own
forward, so r=0 (or no PP block) gives exactly timm's logits.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer

from ppt_common.config import PPTConfig, max_r
from ppt_common.proportional import log_size_table
from ppt_common.trace import BlockTrace
from pt_reference import ppt


class PPTAttention(Attention):
    """timm attention that adds the proportional-attention bias and also returns the importance scores and the
    merge metric (k averaged over heads), both without gradient."""

    def forward_ppt(self, x: torch.Tensor, log_size: Optional[torch.Tensor], num_prefix_tokens: int = 1):
        """log_size [B, N]: the tokens' log sizes (proportional attention), or None for no bias."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        bias = ppt.proportional_bias(log_size)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        with torch.no_grad():  # decisions only; taken on the attention before dropout
            scores = ppt.importance_scores(attn, v, num_prefix_tokens)
            metric = k.mean(dim=1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.proj_drop(self.proj(self.norm(x)))
        return x, scores, metric


class PPTBlock(Block):
    """A block that may reduce tokens between the attention residual and the MLP."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        info = self._ppt_info
        cfg: PPTConfig = info["config"]
        prefix = info["num_prefix_tokens"]
        r = info["r"].pop(0) if self._ppt_is_pp else 0
        r = max(0, min(r, max_r(x.shape[1], prefix)))
        log_size = info["log_size"] if cfg.prop_attn else None
        if r == 0 and log_size is None:
            return super().forward(x)
        x_attn, scores, metric = self.attn.forward_ppt(self.norm1(x), log_size, prefix)
        x = x + self.drop_path1(self.ls1(x_attn))
        if r > 0:
            # with prop_attn off every PP block merges with unit sizes (the authors' behaviour)
            unit = torch.ones_like(x[..., :1])
            merge_size = info["size"] if (cfg.prop_attn and info["size"] is not None) else unit
            x, info["size"], info["source"], plan = ppt.reduce_tokens(
                x, scores, metric, merge_size, r, cfg.policy_threshold_at(self._ppt_index), source=info["source"],
                num_prefix_tokens=prefix, method=cfg.method)
            if cfg.prop_attn:  # looked up once after each reduction, for the attention of every later block
                info["log_size"] = ppt.log_sizes(info["size"], info["log_table"])
            if info["want_trace"]:
                info["trace"].append(ppt.trace_record(self._ppt_index, r, plan, info["size"]))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PPTState:
    """Resets the per-forward PPT state; after a forward, `ppt_trace` and `ppt_source` hold what happened."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        info = self._ppt_info
        cfg: PPTConfig = info["config"]
        info["r"] = list(cfg.r_per_pp_block(len(self.blocks)))
        info["size"] = None
        info["log_size"] = None
        info["trace"] = []
        info["source"] = None
        if cfg.trace_source:
            n0 = self.patch_embed.num_patches + self.num_prefix_tokens
            info["source"] = ppt.initial_source(x.shape[0], n0, x)
        return self._ppt_timm_class.forward(self, x, *args, **kwargs)

    @property
    def ppt_trace(self) -> List[BlockTrace]:
        return self._ppt_info["trace"]

    @property
    def ppt_source(self) -> Optional[torch.Tensor]:
        """[B, N_final, N0] 0/1 map: which original tokens (CLS + patches) each final token holds."""
        return self._ppt_info["source"]

    @property
    def ppt_config(self) -> PPTConfig:
        return self._ppt_info["config"]


class PPTVisionTransformer(PPTState, VisionTransformer):
    _ppt_timm_class = VisionTransformer


class PPTVisionTransformerDistilled(PPTState, VisionTransformerDistilled):
    _ppt_timm_class = VisionTransformerDistilled


PPT_CLASSES = {VisionTransformer: PPTVisionTransformer, VisionTransformerDistilled: PPTVisionTransformerDistilled}


def check_supported(model) -> None:
    """Refuse models whose structure PPT (as specified) does not cover."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"apply_ppt needs a timm VisionTransformer, got {type(model).__name__}")
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("it has no class token")
    if getattr(model, "reg_token", None) is not None:
        problems.append("it has register tokens (PPT here protects the class and distillation tokens only)")
    elif getattr(model, "num_prefix_tokens", 1) != (2 if isinstance(model, VisionTransformerDistilled) else 1):
        problems.append(f"it has {model.num_prefix_tokens} prefix tokens; PPT here protects a class token and, in "
                        "a distilled DeiT, its distillation token")
    if getattr(model, "global_pool", "token") != "token" or getattr(model, "attn_pool", None) is not None:
        problems.append(f"it pools with '{model.global_pool}' instead of the class token")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, PPTBlock):
            problems.append(f"block {i} is a {type(blk).__name__}, not a standard pre-norm Block")
            break
        if type(blk.attn) not in (Attention, PPTAttention) or getattr(blk.attn, "gate", None) is not None:
            problems.append(f"block {i} attention is a {type(blk.attn).__name__} (only plain Attention is supported)")
            break
    if problems:
        raise ValueError("cannot apply PPT to this model: " + "; ".join(problems))


def apply_ppt(model: VisionTransformer, ppt_config: Optional[PPTConfig] = None, trace: bool = False,
              **settings) -> VisionTransformer:
    """Turn a timm ViT/DeiT into a PPT model in place (no new parameters) and return it. The settings are a
    PPTConfig or its fields as keywords (r, pp_loc_list, threshold, prop_attn, trace_source, method)."""
    check_supported(model)
    cfg = PPTConfig.from_settings(ppt_config, **settings)
    if cfg.pp_loc_list and cfg.pp_loc_list[-1] >= len(model.blocks):
        raise ValueError(f"pp_loc_list {list(cfg.pp_loc_list)} names a block beyond the model's "
                         f"{len(model.blocks)} blocks")
    timm_class = next(c for c in (VisionTransformerDistilled, VisionTransformer) if isinstance(model, c))
    model.__class__ = PPT_CLASSES[timm_class]
    model._ppt_info = {"config": cfg, "want_trace": trace, "r": [], "size": None, "log_size": None, "source": None,
                       "trace": [],
                       "num_prefix_tokens": model.num_prefix_tokens,
                       "log_table": torch.from_numpy(log_size_table(model.patch_embed.num_patches
                                                                    + model.num_prefix_tokens))}
    for i, blk in enumerate(model.blocks):
        blk.__class__ = PPTBlock
        blk.attn.__class__ = PPTAttention
        blk._ppt_info = model._ppt_info
        blk._ppt_index = i
        blk._ppt_is_pp = i in cfg.pp_loc_list
    return model


def set_trace(model: PPTVisionTransformer, enabled: bool) -> None:
    model._ppt_info["want_trace"] = enabled
