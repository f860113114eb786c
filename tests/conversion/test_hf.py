"""Hugging Face transformers folders, both directions: small random models built and saved locally (no download),
their float64 logits compared with transformers' own forward."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from transformers import (DeiTConfig, DeiTForImageClassificationWithTeacher,
                          ViTConfig, ViTForImageClassification)

import convert
import ms_ppt
import pt_reference
from conftest import ROOT
from convert import CheckpointError, hf
from ppt_common.errors import OutputExistsError

TOL = 1e-9
SMALL = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, image_size=32,
             patch_size=8, num_labels=10)
# (transformers class, config overrides, save_pretrained keywords): head dims 16, 64 and 32; eps 1e-12 (the hub's
# DeiT value), 1e-6; exact GELU and quick GELU; qkv bias or none; one file, a .bin, shards
CASES = {
    "vit_eps1e-12_head16": (ViTForImageClassification, dict(layer_norm_eps=1e-12), {}),
    "vit_head64_quickgelu_nobias_bin": (ViTForImageClassification,
                                        dict(hidden_size=128, num_attention_heads=2, intermediate_size=192,
                                             hidden_act="quick_gelu", qkv_bias=False, layer_norm_eps=1e-6),
                                        dict(bin=True)),
    "deit_teacher_eps1e-12_head32_sharded": (DeiTForImageClassificationWithTeacher,
                                             dict(num_attention_heads=2, layer_norm_eps=1e-12),
                                             dict(max_shard_size="100KB")),
}
MEASURED = {}  # case/direction -> max |logit difference|, printed at the end of the module


def build_hf(cls, seed=0, **overrides):
    """A random transformers model with weights far from their init (LayerNorms included), in float32."""
    config_class = DeiTConfig if cls.config_class is DeiTConfig else ViTConfig
    torch.manual_seed(seed)
    model = cls(config_class(**{**SMALL, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "layernorm" in name and name.endswith("weight")
                    else 0.3 * torch.randn_like(p))
    return model.eval()


def save(model, folder, **kwargs):
    """save_pretrained; bin=True: the same tensors as pytorch_model.bin, the hub's older layout (transformers 5
    writes safetensors only)."""
    bin = kwargs.pop("bin", False)
    model.save_pretrained(folder, **kwargs)
    if bin:
        from safetensors.torch import load_file
        weights = os.path.join(folder, "model.safetensors")
        torch.save(load_file(weights), os.path.join(folder, "pytorch_model.bin"))
        os.remove(weights)
    return str(folder)


def hf_logits(folder, cls, x):
    model = cls.from_pretrained(folder).double().eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).logits.numpy()


def ms_logits(x, **kwargs):
    model = ms_ppt.create_model(pp_loc_list=(), dtype="float64", custom_kernels=False, **kwargs)
    return model(ms.Tensor(x)).asnumpy()


def pt_logits(x, **kwargs):
    model = pt_reference.create_model(pp_loc_list=(), dtype="float64", **kwargs)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def images(n=3, channels=3, size=32, seed=1):
    return np.random.RandomState(seed).randn(n, channels, size, size)


def measure(key, got, want):
    assert got.shape == want.shape
    MEASURED[key] = float(np.abs(got - want).max())
    assert MEASURED[key] <= TOL, (key, MEASURED[key])


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nmax |logit difference| against transformers (float64):")
    for key, value in sorted(MEASURED.items()):
        print(f"  {key}: {value:.2e}")


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    cls, overrides, save_kwargs = CASES[request.param]
    folder = save(build_hf(cls, **overrides), tmp_path_factory.mktemp(request.param), **save_kwargs)
    return request.param, cls, folder


def test_the_cases_cover_bin_shards_and_safetensors(case):
    name, _, folder = case
    files = os.listdir(folder)
    want = ("pytorch_model.bin" if name.endswith("_bin") else "model.safetensors.index.json" if "sharded" in name
            else "model.safetensors")
    assert want in files, files


def test_a_folder_loads_in_both_frameworks_with_the_logits_of_transformers(case):
    name, cls, folder = case
    x = images()
    want = hf_logits(folder, cls, x)
    measure(f"{name} MindSpore", ms_logits(x, checkpoint=folder), want)
    measure(f"{name} PyTorch reference", pt_logits(x, checkpoint=folder), want)


def test_the_config_is_honoured_not_the_defaults(case):
    name, cls, folder = case
    config = json.load(open(os.path.join(folder, "config.json")))
    model = ms_ppt.create_model(checkpoint=folder, pp_loc_list=(), custom_kernels=False)
    arch = model.arch
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.mlp_hidden, arch.img_size, arch.patch_size,
            arch.norm_eps, arch.act, arch.qkv_bias, arch.num_classes, arch.distilled) == (
        config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
        config["intermediate_size"], config["image_size"], config["patch_size"], config["layer_norm_eps"],
        config["hidden_act"], config["qkv_bias"], len(config["id2label"]), cls is DeiTForImageClassificationWithTeacher)
    norms = [c for _, c in model.cells_and_names() if type(c).__name__ == "LayerNorm"]
    assert len(norms) == 2 * arch.depth + 1 and {c.eps for c in norms} == {config["layer_norm_eps"]}
    pt = pt_reference.create_model(checkpoint=folder, pp_loc_list=())
    assert {m.eps for m in pt.modules() if isinstance(m, torch.nn.LayerNorm)} == {config["layer_norm_eps"]}


def test_pt2ms_converts_a_folder_and_the_ckpt_records_its_architecture(case, tmp_path):
    """The .ckpt keeps what its tensors cannot show (heads, eps, activation): it builds the same network alone."""
    name, cls, folder = case
    ckpt = tmp_path / "model.ckpt"
    assert convert.pt2ms(folder, ckpt) == "custom"
    x = images()
    model = ms_ppt.create_model(checkpoint=str(ckpt), pp_loc_list=(), dtype="float64", custom_kernels=False)
    assert model.arch == hf.read_folder(folder).arch
    measure(f"{name} MindSpore via pt2ms .ckpt", model(ms.Tensor(x)).asnumpy(), hf_logits(folder, cls, x))


def test_ms2pt_writes_a_folder_transformers_loads_with_our_logits(case, tmp_path):
    """Ours -> hf: the .ckpt's weights and recorded architecture, read back by transformers' from_pretrained."""
    name, cls, folder = case
    ckpt, out = tmp_path / "model.ckpt", tmp_path / "hf_out"
    convert.pt2ms(folder, ckpt)
    model = ms_ppt.create_model(checkpoint=str(ckpt), pp_loc_list=(), dtype="float64", custom_kernels=False)
    names = [f"class {i}" for i in range(model.arch.num_classes)]
    assert convert.ms2pt(ckpt, out, format="hf", class_names=names) == "custom"
    x = images()
    back = cls.from_pretrained(str(out))
    assert type(back) is cls and back.config.id2label[3] == "class 3"
    measure(f"{name} ours -> hf folder", hf_logits(str(out), cls, x), model(ms.Tensor(x)).asnumpy())
    written = json.load(open(os.path.join(out, "config.json")))
    assert (written["layer_norm_eps"], written["hidden_act"], written["num_attention_heads"]) == (
        model.arch.norm_eps, model.arch.act, model.arch.num_heads)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def test_a_custom_file_that_records_nothing_is_refused_where_its_architecture_is_needed(tmp_path):
    folder = save(build_hf(ViTForImageClassification), tmp_path / "vit")
    bare = tmp_path / "bare.ckpt"
    convert.write_state_dict(convert.read_state_dict(folder), bare)  # weights only: 4 heads and eps 1e-12 lost
    with pytest.raises(CheckpointError, match="matches no registered model and does not record its architecture"):
        convert.ms2pt(bare, tmp_path / "out", format="hf")
    with pytest.raises(CheckpointError, match="does not record its architecture .*: name the model"):
        ms_ppt.create_model(checkpoint=str(bare))
    assert sorted(os.listdir(tmp_path)) == ["bare.ckpt", "vit"]


def test_a_registered_name_checks_the_shapes_and_takes_the_config_values(tmp_path):
    """The hub's DeiT-Tiny layout (eps 1e-12) under the name deit_tiny_patch16_224: timm's eps (1e-6) is replaced
    by the folder's, and the logits are transformers' own."""
    model = build_hf(ViTForImageClassification, hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=768, image_size=224, patch_size=16, num_labels=1000)
    model.config.num_hidden_layers = 12  # too deep to run quickly: the name's check is on the shapes
    folder = save(model, tmp_path / "two_blocks")
    with pytest.raises(CheckpointError, match=r"does not match the model deit_tiny_patch16_224: 120 missing "
                                              r"keys \(blocks\.10\."):
        convert.load_checked(folder, "deit_tiny_patch16_224")


def test_a_folder_under_a_registered_name(tmp_path):
    model = build_hf(ViTForImageClassification, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                     intermediate_size=768, image_size=224, patch_size=16, num_labels=1000)
    folder = save(model, tmp_path / "deit_tiny")
    name, arch, _ = convert.load_checked(folder, "deit_tiny_patch16_224")
    assert name == "deit_tiny_patch16_224" and arch.norm_eps == 1e-12 and arch.num_heads == 3
    assert convert.load_checked(folder)[0] == "deit_tiny_patch16_224"  # the registry name, eps aside
    x = images(n=1, size=224)
    measure("deit_tiny layout by name, MindSpore",
            ms_logits(x, name="deit_tiny_patch16_224", checkpoint=folder), hf_logits(folder, ViTForImageClassification, x))
    with pytest.raises(CheckpointError, match=r"another network than the model deit_tiny_patch16_224 \(checkpoint vs model: "
                                              r"num_heads 6 vs 3\)"):  # heads leave no trace in the shapes
        model.config.num_attention_heads = 6
        convert.load_checked(save(model, tmp_path / "six_heads"), "deit_tiny_patch16_224")


@pytest.mark.parametrize("change, message", [
    (dict(hidden_act="gelu_new"), "hidden_act 'gelu_new' is not supported"),
    (dict(hidden_act="relu"), "hidden_act 'relu' is not supported"),
    (dict(model_type="swin"), "model_type 'swin' is not supported"),
    (dict(architectures=["DeiTForImageClassification"], model_type="deit"),
     "DeiTForImageClassification is not supported: it classifies from the class token alone"),
    (dict(architectures=["ViTModel"]), "ViTModel is not supported: it has no classification head"),
    (dict(image_size=[32, 48]), r"image_size \[32, 48\] is not square"),
])
def test_what_the_model_cannot_honour_is_refused_by_name(tmp_path, change, message):
    folder = save(build_hf(ViTForImageClassification), tmp_path / "vit")
    config = json.load(open(os.path.join(folder, "config.json")))
    json.dump({**config, **change}, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=message):
        ms_ppt.create_model(checkpoint=folder)


def test_unknown_tensors_are_refused_and_unused_ones_skipped(tmp_path):
    from safetensors.torch import load_file, save_file
    folder = save(build_hf(ViTForImageClassification), tmp_path / "vit")
    weights = os.path.join(folder, "model.safetensors")
    state = load_file(weights)
    save_file({**state, "vit.embeddings.mask_token": torch.zeros(1, 1, 64),  # used only for masked-image modelling
               "vit.pooler.dense.weight": torch.zeros(64, 64), "vit.pooler.dense.bias": torch.zeros(64)}, weights)
    convert.load_checked(folder)
    save_file({**state, "vit.encoder.layer.0.lambda1": torch.ones(64)}, weights)  # a LayerScale of another model
    with pytest.raises(CheckpointError, match="1 tensor.* ViTForImageClassification does not have: "
                                              r"vit\.encoder\.layer\.0\.lambda1"):
        convert.load_checked(folder)


def test_transformers_5_in_memory_names_are_read_too(tmp_path):
    """transformers 5 names q/k/v_proj, o_proj and mlp.fc1/fc2 in memory (its files keep the old names)."""
    model = build_hf(ViTForImageClassification)
    folder = save(model, tmp_path / "vit")
    from safetensors.torch import save_file
    os.remove(os.path.join(folder, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    assert any(".q_proj." in k for k in model.state_dict())
    x = images()
    measure("vit in-memory names MindSpore", ms_logits(x, checkpoint=folder), hf_logits(folder, ViTForImageClassification, x))


def test_deit_iii_and_clip_are_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "deit3.ckpt"
    convert.write_state_dict({k: v.numpy() for k, v in pt_reference.factory.build_timm_model(
        pt_reference.factory.MODEL_CONFIGS["deit3_small_patch16_224"]).state_dict().items()}, src)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="LayerScale .* a position embedding without the class token .* "
                                              "cannot represent it"):
        convert.ms2pt(src, out, format="hf")
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["deit3.ckpt"]
    clip = pt_reference.factory.MODEL_CONFIGS["vit_base_patch16_clip_224"]
    with pytest.raises(CheckpointError, match="CLIP's norm_pre"):
        hf.config_for(clip)


def test_an_existing_output_folder_needs_force(tmp_path, case):
    name, cls, folder = case
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="exists and is not empty; pass --force"):
        convert.ms2pt(folder, out, format="hf")
    assert os.listdir(out) == ["keep.txt"]
    convert.ms2pt(folder, out, format="hf", force=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left beside it


@pytest.mark.slow  # two converter processes, ~14 s
def test_the_command_line_both_ways(tmp_path):
    """Hub folder -> .ckpt -> hub folder by `python -m convert`: transformers gives the same logits for both."""
    folder = save(build_hf(DeiTForImageClassificationWithTeacher, num_attention_heads=2), tmp_path / "deit")
    ckpt, out = tmp_path / "deit.ckpt", tmp_path / "back"
    run = lambda *args: subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    done = run("pt2ms", folder, ckpt)
    assert done.returncode == 0 and "(custom)" in done.stdout, done.stderr
    done = run("ms2pt", ckpt, out, "--format", "hf")
    assert done.returncode == 0, done.stderr
    x = images()
    cls = DeiTForImageClassificationWithTeacher
    measure("deit CLI hf -> ckpt -> hf", hf_logits(str(out), cls, x), hf_logits(folder, cls, x))
    done = run("ms2pt", ckpt, out, "--format", "hf")
    assert done.returncode == 2 and "pass --force" in done.stderr and done.stderr.count("\n") == 1
    done = run("ms2pt", ckpt, tmp_path / "noext")
    assert done.returncode == 2 and "--format hf" in done.stderr


def test_transformers_version_is_within_the_pin():
    major = int(transformers.__version__.split(".")[0])
    assert 4 <= major < 6


def test_compiled_layer_norm_honours_a_tiny_eps():
    """The hub's 1e-12 reaches ms_ppt's compiled float32 LayerNorm (its eps is a float64 input): on rows whose
    variance is 1e-10, eps 1e-6 would shrink the output a hundredfold."""
    from ms_ppt.kernels import Kernels, compiler
    from ms_ppt.layers import LayerNorm
    if compiler.build("layer_norm_cpu") is None:
        pytest.skip("no C++ compiler on this machine: the model uses MindSpore's own LayerNorm")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = (1.0 + 1e-5 * np.random.RandomState(0).randn(4, 64)).astype(np.float32)
    xd = x.astype(np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-12)
    norm = LayerNorm(64, 1e-12, Kernels(on=True))
    assert norm.fused
    got = norm(ms.Tensor(x)).asnumpy()
    assert np.abs(got - want).max() < 1e-4 and np.abs(want).max() > 1


def test_the_tools_take_a_folder_as_their_checkpoint(tmp_path):
    from ppt_common.errors import UsageError
    from ppt_common.options import EvalOptions, check_weights
    folder = save(build_hf(ViTForImageClassification), tmp_path / "vit")
    check_weights(EvalOptions(checkpoint=folder))
    with pytest.raises(UsageError, match="neither a file nor a Hugging Face model folder"):
        check_weights(EvalOptions(checkpoint=str(tmp_path)))


def test_a_fine_tuned_checkpoint_goes_to_the_hub_format_with_its_class_names(tmp_path):
    """A train_ms.py checkpoint of 3 classes: its name is still DeiT-Tiny's, and id2label are its stored names."""
    import dataclasses
    from ppt_common.config import get_arch
    arch = dataclasses.replace(get_arch("deit_tiny_patch16_224"), num_classes=3)
    rng = np.random.RandomState(0)
    entries = [{"name": k, "data": ms.Tensor(rng.randn(*shape).astype(np.float32) * 0.02)}
               for k, shape in convert.expected_shapes(arch).items()]
    ms.save_checkpoint(entries, str(tmp_path / "pets.ckpt"),
                       append_dict={"class_names": json.dumps(["cat", "dog", "fox"])})
    assert convert.ms2pt(tmp_path / "pets.ckpt", tmp_path / "pets-hf", format="hf") == "deit_tiny_patch16_224"
    config = json.loads((tmp_path / "pets-hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert config["label2id"] == {"cat": 0, "dog": 1, "fox": 2}
