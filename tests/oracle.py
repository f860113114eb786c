"""Brute-force NumPy PPT, written line by line from docs/ppt-spec.md, one image at a time, with plain loops.

Slow and obvious on purpose: both frameworks' token operations are tested against it.
"""
import numpy as np


def importance_scores(attn, v, prefix=1):
    """attn [H, N, N], v [H, N, d] -> [N]; the first `prefix` tokens (class, distillation) score 2.0"""
    H, N, d = v.shape
    raw = np.array([sum(attn[h, 0, j] for h in range(H)) * np.sqrt(sum(v[h, j, k] ** 2 for h in range(H)
                                                                        for k in range(d))) for j in range(N)])
    patches = raw[prefix:] / raw[prefix:].sum()
    return np.concatenate([[2.0] * prefix, patches])


def variance(scores, prefix=1):
    s = scores[prefix:]
    return sum((x - s.mean()) ** 2 for x in s) / (len(s) - 1)


def prune_keep(scores, r):
    """Kept positions in descending score order; among equal scores the lower position first."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:len(scores) - r]


def bipartite(metric, r, prefix=1):
    """Returns (merged list of (a_pos, b_pos), node_max per A token) for one image; metric [N, d]. No prefix token
    is merged away (CLS is A's first) and nothing merges into one (the distillation token is B's first)."""
    N = len(metric)
    m = metric / np.linalg.norm(metric, axis=1, keepdims=True)
    a_pos, b_pos = list(range(0, N, 2)), list(range(1, N, 2))
    node_max, node_idx = [], []
    for ai, p in enumerate(a_pos):
        sims = [-np.inf if p < prefix or q < prefix else float(m[p] @ m[q]) for q in b_pos]
        best = max(sims)
        node_max.append(best)
        node_idx.append(sims.index(best))  # first maximal index
    edge = sorted(range(len(a_pos)), key=lambda ai: (-node_max[ai], ai))
    merged = [(a_pos[ai], b_pos[node_idx[ai]]) for ai in edge[:r]]
    return merged, np.array(node_max)


def pool_tokens(x, size, merged):
    """Output [unmerged A ascending, then B], size-weighted means; x [N, C], size [N]."""
    N = len(x)
    merged_src = {a for a, _ in merged}
    unmerged = [p for p in range(0, N, 2) if p not in merged_src]
    groups = [[p] for p in unmerged] + [[q] + [a for a, b in merged if b == q] for q in range(1, N, 2)]
    x_out = np.array([sum(x[i] * size[i] for i in g) / sum(size[i] for i in g) for g in groups])
    size_out = np.array([sum(size[i] for i in g) for g in groups])
    return x_out, size_out, groups


def prune_tokens(x, size, keep):
    return x[keep], size[keep], [[i] for i in keep]


def reduce(x, scores, metric, size, r, threshold, prefix=1):
    """One image through a PP block's reduction: (x_out, size_out, groups, policy)."""
    r = min(r, (len(x) - prefix) // 2)
    if variance(scores, prefix) < threshold:
        merged, _ = bipartite(metric, r, prefix)
        return (*pool_tokens(x, size, merged), 1)
    return (*prune_tokens(x, size, prune_keep(scores, r)), 0)


def weighted_groups(x, size, groups, weights):
    """x_out: each group's weighted mean; size_out: each group's summed size."""
    x_out = np.array([sum(x[i] * weights[i] for i in g) / sum(weights[i] for i in g) for g in groups])
    return x_out, np.array([sum(size[i] for i in g) for g in groups]), groups


def prune_fuse(x, size, scores, r):
    """EViT/SPViT: the top N-r tokens in descending score order, then one token: the r dropped tokens' mean
    weighted by their scores, holding their summed size."""
    order = prune_keep(scores, 0)
    keep, dropped = order[:len(x) - r], sorted(order[len(x) - r:])
    weights = np.where(np.isin(np.arange(len(x)), dropped), scores, 1.0)
    return weighted_groups(x, size, [[i] for i in keep] + [dropped], weights)


def decouple_merge(x, size, scores, metric, r):
    """2211.11315: the N-2r top-scored tokens kept in descending score order; the 2r others, by position,
    alternate A, B; each A token joins its most similar B token (first maximal); size-weighted means."""
    order = prune_keep(scores, 0)
    n_keep = len(x) - 2 * r
    inattentive = sorted(order[n_keep:])
    a_pos, b_pos = inattentive[0::2], inattentive[1::2]
    m = metric / np.linalg.norm(metric, axis=1, keepdims=True)
    partner = {}
    for p in a_pos:
        sims = [float(m[p] @ m[q]) for q in b_pos]
        partner[p] = b_pos[sims.index(max(sims))]
    groups = [[i] for i in order[:n_keep]] + [[q] + [p for p in a_pos if partner[p] == q] for q in b_pos]
    return weighted_groups(x, size, groups, size)


def attention_with_bias(q, k, size, scale):
    """q, k [H, N, d], size [N] or None -> softmax(q k^T * scale + log size over keys)."""
    logits = np.einsum("hnd,hmd->hnm", q, k) * scale
    if size is not None:
        logits = logits + np.log(size)[None, None, :]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def tempting_distilled_inputs(rng, B=2, N=13, C=4, H=2):
    """Inputs where an unprotected reduction would drop the distillation token (position 1, no CLS attention) and
    merge every A token into it (all A tokens point where it points): (attn, v, metric, x, size)."""
    attn = rng.dirichlet(np.ones(N), size=(B, H, N))
    attn[:, :, 0, 1] = 0.0
    v = rng.randn(B, H, N, 3)
    metric = rng.randn(B, N, 3) * 0.01
    metric[:, 0::2] += metric[:, 1:2]
    metric[:, 1] *= 100
    return attn, v, metric, rng.randn(B, N, C), np.ones((B, N, 1))
