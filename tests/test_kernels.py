"""ms_ppt's compiled CPU kernels: same results as MindSpore's kernels, and a clean fallback."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from ms_ppt import kernels
from ms_ppt.vision_transformer import GELU


def test_gelu_kernel_matches_exact_gelu_to_float32_accuracy():
    from scipy.special import erfc
    if kernels.build("gelu_cpu") is None:
        pytest.skip("no C++ compiler on this machine: the model uses MindSpore's GELU (tested everywhere else)")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.concatenate([np.linspace(-12, 12, 100001), np.random.RandomState(0).randn(50000) * 3]).astype(np.float32)
    fast = GELU(custom_kernels=True)
    assert fast.use_fast
    got = fast(ms.Tensor(x)).asnumpy()
    exact = 0.5 * x.astype(np.float64) * erfc(-x.astype(np.float64) / np.sqrt(2))
    mindspore_kernel = nn.GELU(approximate=False)(ms.Tensor(x)).asnumpy()
    assert np.abs(got - exact).max() < 6e-7  # MindSpore's own float32 kernel: 4.5e-7
    assert np.abs(mindspore_kernel - exact).max() < 6e-7


def test_kernels_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("MS_PPT_CUSTOM_KERNELS", "0")
    kernels.build.cache_clear()
    try:
        assert kernels.build("gelu_cpu") is None
        assert not GELU(custom_kernels=True).use_fast
    finally:
        kernels.build.cache_clear()


def test_missing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("MS_PPT_CACHE", str(tmp_path))
    kernels.build.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
            assert kernels.build("gelu_cpu") is None
    finally:
        kernels.build.cache_clear()


def test_kernel_builds_from_source_into_an_empty_cache(monkeypatch, tmp_path):
    import shutil
    if shutil.which("g++") is None:
        pytest.skip("no g++ on this machine: the fallback is tested above")
    monkeypatch.setenv("MS_PPT_CACHE", str(tmp_path))
    kernels.build.cache_clear()
    try:
        path = kernels.build("gelu_cpu")
        assert path is not None and path.startswith(str(tmp_path)) and path.endswith(".so")
        assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]  # no temporary left behind
    finally:
        kernels.build.cache_clear()
