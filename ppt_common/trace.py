"""The PPT trace: what each PP block did to each image, in one framework-free format.

Both frameworks produce a list of `BlockTrace`, one per reducing PP block, with NumPy arrays whose first axis is
the batch. Token positions are positions in the block's *input* sequence (0 = CLS).

| field       | shape / type          | meaning                                                                  |
|-------------|-----------------------|--------------------------------------------------------------------------|
| block       | int                   | index of the block in the model                                          |
| tokens_in   | int                   | N, tokens entering the reduction                                         |
| r           | int                   | tokens removed (the clamped r)                                           |
| policy      | int8 [B]              | 1 = pool (variance < threshold), 0 = prune; 2 = prune_fuse, 3 = decouple_merge |
| variance    | float64 [B]           | unbiased variance of the normalised importance scores (CLS excluded)     |
| scores      | float64 [B, N]        | importance scores, CLS fixed at 2.0                                      |
| node_max    | float64 [B, ceil(N/2)]| pool: best cosine similarity of each A token (CLS -inf); NaN otherwise   |
| kept        | int64 [B, N-r]        | prune, prune_fuse: kept input positions in output (descending score) order; decouple_merge: the N-2r attentive ones, then -1; -1 if pooled |
| merge_src   | int64 [B, r]          | pool, decouple_merge: input positions of the merged A tokens, ascending; prune_fuse: the fused (dropped) tokens, ascending; -1 if pruned |
| merge_dst   | int64 [B, r]          | pool, decouple_merge: input position of the B token each one merged into; -1 if pruned or fused |
| dest        | int64 [B, N]          | output slot of every input token, -1 if dropped                          |
| sizes       | float64 [B, N_out]    | token sizes after the block (patches represented by each token)          |

N_out is N - r, or N - r + 1 for prune_fuse (its fused token is the last). Both frameworks build their records with
`record_from_plan` from the same fields of their `ReductionPlan` (policy, variance, scores, node_max, dest).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np

FIELDS = ("policy", "variance", "scores", "node_max", "kept", "merge_src", "merge_dst", "dest", "sizes")
INT_FIELDS = ("policy", "kept", "merge_src", "merge_dst", "dest")
POLICY_NAMES = ("prune", "pool", "prune_fuse", "decouple_merge")  # by policy code


@dataclasses.dataclass
class BlockTrace:
    block: int
    tokens_in: int
    r: int
    policy: np.ndarray
    variance: np.ndarray
    scores: np.ndarray
    node_max: np.ndarray
    kept: np.ndarray
    merge_src: np.ndarray
    merge_dst: np.ndarray
    dest: np.ndarray
    sizes: np.ndarray

    @property
    def tokens_out(self) -> int:
        return int(self.sizes.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.policy.shape[0])

    def image(self, i: int) -> "BlockTrace":
        """The record of image i alone (batch of one)."""
        return dataclasses.replace(self, **{f: getattr(self, f)[i:i + 1] for f in FIELDS})

    def to_dict(self) -> Dict[str, object]:
        out = {"block": self.block, "tokens_in": self.tokens_in, "r": self.r}
        out.update({f: getattr(self, f).tolist() for f in FIELDS})
        return out


def record_from_plan(block: int, r: int, policy, variance, scores, node_max, dest, sizes) -> BlockTrace:
    """A block's record from its ReductionPlan's fields (NumPy, either framework) and the sizes after it [B, N_out]:
    the dest map is read back into kept / merge_src / merge_dst."""
    policy = np.asarray(policy).astype(np.int8)
    dest = np.asarray(dest).astype(np.int64)
    B, N = dest.shape
    sizes = np.asarray(sizes, dtype=np.float64).reshape(B, -1)
    kept = np.full((B, N - r), -1, dtype=np.int64)
    merge_src = np.full((B, r), -1, dtype=np.int64)
    merge_dst = np.full((B, r), -1, dtype=np.int64)
    node_max = np.asarray(node_max, dtype=np.float64).copy()
    if node_max.shape[1] != (N + 1) // 2:  # the single-rule methods' own similarities are not part of the trace
        node_max = np.full((B, (N + 1) // 2), np.nan)
    for b in range(B):
        if policy[b] != 1:
            node_max[b] = np.nan
        reader = {0: _read_prune, 1: _read_pool, 2: _read_prune_fuse, 3: _read_decouple_merge}[int(policy[b])]
        merged = reader(dest[b], r, kept[b], merge_src[b], merge_dst[b])
        if merged is not None and len(merged) != r:
            raise ValueError(f"block {block}, image {b}: {len(merged)} merged tokens, expected {r}")
    return BlockTrace(block=block, tokens_in=N, r=r, policy=policy,
                      variance=np.asarray(variance, dtype=np.float64), scores=np.asarray(scores, dtype=np.float64),
                      node_max=node_max, kept=kept, merge_src=merge_src, merge_dst=merge_dst, dest=dest, sizes=sizes)


def _kept_in_order(dest, n_kept, kept):
    """kept[k] = the input position sent to slot k, for k < n_kept."""
    live = (dest >= 0) & (dest < n_kept)
    kept[dest[live]] = np.nonzero(live)[0]


def _read_prune(dest, r, kept, merge_src, merge_dst):
    _kept_in_order(dest, len(dest) - r, kept)


def _read_pool(dest, r, kept, merge_src, merge_dst):
    """Returns the merged A tokens (checked against r by the caller)."""
    first_b_slot = (len(dest) + 1) // 2 - r
    src = np.array([p for p in range(0, len(dest), 2) if dest[p] >= first_b_slot], dtype=np.int64)
    if len(src) == r:
        merge_src[:] = src
        merge_dst[:] = 2 * (dest[src] - first_b_slot) + 1
    return src


def _read_prune_fuse(dest, r, kept, merge_src, merge_dst):
    n_kept = len(dest) - r
    _kept_in_order(dest, n_kept, kept)
    fused = np.nonzero(dest == n_kept)[0]
    if len(fused) == r:
        merge_src[:] = fused
    return fused


def _read_decouple_merge(dest, r, kept, merge_src, merge_dst):
    n_keep = len(dest) - 2 * r
    _kept_in_order(dest, n_keep, kept)
    inattentive = np.nonzero(dest >= n_keep)[0]
    a, b = inattentive[::2], inattentive[1::2]
    if len(a) == len(b) == r and (dest[b] == n_keep + np.arange(r)).all():
        merge_src[:] = a
        merge_dst[:] = b[dest[a] - n_keep]
        return a
    return inattentive  # not a decouple-and-merge map: the caller reports it


def compare_traces(a: List[BlockTrace], b: List[BlockTrace], rtol: float = 1e-9, atol: float = 1e-12) -> List[str]:
    """Field-by-field differences ([] when equal): integer fields exactly, float fields to rtol/atol."""
    diffs = []
    if [t.block for t in a] != [t.block for t in b]:
        return [f"PP blocks differ: {[t.block for t in a]} vs {[t.block for t in b]}"]
    for ta, tb in zip(a, b):
        for f in FIELDS:
            x, y = getattr(ta, f), getattr(tb, f)
            if x.shape != y.shape:
                diffs.append(f"block {ta.block} {f}: shape {x.shape} vs {y.shape}")
            elif f in INT_FIELDS:
                bad = np.nonzero((x != y).reshape(x.shape[0], -1).any(axis=1))[0]
                if bad.size:
                    diffs.append(f"block {ta.block} {f}: images {bad.tolist()} differ")
            elif not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                finite = np.isfinite(x) & np.isfinite(y)
                err = np.max(np.abs(x[finite] - y[finite]), initial=0.0)
                diffs.append(f"block {ta.block} {f}: max abs diff {err:.3g}")
    return diffs


def prune_margin(t: BlockTrace, i: int, other_kept: np.ndarray = None) -> float:
    """Score gap where two prune orders part: at the first position where `other_kept` differs (two tokens
    swapped), or at the cut (last kept minus first dropped) when no other order is given."""
    s = t.scores[i]
    if other_kept is not None:
        differ = np.nonzero(t.kept[i] != other_kept)[0]
        if differ.size:
            k = differ[0]
            return float(abs(s[t.kept[i][k]] - s[other_kept[k]]))
    order = np.sort(s)[::-1]
    return float(order[t.tokens_out - 1] - order[t.tokens_out])


def merge_margin(t: BlockTrace, i: int) -> float:
    """Similarity gap at the merge cut: r-th best node_max minus the next one."""
    m = np.sort(t.node_max[i])[::-1]
    return float(m[t.r - 1] - m[t.r])


def policy_margin(t: BlockTrace, i: int, threshold: float) -> float:
    """Relative distance of the variance from the threshold."""
    return float(abs(t.variance[i] - threshold) / threshold) if threshold > 0 else float("inf")
