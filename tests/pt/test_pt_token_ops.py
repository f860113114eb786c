"""pt_reference token operations against the NumPy oracle written from the spec."""
import math

import numpy as np
import pytest
import torch

import oracle
from pt_reference import ppt
from ppt_common.proportional import log_size_table


def random_attn(rng, B, H, N):
    logits = rng.randn(B, H, N, N)
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


def test_importance_scores_match_oracle(rng):
    attn, v = random_attn(rng, 2, 3, 9), rng.randn(2, 3, 9, 4)
    got = ppt.importance_scores(torch.from_numpy(attn), torch.from_numpy(v)).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], oracle.importance_scores(attn[b], v[b]), rtol=1e-12)
    assert (got[:, 0] == 2.0).all() and np.allclose(got[:, 1:].sum(-1), 1.0)


def test_variance_is_unbiased(rng):
    s = np.concatenate([[[2.0]], rng.rand(1, 10)], axis=1)
    got = ppt.score_variance(torch.from_numpy(s)).item()
    assert got == pytest.approx(oracle.variance(s[0]), rel=1e-12)
    assert got == pytest.approx(np.var(s[0, 1:], ddof=1), rel=1e-12)
    assert got != pytest.approx(np.var(s[0, 1:], ddof=0), rel=1e-6)


def pool(x, metric, r, size):
    """All images pool: (x, size, matching)."""
    plan = ppt.decide(torch.zeros(x.shape[:2], dtype=x.dtype), metric, r, threshold=math.inf)
    xo, so = ppt.apply_reduction(plan, x, size, r)
    return xo, so, plan.indices.matching


def trace_of(x, scores, metric, size, r, threshold, num_prefix_tokens=1):
    xo, so, _, plan = ppt.reduce_tokens(*(torch.from_numpy(a) for a in (x, scores, metric, size)), r, threshold,
                                         num_prefix_tokens=num_prefix_tokens)
    return xo, so, ppt.trace_record(0, r, plan, so)


def test_prune_keeps_top_scores_in_descending_order_with_stable_ties():
    s = np.array([[2.0, 0.1, 0.3, 0.1, 0.3, 0.2]])
    keep = ppt.prune_indices(torch.from_numpy(s), 2).tolist()[0]
    assert keep == oracle.prune_keep(s[0], 2) == [0, 2, 4, 5]  # ties 0.3 at 2 and 4: lower position first


def test_bipartite_matching_and_weighted_merge_match_oracle(rng):
    N, C, r = 11, 6, 4
    metric = rng.randn(1, N, 5)
    metric[0, 4] = metric[0, 3] * 2.0  # A token 4 ties exactly in direction with B token 3
    x, size = rng.randn(1, N, C), rng.randint(1, 4, size=(1, N, 1)).astype(np.float64)
    xo, so, m = pool(torch.from_numpy(x), torch.from_numpy(metric), r, torch.from_numpy(size))
    merged, node_max = oracle.bipartite(metric[0], r)
    ex, es, groups = oracle.pool_tokens(x[0], size[0, :, 0], merged)
    np.testing.assert_allclose(xo[0].numpy(), ex, rtol=1e-12)
    np.testing.assert_array_equal(so[0, :, 0].numpy(), es)
    np.testing.assert_allclose(m.node_max[0].numpy(), node_max, rtol=1e-12)
    assert xo.shape[1] == N - r


def test_several_sources_merge_into_one_destination():
    # every A token is closest to B token 1: all merged ones land there, weighted by size
    metric = torch.tensor([[[1.0, 0], [1, 0.01], [1, 0.005], [1, 0.5], [1, 0.02]]], dtype=torch.float64)
    x = torch.arange(5, dtype=torch.float64).reshape(1, 5, 1) * 10
    size = torch.tensor([[[1.0], [1], [1], [1], [3]]], dtype=torch.float64)
    xo, so, m = pool(x, metric, 2, size)
    merged, _ = oracle.bipartite(metric[0].numpy(), 2)
    assert sorted(merged) == [(2, 1), (4, 1)]
    ex, es, groups = oracle.pool_tokens(x[0].numpy(), size[0, :, 0].numpy(), merged)
    np.testing.assert_allclose(xo[0].numpy(), ex)
    assert so[0, :, 0].tolist() == [1, 5, 1]  # [CLS, B1 with A2 and A4 merged in, B3]
    assert xo[0, 1, 0].item() == pytest.approx((10 + 20 + 40 * 3) / 5)


def test_cls_is_never_merged_even_when_most_similar(rng):
    metric = torch.ones(1, 7, 3, dtype=torch.float64)  # everything identical
    _, _, m = pool(torch.randn(1, 7, 2, dtype=torch.float64), metric, 3, torch.ones(1, 7, 1, dtype=torch.float64))
    assert 0 not in m.src_idx[0].tolist()
    # all similarities tie: the stable order merges A tokens 1,2,3 (positions 2,4,6) into B token 0 (first max)
    assert m.src_idx[0].tolist() == [1, 2, 3] and m.dst_idx[0].tolist() == [0, 0, 0]


def test_reduce_tokens_mixed_batch_matches_oracle_image_by_image(rng):
    B, N, C, r = 4, 13, 5, 4
    x, metric = rng.randn(B, N, C), rng.randn(B, N, 3)
    scores = np.concatenate([np.full((B, 1), 2.0), rng.dirichlet(np.ones(N - 1), size=B)], axis=1)
    scores[1, 1:] = 1.0 / (N - 1)  # flat: pools at any positive threshold
    scores[2, 1:] = np.eye(N - 1)[0] * 0.9 + 0.1 / (N - 1)  # peaked: prunes
    variances = [oracle.variance(s) for s in scores]
    threshold = float(np.median(variances))
    size = np.ones((B, N, 1))
    xo, so, trace = trace_of(x, scores, metric, size, r, threshold)
    for b in range(B):
        ex, es, _, policy = oracle.reduce(x[b], scores[b], metric[b], size[b, :, 0], r, threshold)
        assert trace.policy[b] == policy
        np.testing.assert_allclose(xo[b].numpy(), ex, rtol=1e-12)
        np.testing.assert_array_equal(so[b, :, 0].numpy(), es)
    assert set(trace.policy.tolist()) == {0, 1}


def test_proportional_attention_adds_log_size_over_keys(rng):
    q, k = rng.randn(1, 2, 5, 4), rng.randn(1, 2, 5, 4)
    size = np.array([[[1.0], [2], [3], [1], [5]]])
    logits = torch.from_numpy(q) @ torch.from_numpy(k).transpose(-1, -2) * 0.5
    log_size = ppt.log_sizes(torch.from_numpy(size), torch.from_numpy(log_size_table(9)))
    got = (logits + ppt.proportional_bias(log_size)).softmax(-1)
    got = got.numpy()
    np.testing.assert_allclose(got[0], oracle.attention_with_bias(q[0], k[0], size[0, :, 0], 0.5), rtol=1e-12)


def test_distillation_token_is_never_pruned_or_merged_even_when_tempting(rng):
    """Two prefix tokens (distilled DeiT): the distillation token gets no CLS attention (pruning would drop it)
    and every A token is most similar to it (pooling would merge them all into it). Neither happens."""
    B, r = 2, 5
    attn, v, metric, x, size = oracle.tempting_distilled_inputs(rng, B)
    scores = ppt.importance_scores(torch.from_numpy(attn), torch.from_numpy(v), 2).numpy()
    for b in range(B):
        np.testing.assert_allclose(scores[b], oracle.importance_scores(attn[b], v[b], prefix=2), rtol=1e-12)
    for threshold in (0.0, 1e9):  # all prune, all pool
        xo, so, trace = trace_of(x, scores, metric, size, r, threshold, num_prefix_tokens=2)
        for b in range(B):
            ex, es, groups, policy = oracle.reduce(x[b], scores[b], metric[b], size[b, :, 0], r, threshold, prefix=2)
            assert trace.policy[b] == policy
            assert groups[0] == [0] and [1] in groups  # class and distillation tokens alone, untouched
            np.testing.assert_allclose(xo[b].numpy(), ex, rtol=1e-12)
            np.testing.assert_array_equal(so[b, :, 0].numpy(), es)
        if threshold == 0.0:
            assert (trace.kept[:, :2] == [0, 1]).all()
        else:
            assert not np.isin(trace.merge_src, [0, 1]).any() and not (trace.merge_dst == 1).any()


def single_rule_inputs(rng, B=3, N=13, C=5):
    scores = np.concatenate([np.full((B, 1), 2.0), rng.dirichlet(np.ones(N - 1), size=B)], axis=1)
    return rng.randn(B, N, C), scores, rng.randn(B, N, 3), rng.randint(1, 3, (B, N, 1)).astype(np.float64)


def reduce_with_source(x, scores, metric, size, r, method, threshold=0.0, num_prefix_tokens=1):
    """(x, size, source rows as lists of input positions, trace record) of one reduction."""
    t = [torch.from_numpy(a) for a in (x, scores, metric, size)]
    source = ppt.initial_source(x.shape[0], x.shape[1], t[0])
    xo, so, src, plan = ppt.reduce_tokens(*t, r, threshold, source=source, num_prefix_tokens=num_prefix_tokens,
                                          method=method)
    groups = [[np.nonzero(row)[0].tolist() for row in img] for img in src.numpy()]
    return xo.numpy(), so.numpy(), groups, ppt.trace_record(0, r, plan, so)


@pytest.mark.parametrize("method", ["prune_fuse", "decouple_merge"])
def test_single_rule_methods_match_oracle_image_by_image(rng, method):
    B, N, r = 3, 13, 4
    x, scores, metric, size = single_rule_inputs(rng, B, N)
    xo, so, groups, record = reduce_with_source(x, scores, metric, size, r, method)
    for b in range(B):
        if method == "prune_fuse":
            ex, es, eg = oracle.prune_fuse(x[b], size[b, :, 0], scores[b], r)
        else:
            ex, es, eg = oracle.decouple_merge(x[b], size[b, :, 0], scores[b], metric[b], r)
        np.testing.assert_allclose(xo[b], ex, rtol=1e-12)
        np.testing.assert_array_equal(so[b, :, 0], es)
        assert groups[b] == [sorted(g) for g in eg]  # the source map holds each output token's inputs
    assert (record.policy == (ppt.PRUNE_FUSE if method == "prune_fuse" else ppt.DECOUPLE_MERGE)).all()
    assert record.tokens_out == (N - r + 1 if method == "prune_fuse" else N - r)


def test_prune_fuse_keeps_what_pruning_keeps_and_fuses_what_it_drops(rng):
    B, N, r = 2, 13, 4
    x, scores, metric, _ = single_rule_inputs(rng, B, N)
    size = np.ones((B, N, 1))
    xp, _, _, pruned = reduce_with_source(x, scores, metric, size, r, "ppt", threshold=0.0)
    xf, sf, groups, fused = reduce_with_source(x, scores, metric, size, r, "prune_fuse")
    np.testing.assert_array_equal(xf[:, :N - r], xp)  # the kept tokens, copied exactly, in pruning's order
    np.testing.assert_array_equal(fused.kept, pruned.kept)
    for b in range(B):
        dropped = sorted(set(range(N)) - set(pruned.kept[b].tolist()))
        assert groups[b][-1] == dropped == fused.merge_src[b].tolist() and sf[b, -1, 0] == r
        w = scores[b, dropped]
        np.testing.assert_allclose(xf[b, -1], (w[:, None] * x[b, dropped]).sum(0) / w.sum(), rtol=1e-12)


def test_decouple_merge_keeps_the_attentive_pair_pooling_merges_and_drops_nothing(rng):
    """Tokens 1 and 2 score highest and are the most similar pair: PPT's pooling merges 2 into 1 and its pruning
    drops the r lowest-scored tokens; decouple-and-merge keeps 1 and 2 apart and merges only among the 2r
    inattentive tokens (positions 5..10 here), so every patch is still held by some token."""
    N, r = 11, 3
    patches = np.linspace(0.2, 0.01, N - 1)  # descending with position
    scores = np.concatenate([[2.0], patches / patches.sum()])[None]
    metric = rng.randn(1, N, 4)
    metric[0, 2] = 3 * metric[0, 1]
    x, size = rng.randn(1, N, 5), np.ones((1, N, 1))
    _, _, _, pooled = reduce_with_source(x, scores, metric, size, r, "ppt", threshold=1e9)
    assert 2 in pooled.merge_src[0] and pooled.merge_dst[0][pooled.merge_src[0].tolist().index(2)] == 1
    _, _, _, pruned = reduce_with_source(x, scores, metric, size, r, "ppt", threshold=0.0)
    assert pruned.kept[0].tolist() == list(range(N - r))
    _, so, groups, dm = reduce_with_source(x, scores, metric, size, r, "decouple_merge")
    assert groups[0][:N - 2 * r] == [[i] for i in range(N - 2 * r)]  # attentive 0..4 kept alone, 1 and 2 apart
    assert dm.merge_src[0].tolist() == [5, 7, 9] and set(dm.merge_dst[0].tolist()) <= {6, 8, 10}
    assert so.sum() == N  # nothing dropped


@pytest.mark.parametrize("method", ["prune_fuse", "decouple_merge"])
def test_single_rule_methods_keep_prefix_tokens_alone_when_tempting(rng, method):
    B, r = 2, 5
    attn, v, metric, x, size = oracle.tempting_distilled_inputs(rng, B)
    scores = ppt.importance_scores(torch.from_numpy(attn), torch.from_numpy(v), 2).numpy()
    _, _, groups, record = reduce_with_source(x, scores, metric, size, r, method, num_prefix_tokens=2)
    for b in range(B):
        assert groups[b][:2] == [[0], [1]]
    assert not np.isin(record.merge_src, [0, 1]).any() and not np.isin(record.merge_dst, [0, 1]).any()
