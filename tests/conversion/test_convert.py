"""Checkpoint conversion: bit-exact round trips, strictness, and every bad input refused with no file left."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import convert
from conftest import DEIT_TINY, ROOT, need_shared_data
from convert import CheckpointError
from pt_reference.factory import build_timm_model
from ppt_common.config import get_arch


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_timm_model(get_arch("deit_tiny_patch16_224")).state_dict().items()}


def save_official(state, path):
    torch.save({"model": state, "epoch": 299}, path)  # the official DeiT release layout


def test_pt_to_ms_to_pt_is_bit_exact(tmp_path, tiny_state):
    src, ckpt, back = tmp_path / "deit.pth", tmp_path / "deit.ckpt", tmp_path / "back.safetensors"
    save_official(tiny_state, src)
    assert convert.pt2ms(src, ckpt) == "deit_tiny_patch16_224"
    convert.ms2pt(ckpt, back)
    again = convert.read_state_dict(back)
    assert set(again) == set(tiny_state)
    for k, v in tiny_state.items():
        np.testing.assert_array_equal(again[k], v.numpy(), err_msg=k)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_wrapped_and_prefixed_state_dicts_are_accepted(tmp_path, tiny_state, wrap):
    state = {("module." + k if wrap == "module_prefix" else k): v for k, v in tiny_state.items()}
    torch.save({"state_dict": state} if wrap == "state_dict" else state, tmp_path / "x.bin")
    assert convert.pt2ms(tmp_path / "x.bin", tmp_path / "x.ckpt") == "deit_tiny_patch16_224"


def test_half_precision_sources_become_float32(tmp_path, tiny_state):
    torch.save({k: v.to(torch.bfloat16) for k, v in tiny_state.items()}, tmp_path / "bf16.pth")
    state = convert.read_state_dict(tmp_path / "bf16.pth")
    assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(state["pos_embed"], tiny_state["pos_embed"].to(torch.bfloat16).float().numpy())


def test_architecture_is_inferred_from_the_tensors(tiny_state):
    name, arch = convert.infer_arch({k: v.numpy() for k, v in tiny_state.items()})
    assert name == "deit_tiny_patch16_224"
    assert (arch.depth, arch.embed_dim, arch.num_heads, arch.patch_size, arch.img_size) == (12, 192, 3, 16, 224)


def test_missing_unexpected_and_misshaped_keys_are_listed_together(tmp_path, tiny_state):
    bad = dict(tiny_state)
    del bad["blocks.3.mlp.fc1.bias"]
    bad["extra.weight"] = torch.zeros(3)
    bad["norm.weight"] = torch.zeros(5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        convert.pt2ms(tmp_path / "bad.pth", tmp_path / "bad.ckpt")
    msg = str(e.value)
    assert "blocks.3.mlp.fc1.bias" in msg and "extra.weight" in msg and "norm.weight: (5,) vs (192,)" in msg
    assert not (tmp_path / "bad.ckpt").exists()


def test_model_mismatch_is_an_error_not_a_partial_load(tmp_path, tiny_state):
    torch.save(tiny_state, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError) as e:
        convert.pt2ms(tmp_path / "tiny.pth", tmp_path / "x.ckpt", model="deit_small_patch16_224")
    assert os.listdir(tmp_path) == ["tiny.pth"]
    message = str(e.value)  # a summary, not 150 shapes on one line
    assert "151 tensors of the wrong shape" in message and "(148 more)" in message and len(message) < 600
    assert message.endswith("look like deit_tiny_patch16_224")


@pytest.mark.parametrize("name, content, message", [
    ("x.pth", b"", r"the file is empty \(0 bytes\)"),
    ("x.ckpt", b"", r"the file is empty \(0 bytes\)"),  # not MindSpore's words about 'filter_prefix'
    ("x.pth", b"this is not a checkpoint", "cannot read checkpoint"),
])
def test_unreadable_files_are_refused(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        convert.ms2pt(tmp_path / name, tmp_path / "y.pth") if name.endswith(".ckpt") else \
            convert.pt2ms(tmp_path / name, tmp_path / "y.ckpt")
    assert sorted(os.listdir(tmp_path)) == [name]


def test_a_checkpoint_of_training_state_alone_is_named_so(tmp_path):
    import mindspore as ms
    ms.save_checkpoint([{"name": "adam_m.head.weight", "data": ms.Tensor([1.0])},
                        {"name": "epoch", "data": ms.Tensor(1)}], str(tmp_path / "opt.ckpt"))
    with pytest.raises(CheckpointError, match="holds only training state .*no model weights"):
        convert.ms2pt(tmp_path / "opt.ckpt", tmp_path / "y.pth")


def test_truncated_checkpoint_is_refused(tmp_path, tiny_state):
    torch.save(tiny_state, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        convert.read_state_dict(tmp_path / "cut.pth")


def test_non_tensor_pickles_are_refused_by_the_safe_loader(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}, "fn": print}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        convert.read_state_dict(tmp_path / "evil.pth")


def test_existing_output_needs_force(tmp_path, tiny_state):
    save_official(tiny_state, tmp_path / "a.pth")
    (tmp_path / "a.ckpt").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--force"):
        convert.pt2ms(tmp_path / "a.pth", tmp_path / "a.ckpt")
    assert (tmp_path / "a.ckpt").read_bytes() == b"keep me"
    convert.pt2ms(tmp_path / "a.pth", tmp_path / "a.ckpt", force=True)
    assert convert.read_state_dict(tmp_path / "a.ckpt").keys() == tiny_state.keys()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_converts_and_reports_errors_with_exit_code(tmp_path, tiny_state):
    save_official(tiny_state, tmp_path / "a.pth")
    ok = run_cli("pt2ms", tmp_path / "a.pth", tmp_path / "a.ckpt")
    assert ok.returncode == 0 and "deit_tiny_patch16_224" in ok.stdout, ok.stderr
    missing = run_cli("pt2ms", tmp_path / "nope.pth", tmp_path / "b.ckpt")
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    assert "Traceback" not in missing.stderr and "total_instance_count" not in missing.stderr
    no_dir = run_cli("ms2pt", tmp_path / "a.ckpt", tmp_path / "no" / "dir" / "a.pth")
    assert no_dir.returncode == 2 and "output folder does not exist" in no_dir.stderr
    read_only = run_cli("ms2pt", tmp_path / "a.ckpt", "/proc/a.pth")
    assert read_only.returncode == 2 and "not writable" in read_only.stderr and "Traceback" not in read_only.stderr
    folder = run_cli("ms2pt", tmp_path / "a.ckpt", tmp_path)
    assert folder.returncode == 2 and "Traceback" not in folder.stderr


@pytest.mark.slow
def test_real_deit_tiny_converts_and_gives_timm_logits(tmp_path):
    need_shared_data()
    import mindspore as ms
    import ms_ppt
    ms.set_context(mode=ms.PYNATIVE_MODE)
    convert.pt2ms(DEIT_TINY, tmp_path / "t.ckpt")
    torch_state = torch.load(DEIT_TINY, weights_only=True)["model"]
    for k, v in convert.read_state_dict(tmp_path / "t.ckpt").items():
        np.testing.assert_array_equal(v, torch_state[k].numpy(), err_msg=k)
    x = np.random.RandomState(0).randn(2, 3, 224, 224)
    timm_model = build_timm_model(get_arch("deit_tiny_patch16_224")).double().eval()
    timm_model.load_state_dict(torch_state)
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(x)).numpy()
    for dtype, tol in (("float64", 1e-9), ("float32", 1e-4)):
        model = ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=str(tmp_path / "t.ckpt"), r=0, dtype=dtype)
        got = model(ms.Tensor(x, model.cls_token.dtype)).asnumpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol)


NEW_BACKBONES = ["deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
                 "deit_base_distilled_patch16_224", "deit_base_distilled_patch16_384", "deit3_small_patch16_224",
                 "deit3_small_patch16_384", "deit3_base_patch16_224", "deit3_base_patch16_384",
                 "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224"]


@pytest.mark.parametrize("name", NEW_BACKBONES)
@pytest.mark.slow
def test_timm_state_dicts_of_every_backbone_round_trip_bit_exactly(tmp_path, name):
    torch.manual_seed(0)
    state = build_timm_model(get_arch(name)).state_dict()
    assert set(state) == set(convert.expected_shapes(get_arch(name)))  # the shapes derive from the flags
    torch.save(state, tmp_path / "timm.pth")
    # the weights cannot tell quick GELU from GELU: the name says it
    model = name if "quickgelu" in name else None
    assert convert.pt2ms(tmp_path / "timm.pth", tmp_path / "m.ckpt", model=model) == name
    convert.ms2pt(tmp_path / "m.ckpt", tmp_path / "back.safetensors")
    back = convert.read_state_dict(tmp_path / "back.safetensors")
    assert set(back) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


@pytest.mark.slow
def test_official_deit3_release_with_gamma_keys_loads_through_the_cli(tmp_path):
    torch.manual_seed(0)
    state = build_timm_model(get_arch("deit3_small_patch16_224")).state_dict()
    official = {k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v for k, v in state.items()}
    assert "blocks.0.gamma_1" in official
    save_official(official, tmp_path / "deit_3_small_224_1k.pth")
    res = run_cli("pt2ms", tmp_path / "deit_3_small_224_1k.pth", tmp_path / "d3.ckpt")
    assert res.returncode == 0 and "deit3_small_patch16_224" in res.stdout, res.stderr
    np.testing.assert_array_equal(convert.read_state_dict(tmp_path / "d3.ckpt")["blocks.11.ls2.gamma"],
                                  state["blocks.11.ls2.gamma"].numpy())


def test_ckpt_loading_counts_the_page_cache_as_available_memory(tmp_path, tiny_state, monkeypatch):
    """MindSpore 2.10 compares a .ckpt's size with *free* memory, which a full page cache makes tiny (CI refused a
    350 MB ViT-B checkpoint with 22 GB available); ours measures MemAvailable."""
    import mindspore as ms
    save_official(tiny_state, tmp_path / "t.pth")
    convert.pt2ms(tmp_path / "t.pth", tmp_path / "t.ckpt")
    real_sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real_sysconf(name))
    with pytest.raises(ValueError, match="exceeds current available memory"):
        ms.load_checkpoint(str(tmp_path / "t.ckpt"))
    state = convert.read_state_dict(tmp_path / "t.ckpt")
    np.testing.assert_array_equal(state["pos_embed"], tiny_state["pos_embed"].numpy())
