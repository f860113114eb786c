"""DeiT/ViT with PPT in MindSpore (read beside pt_reference/vision_transformer.py).

Parameter names are timm's dotted names (`blocks.0.attn.qkv.weight`, ...), so checkpoints map one to one.
The token schedule is static (see ppt_common.config.arch_schedule): every block knows at construction how many
tokens it sees and how many it removes, which is what lets the graph compile with fixed shapes.
"""
from typing import List, Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from ppt_common.config import SINGLE_RULE_METHODS, ArchConfig, BlockPlan, PPTConfig, arch_schedule
from ppt_common.proportional import log_size_table
from ms_ppt import ppt
from ms_ppt.kernels import GRAPH_OPS, Kernels
from ms_ppt.kernels.cells import FusedReduction
from ms_ppt.layers import (GELU, Attention, DropPath, LayerNorm, LayerScale, Mlp, PatchEmbed, accum_dtype,
                           broadcast_add)

# float16 runs matmuls in float16; softmax, scores, variance, similarity and LayerNorm run in float32.
SUPPORTED_DTYPES = {"float32": ms.float32, "float64": ms.float64, "float16": ms.float16}


class TokenReduction(nn.Cell):
    """The reduction of a PP block: importance scores, merge metric (k averaged over heads) and
    ppt.reduce_tokens as graph ops, or, for PPT's policies in float32 on CPU, one compiled kernel
    (kernels/ppt_reduce_cpu.cc) taking the same decisions in one op instead of ~75, for only the policy each image
    takes. The graph ops stay the reference: float64, float16, other backends, MindIR export and the single-rule
    methods (prune_fuse, decouple_merge) use them. `threshold` is PPTConfig.policy_threshold_at(this block)."""

    def __init__(self, r: int, threshold: float, num_prefix_tokens: int = 1, method: str = "ppt",
                 kernels: Kernels = GRAPH_OPS):
        super().__init__()
        self.r = r
        self.threshold = threshold
        self.num_prefix_tokens = num_prefix_tokens
        self.method = method
        self.threshold_tensor = Tensor([threshold], ms.float32)
        # the fused kernel takes PPT's two policies and protects the class token only
        ppt_policies = method not in SINGLE_RULE_METHODS
        op = kernels.ppt_reduce(r) if num_prefix_tokens == 1 and ppt_policies else None
        self.kernel = FusedReduction(op) if op is not None else None
        self.fused = self.kernel is not None

    def unfuse(self) -> None:
        self.kernel = None
        self.fused = False

    def construct(self, x, attn, v, k, size, source):
        """(x, size, source, (plan, sizes)): decide, then apply; the fused kernel does both in one op."""
        if self.fused:
            x, size, dest, policy, variance, scores, node_max = self.kernel(x, attn, v, k, size, self.threshold_tensor)
            plan = (policy, variance, scores, node_max, dest)  # a ReductionPlan
            if source is not None:
                source = ppt.apply_to_source(plan, source, self.r)
            return x, size, source, (plan, size)
        attn, v, k = ops.stop_gradient(attn), ops.stop_gradient(v), ops.stop_gradient(k)  # decisions only
        scores = ppt.importance_scores(attn, v, self.num_prefix_tokens)
        x, size, source, plan = ppt.reduce_tokens(x, scores, k.mean(1), size, self.r, self.threshold, source,
                                                  self.num_prefix_tokens, self.method)
        return x, size, source, (plan, size)


class Block(nn.Cell):
    """Pre-norm block; a PP block reduces tokens between the attention residual and the MLP."""

    def __init__(self, arch: ArchConfig, plan: BlockPlan, ppt_cfg: PPTConfig, use_size: bool, trace: bool,
                 kernels: Kernels, drop_path: float = 0.0):
        super().__init__()
        dim = arch.embed_dim
        self.reduces = plan.r > 0
        self.merge_with_sizes = ppt_cfg.prop_attn  # with prop_attn off every PP block merges with unit sizes
        self.trace = trace
        self.trace_source = ppt_cfg.trace_source
        self.norm1 = LayerNorm(dim, arch.norm_eps, kernels)
        self.attn = Attention(dim, arch.num_heads, arch.qkv_bias, use_size=use_size, with_scores=self.reduces,
                              attn_drop=arch.attn_drop_rate, proj_drop=arch.proj_drop_rate,
                              kernels=kernels)
        self.layer_scale = arch.init_values is not None
        if self.layer_scale:
            self.ls1 = LayerScale(dim, arch.init_values)
            self.ls2 = LayerScale(dim, arch.init_values)
        self.norm2 = LayerNorm(dim, arch.norm_eps, kernels)
        self.mlp = Mlp(dim, arch.mlp_hidden, arch.act, arch.proj_drop_rate, kernels)
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)
        if self.reduces:
            self.reduction = TokenReduction(plan.r, ppt_cfg.policy_threshold_at(plan.index), arch.num_prefix_tokens, ppt_cfg.method,
                                            kernels)

    def branch1(self, x, draws):
        return self.drop_path1(self.ls1(x) if self.layer_scale else x, None if draws is None else draws[0])

    def branch2(self, x, draws):
        return self.drop_path2(self.ls2(x) if self.layer_scale else x, None if draws is None else draws[1])

    def construct(self, x, size, log_size, source, draws=None):
        record = ()
        if self.reduces:
            x_attn, attn, v, k = self.attn(self.norm1(x), log_size)
            x = x + self.branch1(x_attn, draws)
            if not self.merge_with_sizes:
                size = ops.ones_like(size)
            if self.trace_source:
                x, size, source, block_record = self.reduction(x, attn, v, k, size, source)
            else:
                x, size, _, block_record = self.reduction(x, attn, v, k, size, None)
            if self.trace:
                record = (block_record,)
        else:
            x = x + self.branch1(self.attn(self.norm1(x), log_size), draws)
        x = x + self.branch2(self.mlp(self.norm2(x)), draws)
        return x, size, source, record


class VisionTransformer(nn.Cell):
    """ViT/DeiT classifier with PPT, built from an ArchConfig's flags as timm's VisionTransformer. `construct(images)`
    returns logits; with trace on (logits, records), plus the source map with trace_source."""

    def __init__(self, arch: ArchConfig, ppt_cfg: Optional[PPTConfig] = None, trace: bool = False,
                 custom_kernels: Optional[bool] = None):
        super().__init__()
        ppt_cfg = ppt_cfg if ppt_cfg is not None else PPTConfig(r=0, pp_loc_list=())
        self.arch = arch
        self.ppt_config = ppt_cfg
        self.plans: List[BlockPlan] = arch_schedule(arch, ppt_cfg)
        self.trace = trace
        self.trace_source = ppt_cfg.trace_source
        self.distilled = arch.distilled
        self.no_embed_class = arch.no_embed_class
        self.pre_norm = arch.pre_norm
        dim = arch.embed_dim
        kernels = Kernels.choose(custom_kernels)  # the compiled CPU kernels for every layer (None: on the CPU)
        self.patch_embed = PatchEmbed(arch.img_size, arch.patch_size, arch.in_chans, dim, bias=arch.patch_bias,
                                      kernels=kernels)
        self.cls_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, dim), ms.float32), name="cls_token")
        if self.distilled:
            self.dist_token = Parameter(initializer(TruncatedNormal(0.02), (1, 1, dim), ms.float32),
                                        name="dist_token")
        self.pos_embed = Parameter(initializer(TruncatedNormal(0.02), (1, arch.pos_embed_tokens, dim), ms.float32),
                                   name="pos_embed")
        self.pos_drop = nn.Dropout(p=arch.pos_drop_rate)
        if self.pre_norm:
            self.norm_pre = LayerNorm(dim, arch.norm_eps, kernels)
        blocks, reduced, self.log_table = [], False, None
        for plan, drop_path in zip(self.plans, arch.drop_path_rates):
            # proportional attention needs sizes only once some earlier block has reduced (log 1 = 0 before)
            blocks.append(Block(arch, plan, ppt_cfg, use_size=ppt_cfg.prop_attn and reduced, trace=trace,
                                kernels=kernels, drop_path=drop_path))
            reduced = reduced or plan.r > 0
        self.blocks = nn.CellList(blocks)
        if ppt_cfg.prop_attn and reduced:
            self.set_log_table(ms.float32)
        self.norm = LayerNorm(dim, arch.norm_eps, kernels)
        self.head_drop = nn.Dropout(p=arch.drop_rate)
        self.has_head = arch.num_classes > 0  # 0: no head, forward_head gives the pooled features (timm)
        if self.has_head:
            self.head = _classifier(dim, arch.num_classes)
            if self.distilled:
                self.head_dist = _classifier(dim, arch.num_classes)

    @property
    def pp_blocks(self) -> List[BlockPlan]:
        return [p for p in self.plans if p.r > 0]

    def _pos_embed(self, x):
        """Prefix tokens (class, distillation) joined to the patches, with the position embedding: added after
        joining, or (no_embed_class, DeiT-III) to the patches before joining."""
        B, _, C = x.shape
        prefix = ops.broadcast_to(self.cls_token, (B, 1, C))
        if self.distilled:
            prefix = ops.concat([prefix, ops.broadcast_to(self.dist_token, (B, 1, C))], 1)
        if self.no_embed_class:
            return self.pos_drop(ops.concat([prefix, broadcast_add(x, self.pos_embed)], 1))
        return self.pos_drop(broadcast_add(ops.concat([prefix, x], 1), self.pos_embed))

    def forward_features(self, x, drop_path_draws=None):
        x = self._pos_embed(self.patch_embed(x.astype(self.cls_token.dtype)))
        if self.pre_norm:
            x = self.norm_pre(x)
        B = x.shape[0]
        size = ops.ones((B, x.shape[1], 1), accum_dtype(x.dtype))
        log_size = None  # looked up once after each reduction, for the attention of every later block
        source = ppt.initial_source(B, x.shape[1], x) if self.trace_source else None
        records = ()
        i = 0
        for blk in self.blocks:
            draws = None if drop_path_draws is None else drop_path_draws[i]
            x, size, source, record = blk(x, size, log_size, source, draws)
            if blk.reduces and self.log_table is not None:
                log_size = ppt.log_sizes(size, self.log_table)
            records = records + record
            i += 1
        return self.norm(x), records, source

    def forward_head(self, x):
        """The class token's logits; distilled DeiT averages them with the distillation token's (as timm, which
        has no head dropout there). Without a head (num_classes=0), the same pooling of the features."""
        if self.distilled:
            if not self.has_head:
                return (x[:, 0] + x[:, 1]) / 2
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        x = self.head_drop(x[:, 0])
        return self.head(x) if self.has_head else x

    def construct(self, x, drop_path_draws=None):
        """drop_path_draws: [depth, 2, B] uniform draws deciding stochastic depth in training (see DropPath)."""
        x, records, source = self.forward_features(x, drop_path_draws)
        logits = self.forward_head(x)
        if self.trace and self.trace_source:
            return logits, records, source
        if self.trace:  # no None output: with a Custom op in the graph, MindSpore 2.10 fails to infer it
            return logits, records
        return logits

    def to_dtype(self, dtype) -> "VisionTransformer":
        """Cast every parameter (float16 keeps LayerNorm's internal maths in float32)."""
        for p in self.get_parameters():
            p.set_dtype(dtype)
        if self.log_table is not None:
            self.set_log_table(dtype)
        if dtype != ms.float32:
            self.drop_fast_kernels()
        return self

    def set_log_table(self, dtype) -> None:
        """Proportional attention's log-size table (ppt_common.proportional) in the attention's dtype (float32 for
        float16 models), rounded once from float64."""
        table = log_size_table(self.arch.num_tokens)
        self.log_table = Tensor(table.astype(ms.dtype_to_nptype(accum_dtype(dtype))))

    def drop_fast_kernels(self) -> "VisionTransformer":
        """Use graph ops instead of the float32-only compiled CPU kernels: for float16/float64 models, and for
        mixed precision (auto_mixed_precision feeds the cells float16). The swap kernel stays: it copies any dtype."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, (Attention, GELU, LayerNorm, Mlp, TokenReduction)):
                cell.unfuse()
        return self


def _classifier(dim: int, num_classes: int) -> nn.Dense:
    """A head initialised as timm's (trunc_normal std 0.02, zero bias), e.g. a new head on a pretrained backbone."""
    return nn.Dense(dim, num_classes, weight_init=TruncatedNormal(0.02), bias_init="zeros")


def params_from_numpy(model: nn.Cell, state: dict, strict: bool = True) -> None:
    """Assign numpy arrays by dotted name; strict checks names and shapes both ways."""
    params = {p.name: p for p in model.get_parameters()}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    mis_shaped = sorted(k for k in set(params) & set(state) if tuple(params[k].shape) != tuple(np.shape(state[k])))
    if strict and (missing or unexpected or mis_shaped):
        from convert.mapping import CheckpointError, describe_mismatch
        raise CheckpointError(describe_mismatch(missing, unexpected,
                                                [f"{k}: {tuple(np.shape(state[k]))} vs {tuple(params[k].shape)}"
                                                 for k in mis_shaped]))
    for k, p in params.items():
        if k in state:
            p.set_data(Tensor(np.asarray(state[k]), p.dtype))
