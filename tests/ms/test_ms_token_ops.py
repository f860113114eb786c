"""ms_ppt token operations against the NumPy oracle (same cases as test_pt_token_ops.py)."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

import oracle
from ms_ppt import ppt
from ppt_common.proportional import log_size_table


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def T(a):
    return Tensor(np.asarray(a), ms.float64)


def test_importance_scores_match_oracle(rng):
    logits = rng.randn(2, 3, 9, 9)
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    v = rng.randn(2, 3, 9, 4)
    got = ppt.importance_scores(T(attn), T(v)).asnumpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], oracle.importance_scores(attn[b], v[b]), rtol=1e-12)


def test_variance_is_unbiased(rng):
    s = np.concatenate([[[2.0]], rng.rand(1, 10)], axis=1)
    assert ppt.score_variance(T(s)).asnumpy()[0] == pytest.approx(np.var(s[0, 1:], ddof=1), rel=1e-12)


def test_prune_dest_keeps_top_scores_in_descending_order_with_stable_ties():
    s = np.array([[2.0, 0.1, 0.3, 0.1, 0.3, 0.2]])
    dest = ppt.prune_dest(T(s), 2).asnumpy()[0]
    kept = [int(np.nonzero(dest == k)[0][0]) for k in range(4)]
    assert kept == oracle.prune_keep(s[0], 2) == [0, 2, 4, 5]
    assert dest[1] == dest[3] == -1


def test_bipartite_matching_and_weighted_merge_match_oracle(rng):
    N, C, r = 11, 6, 4
    metric = rng.randn(1, N, 5)
    metric[0, 4] = metric[0, 3] * 2.0
    x, size = rng.randn(1, N, C), rng.randint(1, 4, size=(1, N, 1)).astype(np.float64)
    dest, node_max = ppt.pool_dest(T(metric), r)
    merged, expected_node_max = oracle.bipartite(metric[0], r)
    np.testing.assert_allclose(node_max.asnumpy()[0], expected_node_max, rtol=1e-12)
    out = ppt.apply_dest(T(np.concatenate([x * size, size], -1)), dest, N - r).asnumpy()[0]
    ex, es, _ = oracle.pool_tokens(x[0], size[0, :, 0], merged)
    np.testing.assert_allclose(out[:, :C] / out[:, C:], ex, rtol=1e-12)
    np.testing.assert_array_equal(out[:, C], es)


def test_cls_is_never_merged_and_ties_take_the_first_partner():
    dest, _ = ppt.pool_dest(T(np.ones((1, 7, 3))), 3)
    dest = dest.asnumpy()[0]
    # unmerged A: only CLS (slot 0); B tokens at slots 1..3; A tokens 2,4,6 all into B token 1 (slot 1)
    assert dest.tolist() == [0, 1, 1, 2, 1, 3, 1]


@pytest.mark.parametrize("threshold", [0.0, 1e9, "mixed"])
def test_reduce_tokens_matches_oracle_image_by_image(rng, threshold):
    B, N, C, r = 4, 13, 5, 4
    x, metric = rng.randn(B, N, C), rng.randn(B, N, 3)
    scores = np.concatenate([np.full((B, 1), 2.0), rng.dirichlet(np.ones(N - 1), size=B)], axis=1)
    if threshold == "mixed":
        threshold = float(np.median([oracle.variance(s) for s in scores]))
    size = rng.randint(1, 3, (B, N, 1)).astype(np.float64)
    xo, so, _, plan = ppt.reduce_tokens(T(x), T(scores), T(metric), T(size), r, threshold)
    record = ppt.trace_record(0, r, plan, so)
    for b in range(B):
        ex, es, _, policy = oracle.reduce(x[b], scores[b], metric[b], size[b, :, 0], r, threshold)
        assert record.policy[b] == policy
        np.testing.assert_allclose(xo.asnumpy()[b], ex, rtol=1e-12)
        np.testing.assert_array_equal(so.asnumpy()[b, :, 0], es)


def test_pruned_tokens_are_copied_exactly_in_float32(rng):
    x = rng.randn(1, 9, 4).astype(np.float32)
    scores = np.array([[2.0, 0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0]], np.float32)
    xo, _, _, _ = ppt.reduce_tokens(Tensor(x), Tensor(scores), Tensor(x), Tensor(np.full((1, 9, 1), 3.0, np.float32)),
                                    3, 0.0)
    np.testing.assert_array_equal(xo.asnumpy()[0], x[0, [0, 1, 2, 3, 4, 5]])


def test_proportional_bias_is_log_size_over_keys(rng):
    size = np.array([[[1.0], [2], [3]]])
    bias = ppt.proportional_bias(ppt.log_sizes(T(size), T(log_size_table(5)))).asnumpy()
    assert bias.shape == (1, 1, 1, 3)
    # the correctly rounded logarithms (math.log: the C library's scalar log; numpy's float64 log is one ulp off
    # log(3) on CPUs with AVX-512, ppt_common.proportional)
    np.testing.assert_array_equal(bias.reshape(-1), [math.log(s) for s in (1, 2, 3)])


def test_distillation_token_is_never_pruned_or_merged_even_when_tempting(rng):
    """Two prefix tokens (distilled DeiT): the distillation token gets no CLS attention (pruning would drop it)
    and every A token is most similar to it (pooling would merge them all into it). Neither happens."""
    B, r = 2, 5
    attn, v, metric, x, size = oracle.tempting_distilled_inputs(rng, B)
    scores = ppt.importance_scores(T(attn), T(v), 2).asnumpy()
    for b in range(B):
        np.testing.assert_allclose(scores[b], oracle.importance_scores(attn[b], v[b], prefix=2), rtol=1e-12)
    for threshold in (0.0, 1e9):  # all prune, all pool
        xo, so, _, plan = ppt.reduce_tokens(T(x), T(scores), T(metric), T(size), r, threshold, num_prefix_tokens=2)
        record = ppt.trace_record(0, r, plan, so)
        for b in range(B):
            ex, es, groups, policy = oracle.reduce(x[b], scores[b], metric[b], size[b, :, 0], r, threshold, prefix=2)
            assert record.policy[b] == policy
            assert groups[0] == [0] and [1] in groups  # class and distillation tokens alone, untouched
            np.testing.assert_allclose(xo.asnumpy()[b], ex, rtol=1e-12)
            np.testing.assert_array_equal(so.asnumpy()[b, :, 0], es)
        if threshold == 0.0:
            assert (record.kept[:, :2] == [0, 1]).all()
        else:
            assert not np.isin(record.merge_src, [0, 1]).any() and not (record.merge_dst == 1).any()


def single_rule_inputs(rng, B=3, N=13, C=5):
    scores = np.concatenate([np.full((B, 1), 2.0), rng.dirichlet(np.ones(N - 1), size=B)], axis=1)
    return rng.randn(B, N, C), scores, rng.randn(B, N, 3), rng.randint(1, 3, (B, N, 1)).astype(np.float64)


def reduce_with_source(x, scores, metric, size, r, method, threshold=0.0, num_prefix_tokens=1):
    """(x, size, source rows as lists of input positions, trace record) of one reduction."""
    source = ppt.initial_source(x.shape[0], x.shape[1], T(x))
    xo, so, src, plan = ppt.reduce_tokens(T(x), T(scores), T(metric), T(size), r, threshold, source,
                                          num_prefix_tokens, method)
    groups = [[np.nonzero(row)[0].tolist() for row in img] for img in src.asnumpy()]
    return xo.asnumpy(), so.asnumpy(), groups, ppt.trace_record(0, r, plan, so)


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
    scores = ppt.importance_scores(T(attn), T(v), 2).asnumpy()
    _, _, groups, record = reduce_with_source(x, scores, metric, size, r, method, num_prefix_tokens=2)
    for b in range(B):
        assert groups[b][:2] == [[0], [1]]
    assert not np.isin(record.merge_src, [0, 1]).any() and not np.isin(record.merge_dst, [0, 1]).any()
