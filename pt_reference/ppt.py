"""PPT token operations in PyTorch, as small pure functions (read beside ms_ppt/ppt.py: the same names in the
same order where both have the step; the decisions here are in the authors' index form, ms_ppt's in dest maps).

This follows the authors' published code: the batch is split into a pooling and a pruning sub-batch, pruning
gathers the top-scored tokens, pooling is ToMe's bipartite soft matching with a size-weighted mean. Deviations
(see docs/ppt-spec.md): stable ordering among equal keys, and source maps that stay correct in mixed batches.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ppt_common.config import SINGLE_RULE_METHODS
from ppt_common.plan import CLS_SCORE, DECOUPLE_MERGE, PRUNE_FUSE
from ppt_common.trace import BlockTrace, record_from_plan


def importance_scores(attn: torch.Tensor, v: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """[B, N]: CLS attention summed over heads times ||v_j||, normalised over the patches; every prefix token
    (class, distillation) scores 2.0."""
    B, H, N, d = v.shape
    v_norm = torch.linalg.norm(v.transpose(1, 2).reshape(B, N, H * d), ord=2, dim=-1)
    s = (attn[:, :, 0].sum(dim=1) * v_norm)[:, num_prefix_tokens:]
    s = s / s.sum(dim=-1, keepdim=True)
    return torch.cat([torch.full_like(s[:, :num_prefix_tokens], CLS_SCORE), s], dim=-1)


def score_variance(scores: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Unbiased (ddof=1) variance of the patch scores, per image [B]."""
    return torch.var(scores[:, num_prefix_tokens:], dim=-1, correction=1)


def pool_policy(variance: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where the image pools (flat importance), False where it prunes."""
    return variance < threshold


def prune_indices(scores: torch.Tensor, r: int) -> torch.Tensor:
    """Kept token positions [B, N-r], by descending score; equal scores keep ascending position (stable)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :scores.shape[1] - r]


def kept_dest(keep: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """dest map [B, N] of kept positions: the k-th kept token goes to slot k, the others are dropped (-1)."""
    dest = torch.full((keep.shape[0], num_tokens), -1, dtype=torch.long, device=keep.device)
    return dest.scatter_(1, keep, torch.arange(keep.shape[1], device=keep.device).expand_as(keep).contiguous())


class Matching(NamedTuple):
    src_idx: torch.Tensor  # [B, r] merged A indices (in edge order)
    dst_idx: torch.Tensor  # [B, r] their B partners
    unm_idx: torch.Tensor  # [B, NA-r] unmerged A indices, ascending (CLS first)
    node_max: torch.Tensor  # [B, NA]


def bipartite_matching(metric: torch.Tensor, r: int, num_prefix_tokens: int = 1) -> Matching:
    """ToMe bipartite soft matching: A = even positions, B = odd; CLS (A[0]) is never merged and, as in ToMe,
    nothing merges into the distillation token (B[0])."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    sim = a @ b.transpose(-1, -2)
    sim[:, 0, :] = -math.inf
    if num_prefix_tokens > 1:
        sim[:, :, 0] = -math.inf
    node_max = sim.amax(dim=-1)
    node_idx = sim.argmax(dim=-1)  # first maximal index
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)
    src_idx = edge_idx[:, :r]
    unm_idx = edge_idx[:, r:].sort(dim=-1).values
    dst_idx = node_idx.gather(-1, src_idx)
    return Matching(src_idx, dst_idx, unm_idx, node_max)


def matching_dest(m: Matching, num_tokens: int) -> torch.Tensor:
    """dest map [B, N] of a matching, in merge's output order: unmerged A tokens, then the B tokens."""
    num_a, r = m.node_max.shape[1], m.src_idx.shape[1]
    first_b_slot = num_a - r
    dest_a = torch.empty_like(m.node_max, dtype=torch.long)
    dest_a.scatter_(1, m.unm_idx, torch.arange(first_b_slot, device=dest_a.device).expand_as(m.unm_idx).contiguous())
    dest_a.scatter_(1, m.src_idx, first_b_slot + m.dst_idx)
    dest = torch.empty(dest_a.shape[0], num_tokens, dtype=torch.long, device=dest_a.device)
    dest[:, ::2] = dest_a
    dest[:, 1::2] = first_b_slot + torch.arange(num_tokens // 2, device=dest.device)
    return dest


class PlanIndices(NamedTuple):
    """The authors' index form of a plan, which the apply functions here use (ms_ppt applies the dest map)."""
    pool_ids: torch.Tensor  # images that pool
    prune_ids: torch.Tensor  # images that prune
    matching: Optional[Matching]  # of the pooling images
    keep: Optional[torch.Tensor]  # of the pruning images, prune_indices
    grouping: Optional[Grouping] = None  # the single-rule methods' (apply_single_rule)


class ReductionPlan(NamedTuple):
    """Every decision of one PP block (no gradient flows through it): the fields of ms_ppt.ppt.ReductionPlan
    (ppt_common.plan.PLAN_FIELDS), then `indices`, the same decisions in the authors' index form."""
    policy: torch.Tensor  # [B] bool: True where the image pools; int32 codes PRUNE_FUSE / DECOUPLE_MERGE for those
    #                       methods
    variance: torch.Tensor  # [B]
    scores: torch.Tensor  # [B, N]
    node_max: torch.Tensor  # [B, ceil(N/2)], NaN where the image prunes
    dest: torch.Tensor  # [B, N] output slot of every input token, -1 if dropped
    indices: PlanIndices


@torch.no_grad()
def decide(scores, metric, r, threshold, num_prefix_tokens=1) -> ReductionPlan:
    """The block's plan: each image's policy, then a matching for the pooling sub-batch and kept positions for
    the pruning one (the authors' split)."""
    B, N = scores.shape
    variance = score_variance(scores, num_prefix_tokens)
    policy = pool_policy(variance, threshold)
    pool_ids = policy.nonzero().squeeze(-1)
    prune_ids = (~policy).nonzero().squeeze(-1)
    dest = torch.full((B, N), -1, dtype=torch.long, device=scores.device)
    node_max = torch.full((B, (N + 1) // 2), math.nan, dtype=scores.dtype, device=scores.device)
    matching = keep = None
    if pool_ids.numel():
        matching = bipartite_matching(metric[pool_ids], r, num_prefix_tokens)
        node_max[pool_ids] = matching.node_max
        dest[pool_ids] = matching_dest(matching, N)
    if prune_ids.numel():
        keep = prune_indices(scores[prune_ids], r)
        dest[prune_ids] = kept_dest(keep, N)
    return ReductionPlan(policy, variance, scores, node_max, dest, PlanIndices(pool_ids, prune_ids, matching, keep))


class Grouping(NamedTuple):
    """A single-rule method's decision in index form: the `keep` tokens copied in this order, then `num_groups`
    tokens, each the weighted mean of its members (positions `members`, each in group `groups`)."""
    keep: torch.Tensor  # [B, K]
    members: torch.Tensor  # [B, M]
    groups: torch.Tensor  # [B, M] in 0..num_groups-1
    num_groups: int


def fuse_grouping(scores: torch.Tensor, r: int) -> Grouping:
    """prune_fuse (EViT, SPViT): pruning's kept tokens, then one token fusing the r dropped ones."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    n_keep = scores.shape[1] - r
    dropped = order[:, n_keep:].sort(dim=-1).values
    return Grouping(order[:, :n_keep], dropped, torch.zeros_like(dropped), 1)


def decouple_merge_grouping(scores: torch.Tensor, metric: torch.Tensor, r: int):
    """decouple_merge (2211.11315): the N - 2r top-scored (attentive) tokens kept in descending score order; the 2r
    others, in position order, alternate A, B: each A token merges into its most similar B token (first maximal).
    Returns (grouping, node_max [B, r])."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    n_keep = scores.shape[1] - 2 * r
    inattentive = order[:, n_keep:].sort(dim=-1).values
    a_idx, b_idx = inattentive[:, ::2], inattentive[:, 1::2]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    sim = batch_index_select(metric, a_idx) @ batch_index_select(metric, b_idx).transpose(-1, -2)
    node_max = sim.amax(dim=-1)
    partner = sim.argmax(dim=-1)  # first maximal index
    groups = torch.cat([partner, torch.arange(r, device=scores.device).expand_as(partner)], dim=1)
    return Grouping(order[:, :n_keep], torch.cat([a_idx, b_idx], dim=1), groups, r), node_max


def grouping_dest(g: Grouping, num_tokens: int) -> torch.Tensor:
    """dest map [B, N] of a grouping: kept tokens to slots 0..K-1, members to K + their group."""
    B, K = g.keep.shape
    dest = torch.full((B, num_tokens), -1, dtype=torch.long, device=g.keep.device)
    dest.scatter_(1, g.keep, torch.arange(K, device=dest.device).expand_as(g.keep).contiguous())
    return dest.scatter_(1, g.members, K + g.groups)


@torch.no_grad()
def decide_single_rule(scores, metric, r, method, num_prefix_tokens=1) -> ReductionPlan:
    """The plan of prune_fuse or decouple_merge: every image takes it; the variance is recorded, not used."""
    B, N = scores.shape
    variance = score_variance(scores, num_prefix_tokens)
    code = PRUNE_FUSE if method == "prune_fuse" else DECOUPLE_MERGE
    if method == "prune_fuse":
        grouping = fuse_grouping(scores, r)
        node_max = torch.full((B, r), math.nan, dtype=scores.dtype, device=scores.device)
    else:
        grouping, node_max = decouple_merge_grouping(scores, metric, r)
    none = torch.zeros(0, dtype=torch.long, device=scores.device)
    return ReductionPlan(torch.full((B,), code, dtype=torch.int32, device=scores.device), variance, scores,
                         node_max, grouping_dest(grouping, N), PlanIndices(none, none, None, None, grouping))


def batch_index_select(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def merge(x: torch.Tensor, m: Matching, mode: str) -> torch.Tensor:
    """Apply a matching: [unmerged A in ascending order, then B with the merged A reduced into them]."""
    src, dst = x[:, ::2], x[:, 1::2]
    C = x.shape[-1]
    unm = src.gather(1, m.unm_idx[..., None].expand(-1, -1, C))
    src = src.gather(1, m.src_idx[..., None].expand(-1, -1, C))
    dst = dst.scatter_reduce(1, m.dst_idx[..., None].expand(-1, -1, C), src, reduce=mode)
    return torch.cat([unm, dst], dim=1)


def _apply_split(plan: ReductionPlan, like: torch.Tensor, r: int, pool, prune) -> torch.Tensor:
    """Reduce each sub-batch on its own (`pool(ids)`, `prune(ids)`) and write it back at its batch positions;
    differentiable through what the two functions return."""
    out = like.new_empty(like.shape[0], like.shape[1] - r, like.shape[2])
    index = plan.indices
    if index.matching is not None:
        out[index.pool_ids] = pool(index.pool_ids)
    if index.keep is not None:
        out[index.prune_ids] = prune(index.prune_ids)
    return out


def apply_reduction(plan: ReductionPlan, x: torch.Tensor, size: torch.Tensor, r: int):
    """Pooling images: size-weighted merge (x_out = sum(x*size)/sum(size)); pruning images: the kept tokens, in
    descending score order. Differentiable in x; sizes carry no gradient."""
    size, m, keep = size.detach(), plan.indices.matching, plan.indices.keep
    size_out = _apply_split(plan, size, r, lambda ids: merge(size[ids], m, "sum"),
                            lambda ids: batch_index_select(size[ids], keep))
    x_out = _apply_split(plan, x, r, lambda ids: merge(x[ids] * size[ids], m, "sum") / size_out[ids],
                         lambda ids: batch_index_select(x[ids], keep))
    return x_out, size_out


def group_sum(x: torch.Tensor, g: Grouping) -> torch.Tensor:
    """[B, num_groups, C]: the sum of each group's members."""
    idx = g.groups[..., None].expand(-1, -1, x.shape[-1])
    return x.new_zeros(x.shape[0], g.num_groups, x.shape[-1]).scatter_add(1, idx, batch_index_select(x, g.members))


def apply_grouping(x: torch.Tensor, g: Grouping, weight: torch.Tensor) -> torch.Tensor:
    """The kept tokens, then each group's weighted mean sum(x*w)/sum(w)."""
    return torch.cat([batch_index_select(x, g.keep), group_sum(x * weight, g) / group_sum(weight, g)], dim=1)


def apply_single_rule(plan: ReductionPlan, x: torch.Tensor, size: torch.Tensor, r: int, method: str):
    """prune_fuse: kept tokens copied, the fused token the score-weighted mean of the dropped ones;
    decouple_merge: size-weighted means, as pooling. Differentiable in x; sizes carry no gradient."""
    size, g = size.detach(), plan.indices.grouping
    weight = plan.scores[..., None].to(x.dtype) if method == "prune_fuse" else size
    size_out = torch.cat([batch_index_select(size, g.keep), group_sum(size, g)], dim=1)
    return apply_grouping(x, g, weight), size_out


def apply_to_source(plan: ReductionPlan, source: torch.Tensor, r: int, method: str = "ppt") -> torch.Tensor:
    """Merged tokens hold the union of their sources (ToMe's amax), kept tokens their own."""
    index = plan.indices
    if method in SINGLE_RULE_METHODS:  # disjoint 0/1 rows: their sum is their union
        return torch.cat([batch_index_select(source, index.grouping.keep), group_sum(source, index.grouping)], dim=1)
    return _apply_split(plan, source, r, lambda ids: merge(source[ids], index.matching, "amax"),
                        lambda ids: batch_index_select(source[ids], index.keep))


def reduce_tokens(x, scores, metric, size, r, threshold, source=None, num_prefix_tokens=1, method="ppt"):
    """decide, then apply: (x, size, source, plan) with the block's r tokens removed from every image (prune_fuse:
    r dropped, one fused token added). `threshold` is the variance threshold of PPTConfig.policy_threshold."""
    if method in SINGLE_RULE_METHODS:
        plan = decide_single_rule(scores, metric, r, method, num_prefix_tokens)
        x_out, size_out = apply_single_rule(plan, x, size, r, method)
    else:
        plan = decide(scores, metric, r, threshold, num_prefix_tokens)
        x_out, size_out = apply_reduction(plan, x, size, r)
    if source is not None:
        source = apply_to_source(plan, source, r, method)
    return x_out, size_out, source, plan


def initial_source(batch_size: int, num_tokens: int, like: torch.Tensor) -> torch.Tensor:
    """Identity source map [B, N0, N0]: every token is its own patch."""
    eye = torch.eye(num_tokens, dtype=like.dtype, device=like.device)
    return eye[None].expand(batch_size, num_tokens, num_tokens).contiguous()


def log_sizes(size: torch.Tensor, log_table: torch.Tensor) -> torch.Tensor:
    """log(size) [B, N] for sizes [B, N, 1]: sizes are whole token counts, looked up in `log_table`
    (ppt_common.proportional.log_size_table), so both frameworks add the very same bias. A size outside the table
    (NaN, once a diverging step has made the weights non-finite) gives NaN, as log would."""
    size = size[..., 0]
    known = (size >= 1) & (size < len(log_table))
    looked_up = log_table.to(size)[torch.where(known, size, torch.ones_like(size)).long()]
    return torch.where(known, looked_up, torch.full_like(looked_up, float("nan")))


def proportional_bias(log_size: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The log sizes [B, N] over the key axis, [B, 1, 1, N]."""
    return None if log_size is None else log_size[:, None, None, :]


def trace_record(block: int, r: int, plan: ReductionPlan, size: torch.Tensor) -> BlockTrace:
    """The shared trace record of a block: its plan and the sizes after it (detached, so tracing works inside a
    graph that needs gradients)."""
    def numpy64(t):
        return t.detach().double().cpu().numpy()
    return record_from_plan(block, r, plan.policy.cpu().numpy(), *map(numpy64, plan[1:4]), plan.dest.cpu().numpy(),
                            numpy64(size[..., 0]))


__all__ = ["CLS_SCORE", "importance_scores", "score_variance", "pool_policy", "prune_indices", "kept_dest",
           "Matching", "bipartite_matching", "matching_dest", "PlanIndices", "ReductionPlan", "decide",
           "PRUNE_FUSE", "DECOUPLE_MERGE", "Grouping", "fuse_grouping", "decouple_merge_grouping", "grouping_dest",
           "decide_single_rule", "batch_index_select", "merge", "apply_reduction", "group_sum", "apply_grouping",
           "apply_single_rule", "apply_to_source", "reduce_tokens", "initial_source", "log_sizes",
           "proportional_bias", "trace_record"]
