"""Hugging Face `transformers` model folders (config.json + model.safetensors or pytorch_model.bin, possibly sharded
with an index json), read into timm's names and written back, with no import of `transformers`.

Two classes are one of our models exactly: ViTForImageClassification (DeiT and ViT checkpoints on the hub) and
DeiTForImageClassificationWithTeacher (distilled DeiT: the class and distillation heads averaged, as timm's
VisionTransformerDistilled in eval). The config is honoured (width, depth, heads, MLP size, image and patch size,
channels, layer_norm_eps, hidden_act, qkv_bias, labels); what the model cannot reproduce is refused by name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ppt_common.config import ArchConfig
from ppt_common.errors import OutputError, OutputExistsError
from convert.io import CheckpointError, StateDict, read_state_dict
from convert.mapping import resolve_described

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers' preference order
VIT, DEIT_TEACHER = "ViTForImageClassification", "DeiTForImageClassificationWithTeacher"
# class -> (model_type, the base model's prefix in the weights, distilled)
CLASSES = {VIT: ("vit", "vit", False), DEIT_TEACHER: ("deit", "deit", True)}
REFUSED_CLASSES = {
    "DeiTForImageClassification": "it classifies from the class token alone with a distillation token in the "
                                  "sequence; a distilled model here averages two heads",
    "ViTModel": "it has no classification head", "DeiTModel": "it has no classification head",
    "ViTForMaskedImageModeling": "it is a masked-image-modelling model, not a classifier",
    "DeiTForMaskedImageModeling": "it is a masked-image-modelling model, not a classifier",
}
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}  # transformers' ACT2FN names -> ours (exact erf GELU)
# transformers' ViTConfig/DeiTConfig defaults, for fields a config.json leaves out
DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                qkv_bias=True)

# Per-layer names: the files' (transformers 4, and what save_pretrained writes in 5) and transformers 5's
# in-memory ones; q/k/v go to one fused qkv.
_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.attention.query": "attn.q", "attention.attention.key": "attn.k", "attention.attention.value": "attn.v",
    "attention.q_proj": "attn.q", "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_UNUSED = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")  # never used by the two classes


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """A folder's contents: the architecture its config describes, the weights under timm's names, the class
    names (id2label, index -> name) and the transformers class."""
    arch: ArchConfig
    state: StateDict
    id2label: Dict[int, str]
    architecture: str


def is_hf_folder(path) -> bool:
    return path is not None and os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


def read_config(folder) -> dict:
    try:
        with open(os.path.join(folder, CONFIG)) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read {CONFIG} ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder}: {CONFIG} is not a JSON object")
    return config


def architecture_of(config: dict, folder) -> str:
    """The transformers class the folder holds: one of CLASSES, else refused by name."""
    model_type = config.get("model_type")
    if model_type not in ("vit", "deit"):
        raise CheckpointError(f"{folder}: model_type {model_type!r} is not supported (Hugging Face folders of "
                              f"model_type 'vit' or 'deit' load here: {VIT}, {DEIT_TEACHER})")
    names = config.get("architectures") or [VIT if model_type == "vit" else DEIT_TEACHER]
    if len(names) != 1:
        raise CheckpointError(f"{folder}: {CONFIG} names {len(names)} architectures ({', '.join(names)}); "
                              "expected one")
    name = names[0]
    if name in REFUSED_CLASSES:
        raise CheckpointError(f"{folder}: {name} is not supported: {REFUSED_CLASSES[name]} (supported: {VIT}, "
                              f"{DEIT_TEACHER})")
    if name not in CLASSES:
        raise CheckpointError(f"{folder}: architecture {name} is not supported (supported: {VIT}, {DEIT_TEACHER})")
    if CLASSES[name][0] != model_type:
        raise CheckpointError(f"{folder}: {name} with model_type {model_type!r}: expected "
                              f"{CLASSES[name][0]!r}")
    return name


def _square(config: dict, key: str, folder) -> int:
    value = config.get(key, DEFAULTS[key])
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{folder}: {key} {list(value)} is not square; only square images and patches "
                                  "are supported")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{folder}: {key} must be a positive integer, got {value!r}")
    return value


def id2label_of(config: dict) -> Dict[int, str]:
    labels = config.get("id2label")
    if labels:
        return {int(k): str(v) for k, v in labels.items()}
    return {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}


def arch_from_config(config: dict, architecture: str, folder) -> ArchConfig:
    """The ArchConfig the config describes, every value honoured or refused by name."""
    get = lambda key: config.get(key, DEFAULTS[key])  # noqa: E731
    act = get("hidden_act")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{folder}: hidden_act {act!r} is not supported (supported: "
                              f"{', '.join(ACTIVATIONS)}: exact GELU and quick GELU)")
    img, patch = _square(config, "image_size", folder), _square(config, "patch_size", folder)
    if img % patch:
        raise CheckpointError(f"{folder}: image_size {img} is not a multiple of patch_size {patch}")
    width, heads, hidden = get("hidden_size"), get("num_attention_heads"), get("intermediate_size")
    if width % heads:
        raise CheckpointError(f"{folder}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    mlp_ratio = hidden / width
    if int(width * mlp_ratio) != hidden:
        raise CheckpointError(f"{folder}: intermediate_size {hidden} is not representable as a ratio of "
                              f"hidden_size {width}")
    classes = len(id2label_of(config))
    if classes == 0:
        raise CheckpointError(f"{folder}: num_labels is 0 (no classification head)")
    eps = get("layer_norm_eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise CheckpointError(f"{folder}: layer_norm_eps must be a small positive number, got {eps!r}")
    return ArchConfig(img_size=img, patch_size=patch, embed_dim=width, depth=get("num_hidden_layers"),
                      num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=bool(get("qkv_bias")), num_classes=classes,
                      in_chans=get("num_channels"), num_prefix_tokens=2 if CLASSES[architecture][2] else 1,
                      norm_eps=float(eps), act=ACTIVATIONS[act])


def _weight_files(folder) -> Sequence[str]:
    """The weight files, safetensors first as transformers prefers them; a sharded folder's shards from its
    index."""
    for weights in WEIGHTS:
        if os.path.isfile(os.path.join(folder, weights)):
            return [os.path.join(folder, weights)]
        index = os.path.join(folder, weights + ".index.json")
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{index}: cannot read the shard index ({e})") from None
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise CheckpointError(f"{folder}: shard(s) missing: {', '.join(missing)}")
            return [os.path.join(folder, s) for s in shards]
    raise CheckpointError(f"{folder}: no weights ({' or '.join(WEIGHTS)}, or a sharded index of either)")


def timm_state(raw: StateDict, architecture: str, folder) -> StateDict:
    """transformers' names -> timm's, q/k/v fused in that order; unknown tensors refused by name."""
    prefix = CLASSES[architecture][1] + "."
    heads = {"classifier": "head"} if architecture == VIT else {"cls_classifier": "head",
                                                                "distillation_classifier": "head_dist"}
    fixed = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
             "embeddings.position_embeddings": "pos_embed", "layernorm.weight": "norm.weight",
             "layernorm.bias": "norm.bias", "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
             "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias"}
    layer = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    state, qkv, unknown = {}, {}, []
    for key, value in raw.items():
        head = key.split(".", 1)
        if head[0] in heads and len(head) == 2:
            state[f"{heads[head[0]]}.{head[1]}"] = value
            continue
        if not key.startswith(prefix):
            unknown.append(key)
            continue
        name = key[len(prefix):]
        if name in fixed:
            state[fixed[name]] = value
        elif name in _UNUSED:
            continue
        elif (m := layer.match(name)) and m.group(2) in _LAYER:
            target = f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"
            if target.endswith((".q", ".k", ".v")):
                qkv.setdefault((target[:-2], m.group(3)), {})[target[-1]] = value
            else:
                state[f"{target}.{m.group(3)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{folder}: {len(unknown)} tensor(s) {architecture} does not have: "
                              f"{', '.join(sorted(unknown)[:5])}")
    for (block, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{folder}: {block}: the attention's {kind} has only {', '.join(sorted(parts))} "
                                  "of query, key and value")
        state[f"{block}.qkv.{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return state


def read_folder(folder) -> HFCheckpoint:
    """A transformers folder's architecture, weights (timm's names) and class names."""
    folder = os.fspath(folder)
    if not is_hf_folder(folder):
        raise CheckpointError(f"{folder}: not a Hugging Face model folder (no {CONFIG})")
    config = read_config(folder)
    architecture = architecture_of(config, folder)
    arch = arch_from_config(config, architecture, folder)
    raw = {}
    for path in _weight_files(folder):
        raw.update(read_state_dict(path))
    return HFCheckpoint(arch, timm_state(raw, architecture, folder), id2label_of(config), architecture)


def load_checked(folder, model: Optional[str] = None) -> Tuple[str, ArchConfig, StateDict]:
    """convert.load_checked for a folder: (name, arch with the config's values, state), checked strictly."""
    checkpoint = read_folder(folder)
    name, arch = resolve_described(checkpoint.state, checkpoint.arch, model, f"{folder}: {CONFIG}")
    return name, arch, checkpoint.state


# ---- writing -------------------------------------------------------------------------------------------------


def refuse_unwritable(arch: ArchConfig) -> None:
    """What transformers' ViT/DeiT classes cannot represent, refused by name before anything is written."""
    reasons = [(arch.init_values is not None, "LayerScale (DeiT-III's ls1/ls2.gamma)"),
               (arch.no_embed_class, "a position embedding without the class token (DeiT-III's no_embed_class)"),
               (arch.pre_norm, "a LayerNorm before the blocks (CLIP's norm_pre)")]
    found = [what for refused, what in reasons if refused]
    if found:
        raise CheckpointError(f"the model has {', '.join(found)}: transformers' {VIT} and {DEIT_TEACHER} cannot "
                              "represent it")


def config_for(arch: ArchConfig, class_names: Optional[Sequence[str]] = None) -> dict:
    """The config.json transformers reads back as the same network."""
    refuse_unwritable(arch)
    names = [f"LABEL_{i}" for i in range(arch.num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != arch.num_classes:
        raise CheckpointError(f"class_names has {len(names)} names for a head of {arch.num_classes} classes")
    if len(set(names)) != len(names):
        raise CheckpointError("class_names repeats a name (label2id needs each once)")
    architecture = DEIT_TEACHER if arch.distilled else VIT
    return {"architectures": [architecture], "model_type": CLASSES[architecture][0],
            "hidden_size": arch.embed_dim, "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads,
            "intermediate_size": arch.mlp_hidden, "hidden_act": arch.act, "layer_norm_eps": arch.norm_eps,
            "image_size": arch.img_size, "patch_size": arch.patch_size, "num_channels": arch.in_chans,
            "qkv_bias": arch.qkv_bias, "encoder_stride": arch.patch_size, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "dtype": "float32",
            "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)}}


def hf_state(state: StateDict, arch: ArchConfig) -> StateDict:
    """timm's names -> the names save_pretrained writes (transformers 4 and 5 read them), qkv split in q, k, v."""
    architecture = DEIT_TEACHER if arch.distilled else VIT
    p = CLASSES[architecture][1]
    heads = {"head": "cls_classifier", "head_dist": "distillation_classifier"} if arch.distilled else {"head": "classifier"}
    fixed = {"cls_token": "embeddings.cls_token", "dist_token": "embeddings.distillation_token",
             "pos_embed": "embeddings.position_embeddings", "norm.weight": "layernorm.weight",
             "norm.bias": "layernorm.bias", "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias"}
    block_names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
                   "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out = {}
    for key, value in state.items():
        module, kind = key.rsplit(".", 1) if "." in key else (key, "")
        if key in fixed:
            out[f"{p}.{fixed[key]}"] = value
        elif module in heads:
            out[f"{heads[module]}.{kind}"] = value
        elif m := re.match(r"^blocks\.(\d+)\.(.+)$", module):
            layer = f"{p}.encoder.layer.{m.group(1)}."
            if m.group(2) == "attn.qkv":
                for part, chunk in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
                    out[f"{layer}attention.attention.{part}.{kind}"] = chunk
            elif m.group(2) in block_names:
                out[f"{layer}{block_names[m.group(2)]}.{kind}"] = value
            else:
                raise CheckpointError(f"tensor '{key}' has no place in {architecture}")
        else:
            raise CheckpointError(f"tensor '{key}' has no place in {architecture}")
    return out


def check_output_folder(path, force: bool = False) -> str:
    """Before any reading: the folder's parent exists and is writable; an existing non-empty folder needs force."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{path} exists and is not a folder (a Hugging Face model is a folder)")
    if os.path.isdir(path) and os.listdir(path) and not force:
        raise OutputExistsError(f"{path} exists and is not empty; pass --force to replace it")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    return path


def write_folder(state: StateDict, arch: ArchConfig, path, force: bool = False,
                 class_names: Optional[Sequence[str]] = None) -> None:
    """config.json + model.safetensors, written into a temporary folder beside `path` and renamed into place
    (a replaced folder is removed only once the new one is in place)."""
    from safetensors.numpy import save_file
    path = check_output_folder(path, force)
    config = config_for(arch, class_names)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in hf_state(state, arch).items()}
    parent, base = os.path.split(path)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    old = None
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.replace(path, old)  # an empty `old` is replaced by the existing folder
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not os.path.exists(path):
            os.replace(old, path)
            old = None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
