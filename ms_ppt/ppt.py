"""PPT token operations in MindSpore, as small pure functions (read beside pt_reference/ppt.py).

Static shapes: both policies remove exactly r tokens, so each image's reduction is written as a `dest` map (the
output slot of every input token, -1 if dropped). Pruning and pooling each produce one, the image's policy picks
one with `where`, and a single one-hot matmul applies it. No data-dependent shapes, no `nonzero`, no Python branch
on tensor values: the same graph compiles for GRAPH_MODE, PyNative and Ascend.

Ties follow the stable policy of the spec: ranks are computed by counting (greater keys, plus equal keys at lower
positions), which is deterministic on every backend, unlike sort kernels.

These functions are the reference path. In float32 on CPU, vision_transformer.TokenReduction runs the same steps
(importance_scores, the merge metric, reduce_tokens) as one compiled op, kernels/ppt_reduce_cpu.cc.
"""
import mindspore as ms
from mindspore import ops

CLS_SCORE = 2.0
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


def prune_order(scores):
    """Rank of every token in the stable descending score order [B, N] (0 = CLS)."""
    return stable_descending_rank(scores)


def prune_dest(scores, r):
    """dest map of pruning: the first N-r ranks keep their rank as output slot, the rest are dropped."""
    rank = prune_order(scores)
    n_out = scores.shape[1] - r
    return ops.where(rank < n_out, rank, ops.full_like(rank, -1))


def bipartite_matching(metric, r, num_prefix_tokens=1):
    """ToMe bipartite soft matching as a dest map [B, N], with node_max [B, NA].

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


def apply_dest(x, dest, n_out):
    """Gather (one source per slot) or size-weighted merge, as one matmul with a one-hot [B, n_out, N]."""
    onehot = (dest[:, None, :] == ops.arange(n_out).astype(ms.int32)[None, :, None]).astype(x.dtype)
    return ops.matmul(onehot, x)


def reduce_tokens(x, scores, metric, size, r, threshold, source=None, num_prefix_tokens=1):
    """Per-image policy without splitting the batch: compute both dest maps, select, apply once.

    Pooled images merge with weights `size` (x_out = sum(x*size)/sum(size)); pruned images gather with weight 1,
    which copies their tokens exactly. Returns x, size, source and the raw trace tensors.
    """
    n_in, c = x.shape[1], x.shape[2]
    n_out = n_in - r
    variance = score_variance(scores, num_prefix_tokens)
    pooling = pool_policy(variance, threshold)
    pool_dest, node_max = bipartite_matching(metric, r, num_prefix_tokens)
    dest = ops.where(pooling[:, None], pool_dest, prune_dest(scores, r))
    weight = ops.where(pooling[:, None, None], size.astype(x.dtype), ops.ones_like(size).astype(x.dtype))
    stacked = ops.concat([x * weight, weight, size.astype(x.dtype)], -1)
    out = apply_dest(stacked, dest, n_out)
    x_out = out[..., :c] / out[..., c:c + 1]
    size_out = out[..., c + 1:].astype(size.dtype)
    if source is not None:
        source = apply_dest(source, dest, n_out)  # 0/1 rows with disjoint support: sum == max
    return x_out, size_out, source, (pooling, variance, scores, node_max, dest, size_out)


def initial_source(batch_size, num_tokens, like):
    """Identity source map [B, N0, N0]: every token is its own patch."""
    eye = ops.eye(num_tokens, num_tokens, like.dtype)
    return ops.broadcast_to(eye[None], (batch_size, num_tokens, num_tokens))


def proportional_bias(size):
    """log(size) over the key axis, [B, 1, 1, N]."""
    B, N, _ = size.shape
    return ops.log(size).reshape(B, 1, 1, N)
