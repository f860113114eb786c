"""Analytic multiply-accumulate count per image (what the paper calls GFLOPs), from the configuration.

Counted: the patch projection, qkv/proj/fc1/fc2 linears, q@k^T and attn@v, the head, LayerNorm's affine step
(x_hat * weight + bias: one multiply-add per element) and, in each reducing PP block, the similarity matmul its
method needs (similarity_macs). Softmax, GELU and the other elementwise work are left out. This reproduces the
authors' figures: DeiT-S 4.60 dense and 2.944 with PPT (r=50 at 3 6 9).
"""
from __future__ import annotations

from typing import Sequence, Tuple

from ppt_common.config import DEFAULT_METHOD, ArchConfig, PPTConfig, arch_schedule


def similarity_macs(method: str, n_in: int, r: int, head_dim: int) -> int:
    """The cosine similarities a reducing block computes: ToMe's bipartite matmul (ceil(N/2) x floor(N/2) x
    head_dim) wherever an image may pool (ppt at any threshold, pool), r x r among the inattentive tokens for
    decouple_merge, none for the pruning methods."""
    if r == 0 or method in ("prune", "prune_fuse"):
        return 0
    if method == "decouple_merge":
        return r * r * head_dim
    return ((n_in + 1) // 2) * (n_in // 2) * head_dim


def block_macs(n_in: int, n_out: int, dim: int, hidden: int, head_dim: int, similarity: int = 0) -> int:
    """Attention on n_in tokens, the reduction's similarity MACs, MLP on the n_out tokens left."""
    attn = n_in * dim + n_in * dim * 3 * dim + 2 * n_in * n_in * dim + n_in * dim * dim
    mlp = n_out * dim + 2 * n_out * dim * hidden
    return attn + similarity + mlp


def count_macs(arch: ArchConfig, ppt: PPTConfig = None) -> int:
    ppt = ppt if ppt is not None else PPTConfig(r=0, pp_loc_list=())
    C = arch.embed_dim
    total = arch.num_patches * arch.in_chans * arch.patch_size ** 2 * C  # patch projection
    if arch.pre_norm:
        total += arch.num_tokens * C  # norm_pre's affine step
    head_dim = C // arch.num_heads
    for plan in arch_schedule(arch, ppt):
        total += block_macs(plan.tokens_in, plan.tokens_out, C, arch.mlp_hidden, head_dim,
                            similarity_macs(ppt.method, plan.tokens_in, plan.r, head_dim))
        n_final = plan.tokens_out
    heads = 2 if arch.distilled else 1  # distilled DeiT: head and head_dist
    return total + n_final * C + heads * C * arch.num_classes  # final norm, head(s)


def gmacs(arch: ArchConfig, ppt: PPTConfig = None) -> float:
    return count_macs(arch, ppt) / 1e9


TARGET_RULE = "the r nearest the target, the same at every PP block, ties to the smaller r (more tokens kept)"


def r_for_target_gmacs(arch: ArchConfig, target: float, pp_loc_list: Sequence[int],
                       method: str = DEFAULT_METHOD) -> Tuple[int, float, str]:
    """The r, taken at every PP block of pp_loc_list by `method`, whose analytic GMACs are nearest to target
    (TARGET_RULE).
    Returns (r, its GMACs, a sentence giving the choice, its neighbours and the rule). Beyond the r at which every
    PP block is clamped (token_schedule) nothing changes, so the search stops there."""
    if not target > 0:
        raise ValueError(f"the GMACs target must be positive, got {target}")
    reachable, last_schedule = [], None
    for r in range(arch.num_tokens):
        ppt = PPTConfig(r=r, pp_loc_list=tuple(pp_loc_list), method=method)
        schedule = [plan.r for plan in arch_schedule(arch, ppt)]
        if schedule == last_schedule:
            break
        reachable.append(gmacs(arch, ppt))
        last_schedule = schedule
    r = min(range(len(reachable)), key=lambda k: (abs(reachable[k] - target), k))
    neighbours = ", ".join(f"r={k}: {reachable[k]:.4f}" for k in (r - 1, r + 1) if 0 <= k < len(reachable))
    method_note = "" if method == DEFAULT_METHOD else f" ({method})"
    message = (f"--target-gmacs {target:g}: r={r}{method_note} at blocks {list(pp_loc_list)} gives {reachable[r]:.4f} GMACs "
               f"({neighbours}); rule: {TARGET_RULE}")
    if not reachable[-1] <= target <= reachable[0]:
        message += f"; the target is outside the reachable {reachable[-1]:.4f}-{reachable[0]:.4f}"
    return r, reachable[r], message
