"""A threshold per PP block: both frameworks take the i-th PP block's own threshold, token for token."""
import json

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_ppt
import pt_reference
from ms_ppt.vision_transformer import params_from_numpy
from ppt_common.config import PPTConfig
from ppt_common.trace import compare_traces

TINY = "deit_tiny_patch16_224"
PP, R = (2, 5, 8, 10), (12, 30, 8, 20)


def pt_model(cfg, dtype="float64"):
    torch.manual_seed(0)
    return pt_reference.create_model(TINY, ppt_config=cfg, dtype=dtype, trace=True)


def run_pt(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy(), model.ppt_trace


def non_uniform(x):
    """Pool-only at block 2, prune-only at block 5, a mix at block 8 (midway between its variances), pool at 10."""
    _, trace = run_pt(pt_model(PPTConfig(r=R, pp_loc_list=PP, threshold=(1.0, 0.0, 0.0, 1.0))), x)
    v = np.sort(trace[2].variance)
    return PPTConfig(r=R, pp_loc_list=PP, threshold=(1.0, 0.0, float(np.sqrt(v[0] * v[-1])), 1.0))


def test_both_frameworks_take_each_blocks_own_threshold_float64():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.random.RandomState(0).randn(3, 3, 224, 224)
    cfg = non_uniform(x)
    pt = pt_model(cfg)
    pt_logits, pt_trace = run_pt(pt, x)
    msm = ms_ppt.create_model(TINY, ppt_config=cfg, dtype="float64", trace=True)
    params_from_numpy(msm, {k: v.numpy() for k, v in pt.state_dict().items()})
    ms_logits, ms_trace, _ = ms_ppt.run_with_trace(msm, x)
    assert [set(t.policy.tolist()) for t in pt_trace] == [{1}, {0}, {0, 1}, {1}]
    assert compare_traces(pt_trace, ms_trace) == []
    np.testing.assert_allclose(ms_logits, pt_logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("thresholds, expected", [((1.0, 0.0, 1.0, 0.0), [1, 0, 1, 0]),
                                                  ((0.0, 1.0, 0.0, 1.0), [0, 1, 0, 1])])
def test_the_fused_float32_kernel_takes_each_blocks_own_threshold(thresholds, expected):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = ms_ppt.create_model(TINY, r=R, pp_loc_list=PP, threshold=thresholds, trace=True)
    assert all(block.reduction.fused for block in model.blocks if block.reduces)
    _, traces, _ = ms_ppt.run_with_trace(model, np.random.RandomState(1).randn(2, 3, 224, 224).astype(np.float32))
    assert [set(t.policy.tolist()) for t in traces] == [{e} for e in expected]


def test_a_schedule_file_gives_identical_selections_in_both_frameworks_and_its_macs(tmp_path):
    """create_model(schedule=FILE) in both frameworks: every trace field equal in float64, the model's MACs the
    file's."""
    from ppt_common.macs import gmacs
    from ppt_common.schedule import make_schedule, save_schedule
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.random.RandomState(2).randn(3, 3, 224, 224)
    cfg = non_uniform(x)
    path = str(tmp_path / "schedule.json")
    save_schedule(path, make_schedule(TINY, zip(PP, R, cfg.threshold), target_gmacs=1.05))
    torch.manual_seed(0)
    pt = pt_reference.create_model(TINY, schedule=path, dtype="float64", trace=True)
    msm = ms_ppt.create_model(TINY, schedule=path, dtype="float64", trace=True)
    params_from_numpy(msm, {k: v.numpy() for k, v in pt.state_dict().items()})
    assert pt.ppt_config == msm.ppt_config == cfg
    pt_logits, pt_trace = run_pt(pt, x)
    ms_logits, ms_trace, _ = ms_ppt.run_with_trace(msm, x)
    assert [t.block for t in pt_trace] == list(PP) and {0, 1} <= set(np.concatenate([t.policy for t in pt_trace]))
    assert compare_traces(pt_trace, ms_trace) == []
    np.testing.assert_allclose(ms_logits, pt_logits, rtol=0, atol=1e-9)
    assert round(gmacs(msm.arch, msm.ppt_config), 6) == json.load(open(path))["gmacs"]
