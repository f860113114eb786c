"""Token maps from traces, the visualiser's picture, and MindSpore/PyTorch pictures being identical."""

import numpy as np
import pytest
import torch

import pt_reference
from conftest import DEIT_TINY, IMAGENET_SAMPLE, need_shared_data, run_script
from ppt_common.visual import group_sizes, render_figure, token_maps


def traced(threshold, n=3, seed=0):
    torch.manual_seed(0)
    model = pt_reference.create_model("deit_tiny_patch16_224", threshold=threshold, trace=True, trace_source=True,
                                      dtype="float64")
    x = np.random.RandomState(seed).randn(n, 3, 224, 224)
    with torch.no_grad():
        model(torch.from_numpy(x))
    return model, x


def test_every_patch_is_in_exactly_one_surviving_token_or_pruned_and_sizes_match():
    model, _ = traced(threshold=1.2e-7)  # random init: mixes pool and prune at block 3
    traces = model.ppt_trace
    assert len({int(v) for t in traces for v in t.policy}) == 2
    for i in range(3):
        maps = token_maps(traces, i)
        for t, m in zip(traces, maps):
            assert m.shape == (197,) and m.min() >= -1 and m.max() < t.tokens_out
            assert m[0] == 0  # CLS stays first
            alive = m[m >= 0]
            assert set(alive.tolist()) == set(range(t.tokens_out))  # every surviving token holds something
            np.testing.assert_array_equal(group_sizes(m, t.tokens_out), t.sizes[i])
        # the model's own source map says the same as the composed trace maps
        source = model.ppt_source[i].numpy()
        np.testing.assert_array_equal(source.argmax(0)[source.sum(0) > 0], maps[-1][maps[-1] >= 0])
        assert ((source.sum(0) == 0) == (maps[-1] < 0)).all()


def test_picture_has_one_row_per_image_and_a_panel_per_pp_block():
    model, x = traced(threshold=7e-5, n=2)
    fig = render_figure(x.astype(np.float32), model.ppt_trace, patch=16, scale=1)
    assert fig.size == (4 * (224 + 4) + 4, 2 * (224 + 14 + 4) + 4)


def run(*args):
    return run_script("visualize.py", *args)


@pytest.mark.slow
def test_script_writes_identical_png_for_mindspore_and_pytorch(tmp_path):
    need_shared_data()
    from PIL import Image
    from ppt_common.datasets import find_images
    images = [p for p, _ in find_images(IMAGENET_SAMPLE, split="val")[0][::60]]
    common = ["--checkpoint", DEIT_TINY, "--images", *images, "--dtype", "float64"]
    r_ms = run(*common, "--output", tmp_path / "ms.png")
    r_pt = run(*common, "--framework", "pt", "--output", tmp_path / "pt.png")
    assert r_ms.returncode == 0 and r_pt.returncode == 0, r_ms.stderr + r_pt.stderr
    with Image.open(tmp_path / "ms.png") as a, Image.open(tmp_path / "pt.png") as b:
        assert a.format == "PNG" and a.size == (4 * 228 + 4, len(images) * 242 + 4)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_script_errors(tmp_path):
    res = run("--images", tmp_path / "missing.jpg", "--output", tmp_path / "o.png")
    assert res.returncode == 2 and "missing.jpg" in res.stderr and not (tmp_path / "o.png").exists()
    res = run("--images", tmp_path / "x.jpg", "--output", tmp_path / "o.jpg")
    assert res.returncode == 2 and "must be a .png" in res.stderr
    res = run("--images", tmp_path / "x.jpg", "--output", "/proc/o.png")
    assert res.returncode == 2 and "not writable" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "o.png").write_bytes(b"keep")
    res = run("--images", tmp_path / "x.jpg", "--output", tmp_path / "o.png")
    assert res.returncode == 2 and "--force" in res.stderr and (tmp_path / "o.png").read_bytes() == b"keep"
