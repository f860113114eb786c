"""The PPT trace: what each PP block did to each image, in one framework-free format.

Both frameworks produce a list of `BlockTrace`, one per reducing PP block, with NumPy arrays whose first axis is
the batch. Token positions are positions in the block's *input* sequence (0 = CLS).

| field       | shape / type          | meaning                                                                  |
|-------------|-----------------------|--------------------------------------------------------------------------|
| block       | int                   | index of the block in the model                                          |
| tokens_in   | int                   | N, tokens entering the reduction                                         |
| r           | int                   | tokens removed (the clamped r)                                           |
| policy      | int8 [B]              | 1 = pool (variance < threshold), 0 = prune                               |
| variance    | float64 [B]           | unbiased variance of the normalised importance scores (CLS excluded)     |
| scores      | float64 [B, N]        | importance scores, CLS fixed at 2.0                                      |
| node_max    | float64 [B, ceil(N/2)]| pool: best cosine similarity of each A token (CLS -inf); NaN if pruned   |
| kept        | int64 [B, N-r]        | prune: kept input positions in output (descending score) order; -1 if pooled |
| merge_src   | int64 [B, r]          | pool: input positions of the merged A tokens, ascending; -1 if pruned   |
| merge_dst   | int64 [B, r]          | pool: input position of the B token each one merged into; -1 if pruned   |
| sizes       | float64 [B, N-r]      | token sizes after the block (patches represented by each token)          |

Both frameworks build their records with `record_from_plan` from the same fields of their `ReductionPlan` (policy,
variance, scores, node_max, dest: the output slot of every input token, -1 if dropped). `dest_from_record` gives
the dest map back, for the visualiser.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np

FIELDS = ("policy", "variance", "scores", "node_max", "kept", "merge_src", "merge_dst", "sizes")
INT_FIELDS = ("policy", "kept", "merge_src", "merge_dst")


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
    sizes: np.ndarray

    @property
    def tokens_out(self) -> int:
        return self.tokens_in - self.r

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


def dest_from_record(t: BlockTrace) -> np.ndarray:
    """Output slot of every input token [B, N] (-1 if pruned): the reduction written as one map."""
    B, N, r = t.batch_size, t.tokens_in, t.r
    dest = np.full((B, N), -1, dtype=np.int64)
    num_a = (N + 1) // 2
    for b in range(B):
        if t.policy[b]:
            merged = np.zeros(N, dtype=bool)
            merged[t.merge_src[b]] = True
            unmerged_a = [p for p in range(0, N, 2) if not merged[p]]
            dest[b, unmerged_a] = np.arange(len(unmerged_a))
            dest[b, 1::2] = num_a - r + np.arange(N // 2)
            dest[b, t.merge_src[b]] = num_a - r + (t.merge_dst[b] - 1) // 2
        else:
            dest[b, t.kept[b]] = np.arange(N - r)
    return dest


def record_from_plan(block: int, r: int, policy, variance, scores, node_max, dest, sizes) -> BlockTrace:
    """A block's record from its ReductionPlan's fields (NumPy, either framework) and the sizes after it: the
    dest map is read back into kept / merge_src / merge_dst."""
    policy = np.asarray(policy).astype(np.int8)
    dest = np.asarray(dest).astype(np.int64)
    B, N = dest.shape
    num_a = (N + 1) // 2
    kept = np.full((B, N - r), -1, dtype=np.int64)
    merge_src = np.full((B, r), -1, dtype=np.int64)
    merge_dst = np.full((B, r), -1, dtype=np.int64)
    node_max = np.asarray(node_max, dtype=np.float64).copy()
    for b in range(B):
        if policy[b]:
            src = np.array([p for p in range(0, N, 2) if dest[b, p] >= num_a - r], dtype=np.int64)
            if src.size != r:
                raise ValueError(f"block {block}, image {b}: {src.size} merged tokens, expected {r}")
            merge_src[b] = src
            merge_dst[b] = 2 * (dest[b, src] - (num_a - r)) + 1
        else:
            order = np.full(N - r, -1, dtype=np.int64)
            live = dest[b] >= 0
            order[dest[b, live]] = np.nonzero(live)[0]
            kept[b] = order
            node_max[b] = np.nan
    return BlockTrace(block=block, tokens_in=N, r=r, policy=policy,
                      variance=np.asarray(variance, dtype=np.float64), scores=np.asarray(scores, dtype=np.float64),
                      node_max=node_max, kept=kept, merge_src=merge_src, merge_dst=merge_dst,
                      sizes=np.asarray(sizes, dtype=np.float64).reshape(B, N - r))


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
