"""PPT token operations in MindSpore, as small pure functions (read beside pt_reference/ppt.py).

Decide, then apply (ToMe's shape): `decide` takes every decision of a PP block under stop_gradient and returns
a `ReductionPlan`; `apply_reduction` applies it to the tokens and their sizes (differentiable in x) and
`apply_to_source` to the source map. The trace of a block is its plan plus the sizes after it.

Static shapes: both policies remove exactly r tokens, so each image's reduction is written as a `dest` map (the
output slot of every input token, -1 if dropped). Pruning and pooling each produce one, the image's policy picks
one with `where`, and a single one-hot matmul applies it. No data-dependent shapes, no `nonzero`, no Python branch
on tensor values: the same graph compiles for GRAPH_MODE, PyNative and Ascend. The single-rule methods compared with
PPT (prune_fuse, decouple_merge; the spec's "Methods") are one more dest map each, applied by the same matmul.

Ties follow the stable policy of the spec: ranks are computed by counting (greater keys, plus equal keys at lower
positions), which is deterministic on every backend, unlike sort kernels.

These functions are the reference path. In float32 on CPU, vision_transformer.TokenReduction runs the same steps
(importance_scores, the merge metric, decide, apply_reduction) as one compiled op, kernels/ppt_reduce_cpu.cc.
"""
from typing import NamedTuple

import mindspore as ms
from mindspore import Tensor, ops

from ppt_common.config import SINGLE_RULE_METHODS
from ppt_common.plan import CLS_SCORE, DECOUPLE_MERGE, DEST, POLICY, PRUNE_FUSE, SCORES
from ppt_common.trace import BlockTrace, record_from_plan

NEG_INF = float("-inf")


def importance_scores(attn, v, num_prefix_tokens=1):
    """[B, N]: CLS attention summed over heads times ||v_j||, normalised over the patches; every prefix token
    (class, distillation) scores 2.0."""
    v_norm = ops.sqrt((v * v).sum(-1).sum(1))  # ||v_j|| over all heads: [B, N]
    s = (attn[:, :, 0].sum(1) * v_norm)[:, num_prefix_tokens:]
    s = s / s.sum(-1, keepdims=True)
    return ops.concat([ops.ones_like(s[:, :num_prefix_tokens]) * CLS_SCORE, s], -1)


def score_variance(scores, num_prefix_tokens=1):
    """Unbiased (ddof=1) variance of the patch scores, per image [B]."""
    s = scores[:, num_prefix_tokens:]
    centred = s - ops.mean(s, -1, True)
    return (centred * centred).sum(-1) / (s.shape[1] - 1)


def pool_policy(variance, threshold):
    """True where the image pools (flat importance), False where it prunes."""
    return variance < threshold


def stable_descending_rank(keys):
    """Position of each entry in a stable descending sort of its row [B, N] (int32)."""
    n = keys.shape[-1]
    ki = keys[:, :, None]
    kj = keys[:, None, :]
    idx = ops.arange(n)
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j < i
    ahead = ops.logical_or(kj > ki, ops.logical_and(kj == ki, earlier[None]))
    return ahead.astype(ms.int32).sum(-1)


def prune_dest(scores, r):
    """dest map of pruning: a token's output slot is its rank in the stable descending score order; the last r
    ranks are dropped."""
    rank = stable_descending_rank(scores)
    n_out = scores.shape[1] - r
    return ops.where(rank < n_out, rank, ops.full_like(rank, -1))


def pool_dest(metric, r, num_prefix_tokens=1):
    """dest map [B, N] of pooling, ToMe's bipartite soft matching, with node_max [B, NA].

    Output order: unmerged A tokens ascending (CLS first), then the B tokens; a merged A token goes to its
    partner's slot. A = even positions, B = odd positions. Prefix tokens are protected as in ToMe: the CLS row
    (A[0]) is -inf so CLS is never merged, and the distillation token's column (B[0]) is -inf so nothing merges
    into it (B tokens are never merged away).
    """
    B, N, _ = metric.shape
    num_a, num_b = (N + 1) // 2, N // 2
    metric = metric / ops.sqrt((metric * metric).sum(-1, keepdims=True))
    a, b = metric[:, ::2], metric[:, 1::2]
    sim = ops.matmul(a, b.swapaxes(1, 2))  # [B, NA, NB]
    is_cls_row = (ops.arange(num_a) == 0)[None, :, None]
    sim = ops.where(is_cls_row, ops.full_like(sim, NEG_INF), sim)
    if num_prefix_tokens > 1:
        is_dist_column = (ops.arange(num_b) == 0)[None, None, :]
        sim = ops.where(is_dist_column, ops.full_like(sim, NEG_INF), sim)
    node_max = ops.amax(sim, -1)
    b_index = ops.arange(num_b)[None, None, :].astype(ms.int32)
    node_idx = ops.where(sim == node_max[..., None], b_index, ops.full_like(b_index, num_b))
    node_idx = ops.amin(node_idx, -1)
    merged = stable_descending_rank(node_max) < r
    unmerged_slot = ops.cumsum(ops.logical_not(merged).astype(ms.int32), 1) - 1
    first_b_slot = num_a - r
    dest_a = ops.where(merged, node_idx + first_b_slot, unmerged_slot)
    dest_b = ops.broadcast_to((ops.arange(num_b) + first_b_slot).astype(ms.int32)[None], (B, num_b))
    if num_a > num_b:
        dest_b = ops.concat([dest_b, ops.full_like(dest_b[:, :1], -1)], 1)
    dest = ops.stack([dest_a, dest_b], -1).reshape(B, 2 * num_a)[:, :N]
    return dest, node_max


class ReductionPlan(NamedTuple):
    """Every decision of one PP block (no gradient flows through it): ppt_common.plan.PLAN_FIELDS.

    Inside graphs the plan travels as a plain tuple in this field order, read with ppt_common.plan's indices:
    MindSpore 2.10 fails to compile GRAPH_MODE gradients through a NamedTuple built in the graph. Outside,
    `ReductionPlan(*plan)` names it."""
    policy: Tensor  # [B] bool (int32 from the fused kernel): True where the image pools; int32 codes
    #                 PRUNE_FUSE / DECOUPLE_MERGE for those methods
    variance: Tensor  # [B] unbiased variance of the patch scores
    scores: Tensor  # [B, N] importance scores, prefix tokens 2.0
    node_max: Tensor  # [B, ceil(N/2)] best cosine similarity of each A token (prefix rows -inf); decouple_merge:
    #                   [B, r] over its inattentive A tokens; prune_fuse: [B, r] NaN
    dest: Tensor  # [B, N] int32 output slot of every input token, -1 if dropped


def decide(scores, metric, r, threshold, num_prefix_tokens=1):
    """The block's plan (a ReductionPlan as a tuple): each image's policy, and the dest map of that policy."""
    scores, metric = ops.stop_gradient(scores), ops.stop_gradient(metric)
    variance = score_variance(scores, num_prefix_tokens)
    policy = pool_policy(variance, threshold)
    pooled, node_max = pool_dest(metric, r, num_prefix_tokens)
    dest = ops.where(policy[:, None], pooled, prune_dest(scores, r))
    return policy, variance, scores, node_max, dest



def fuse_dest(scores, r):
    """prune_fuse (EViT, SPViT): pruning's dest map with the r dropped tokens sent to one extra slot, N - r."""
    dest = prune_dest(scores, r)
    return ops.where(dest < 0, ops.full_like(dest, scores.shape[1] - r), dest)


def decouple_merge_dest(scores, metric, r):
    """decouple_merge (2211.11315) as a dest map [B, N], with node_max [B, r].

    The N - 2r attentive tokens (top scores; prefix tokens score 2.0, so they are among them) keep pruning's slots
    in descending score order. The 2r inattentive ones, in position order, alternate A, B, A, B, ...: each A token
    merges into its most similar B token (cosine of the metric, the first maximal B on ties), and the r B tokens
    take the last r slots in position order."""
    B, N = scores.shape
    n_keep = N - 2 * r
    rank = stable_descending_rank(scores)
    inattentive = rank >= n_keep
    member = ops.cumsum(inattentive.astype(ms.int32), 1) - 1  # place in the inattentive set, by position
    member = ops.where(inattentive, member, ops.full_like(member, -1))
    gather = (member[:, None, :] == ops.arange(2 * r).astype(ms.int32)[None, :, None]).astype(metric.dtype)
    m = ops.matmul(gather, metric)  # [B, 2r, C]: the inattentive tokens' metric, in position order
    m = m / ops.sqrt((m * m).sum(-1, keepdims=True))
    sim = ops.matmul(m[:, ::2], m[:, 1::2].swapaxes(1, 2))  # [B, r (A), r (B)]
    node_max = ops.amax(sim, -1)
    b_index = ops.arange(r)[None, None, :].astype(ms.int32)
    partner = ops.amin(ops.where(sim == node_max[..., None], b_index, ops.full_like(b_index, r)), -1)  # [B, r]
    half = ops.maximum(member, 0) // 2
    group = ops.where(member % 2 == 1, half, ops.gather_elements(partner, 1, half))
    return ops.where(inattentive, group + n_keep, rank), node_max


def decide_single_rule(scores, metric, r, method, num_prefix_tokens=1):
    """The plan (a ReductionPlan as a tuple) of a single-rule method, prune_fuse or decouple_merge: every image
    takes it; the variance is recorded, not used."""
    scores, metric = ops.stop_gradient(scores), ops.stop_gradient(metric)
    variance = score_variance(scores, num_prefix_tokens)
    code = PRUNE_FUSE if method == "prune_fuse" else DECOUPLE_MERGE
    policy = ops.full(variance.shape, code, dtype=ms.int32)
    if method == "prune_fuse":
        dest = fuse_dest(scores, r)
        return policy, variance, scores, ops.full((scores.shape[0], r), float("nan"), dtype=scores.dtype), dest
    dest, node_max = decouple_merge_dest(scores, metric, r)
    return policy, variance, scores, node_max, dest


def apply_dest(x, dest, n_out):
    """Gather (one source per slot) or size-weighted merge, as one matmul with a one-hot [B, n_out, N]."""
    onehot = (dest[:, None, :] == ops.arange(n_out).astype(ms.int32)[None, :, None]).astype(x.dtype)
    return ops.matmul(onehot, x)


def merge_by_dest(x, size, weight, dest, n_out):
    """Every output slot: the weight-averaged tokens sent to it, and the sum of their sizes."""
    c = x.shape[2]
    out = apply_dest(ops.concat([x * weight, weight, size], -1), dest, n_out)
    return out[..., :c] / out[..., c:c + 1], out[..., c + 1:]


def apply_reduction(plan, x, size, r):
    """Pooled images merge with weights `size` (x_out = sum(x*size)/sum(size)); pruned images gather with weight 1,
    which copies their tokens exactly. Differentiable in x; sizes carry no gradient."""
    size = ops.stop_gradient(size).astype(x.dtype)
    weight = ops.where(plan[POLICY][:, None, None], size, ops.ones_like(size))
    return merge_by_dest(x, size, weight, plan[DEST], x.shape[1] - r)


def tokens_out(n, r, method):
    """Tokens after a reducing block: r fewer, but prune_fuse adds its fused token back."""
    return n - r + 1 if method == "prune_fuse" else n - r


def apply_single_rule(plan, x, size, r, method):
    """prune_fuse: kept tokens copied (weight 1), the fused token (the last) the score-weighted mean of the dropped
    ones; decouple_merge: size-weighted means, as pooling. Differentiable in x; sizes carry no gradient."""
    size = ops.stop_gradient(size).astype(x.dtype)
    n_out = tokens_out(x.shape[1], r, method)
    weight = size
    if method == "prune_fuse":
        fused = (plan[DEST] == n_out - 1)[..., None]
        weight = ops.where(fused, plan[SCORES].astype(x.dtype)[..., None], ops.ones_like(size))
    return merge_by_dest(x, size, weight, plan[DEST], n_out)


def apply_to_source(plan, source, r, method="ppt"):
    """Source rows are 0/1 with disjoint support, so their sum is their union (ToMe's amax)."""
    return apply_dest(source, plan[DEST], tokens_out(source.shape[1], r, method))


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
    return x_out, size_out.astype(size.dtype), source, plan


def initial_source(batch_size, num_tokens, like):
    """Identity source map [B, N0, N0]: every token is its own patch."""
    eye = ops.eye(num_tokens, num_tokens, like.dtype)
    return ops.broadcast_to(eye[None], (batch_size, num_tokens, num_tokens))


def log_sizes(size, log_table):
    """log(size) [B, N] for sizes [B, N, 1]: sizes are whole token counts, looked up in `log_table`
    (ppt_common.proportional.log_size_table in the attention's dtype), never computed by Log. A size outside the
    table (NaN, once a diverging step has made the weights non-finite) gives NaN, as log would."""
    B, N, _ = size.shape
    size = size.reshape(B, N)
    known = ops.logical_and(size >= 1, size < log_table.shape[0])
    looked_up = ops.gather(log_table, ops.where(known, size, ops.ones_like(size)).astype(ms.int32), 0)
    return ops.where(known, looked_up, ops.full_like(looked_up, float("nan")))


def proportional_bias(log_size):
    """The log sizes [B, N] over the key axis, [B, 1, 1, N]."""
    B, N = log_size.shape
    return log_size.reshape(B, 1, 1, N)


def trace_record(block: int, r: int, plan, size) -> BlockTrace:
    """The shared trace record of a block: its plan and the sizes after it."""
    return record_from_plan(block, r, *[t.asnumpy() for t in plan], size.asnumpy()[..., 0])
