"""PPT token operations in PyTorch, as small pure functions (read beside ms_ppt/ppt.py).

This follows the authors' published code: the batch is split into a pooling and a pruning sub-batch, pruning
gathers the top-scored tokens, pooling is ToMe's bipartite soft matching with a size-weighted mean. Deviations
(see docs/ppt-spec.md): stable ordering among equal keys, and source maps that stay correct in mixed batches.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from ppt_common.trace import BlockTrace

CLS_SCORE = 2.0


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


def prune_order(scores: torch.Tensor) -> torch.Tensor:
    """Token positions by descending score; equal scores keep ascending position (stable)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


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


def merge(x: torch.Tensor, m: Matching, mode: str) -> torch.Tensor:
    """Apply a matching: [unmerged A in ascending order, then B with the merged A reduced into them]."""
    src, dst = x[:, ::2], x[:, 1::2]
    C = x.shape[-1]
    unm = src.gather(1, m.unm_idx[..., None].expand(-1, -1, C))
    src = src.gather(1, m.src_idx[..., None].expand(-1, -1, C))
    dst = dst.scatter_reduce(1, m.dst_idx[..., None].expand(-1, -1, C), src, reduce=mode)
    return torch.cat([unm, dst], dim=1)


def pool(x, metric, r, size, source=None, num_prefix_tokens=1):
    """Size-weighted merge of the r most similar A tokens into their B partners."""
    m = bipartite_matching(metric, r, num_prefix_tokens)
    x = merge(x * size, m, "sum")
    size = merge(size, m, "sum")
    if source is not None:
        source = merge(source, m, "amax")
    return x / size, size, source, m


def batch_index_select(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def prune(x, scores, r, size, source=None):
    """Keep the N-r highest-scored tokens, in descending score order."""
    keep = prune_order(scores)[:, :x.shape[1] - r]
    if source is not None:
        source = batch_index_select(source, keep)
    return batch_index_select(x, keep), batch_index_select(size, keep), source, keep


def reduce_tokens(x, scores, metric, size, r, threshold, source=None, block=-1, want_trace=False,
                  num_prefix_tokens=1):
    """Per-image policy; each sub-batch is reduced on its own and written back at its batch positions."""
    B, N, C = x.shape
    variance = score_variance(scores, num_prefix_tokens)
    pooling = pool_policy(variance, threshold)
    pool_ids = pooling.nonzero().squeeze(-1)
    prune_ids = (~pooling).nonzero().squeeze(-1)
    x_out = x.new_empty(B, N - r, C)
    size_out = size.new_empty(B, N - r, 1)
    source_out = source.new_empty(B, N - r, source.shape[-1]) if source is not None else None
    kept = torch.full((B, N - r), -1, dtype=torch.long)
    merge_src = torch.full((B, r), -1, dtype=torch.long)
    merge_dst = torch.full((B, r), -1, dtype=torch.long)
    node_max = torch.full((B, (N + 1) // 2), math.nan, dtype=torch.float64)
    if pool_ids.numel():
        sub_source = source[pool_ids] if source is not None else None
        xp, sp, srcp, m = pool(x[pool_ids], metric[pool_ids], r, size[pool_ids], sub_source, num_prefix_tokens)
        x_out[pool_ids], size_out[pool_ids] = xp, sp
        if source is not None:
            source_out[pool_ids] = srcp
        src_pos, order = (2 * m.src_idx).sort(dim=-1)
        merge_src[pool_ids] = src_pos.cpu()
        merge_dst[pool_ids] = (2 * m.dst_idx.gather(-1, order) + 1).cpu()
        node_max[pool_ids] = m.node_max.detach().double().cpu()
    if prune_ids.numel():
        sub_source = source[prune_ids] if source is not None else None
        xq, sq, srcq, keep = prune(x[prune_ids], scores[prune_ids], r, size[prune_ids], sub_source)
        x_out[prune_ids], size_out[prune_ids] = xq, sq
        if source is not None:
            source_out[prune_ids] = srcq
        kept[prune_ids] = keep.cpu()
    trace = None
    if want_trace:  # a record of decisions: detached, so tracing works inside a graph that needs gradients
        def numpy64(t):
            return t.detach().double().cpu().numpy()
        trace = BlockTrace(block=block, tokens_in=N, r=r, policy=pooling.cpu().numpy().astype(np.int8),
                           variance=numpy64(variance), scores=numpy64(scores), node_max=node_max.numpy(),
                           kept=kept.numpy(), merge_src=merge_src.numpy(), merge_dst=merge_dst.numpy(),
                           sizes=numpy64(size_out[..., 0]))
    return x_out, size_out, source_out, trace


def initial_source(batch_size: int, num_tokens: int, like: torch.Tensor) -> torch.Tensor:
    """Identity source map [B, N0, N0]: every token is its own patch."""
    eye = torch.eye(num_tokens, dtype=like.dtype, device=like.device)
    return eye[None].expand(batch_size, num_tokens, num_tokens).contiguous()


def proportional_bias(size: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """log(size) over the key axis, [B, 1, 1, N]."""
    return None if size is None else size.log()[:, None, None, :, 0]


__all__ = ["importance_scores", "score_variance", "pool_policy", "prune_order", "bipartite_matching", "merge",
           "pool", "prune", "reduce_tokens", "initial_source", "proportional_bias", "Matching", "CLS_SCORE"]
