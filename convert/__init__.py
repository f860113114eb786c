"""Checkpoint conversion between PyTorch (official DeiT .pth, timm state dicts, safetensors, Hugging Face
`transformers` folders) and MindSpore .ckpt."""
import dataclasses
import logging
import numbers
import os

from ppt_common.config import TRAINING_FLAGS, ArchConfig, at_image_size, model_arch
from ppt_common.pos_embed import resample_abs_pos_embed
from convert import hf
from convert.io import (TORCH_SUFFIXES, CheckpointError, check_output_path, read_checkpoint, read_class_names,
                        read_state_dict, write_state_dict)
from convert.mapping import (HEAD_KEYS, arch_from_record, arch_record, check_matches, check_state, expected_shapes,
                             infer_arch, resolve_arch, resolve_described, timm_names)

log = logging.getLogger("ppt")


def load_checked(path, model=None, described=False, ema=False):
    """Read a checkpoint of any supported format (with ema: a training checkpoint's EMA weights) and check it
    strictly; returns (name, arch, state). A checkpoint
    that describes its architecture (a Hugging Face folder's config.json, the record of a file converted from one)
    gives its arch those values (heads, norm eps, activation); described=True refuses one that does not."""
    return _load(path, model, described, ema)[:3]


def _load(path, model=None, described=False, ema=False):
    """load_checked, and whether the arch was described (not inferred from the tensors or taken from the name)."""
    if hf.is_hf_folder(path):
        if ema:
            raise CheckpointError(f"{path}: ema reads the 'ema.' weights of a MindSpore .ckpt, not a folder")
        return hf.load_checked(path, model) + (True,)
    raw, record = read_checkpoint(path, ema=ema)
    state = timm_names(raw)
    if record is not None:
        return resolve_described(state, arch_from_record(record, path), model, str(path)) + (state, True)
    if described:
        raise CheckpointError(f"{path} does not record its architecture (heads, norm eps, activation): name the model "
                              "(a Hugging Face folder, or a file converted from one, describes itself)")
    name, arch = resolve_arch(state, model)
    check_state(state, arch, model)
    return name, arch, state, False


def resolve_model(name, checkpoint=None, num_classes=None, pretrained=False, img_size=None, ema=False,
                  **training_flags):
    """What both frameworks' create_model build, as timm's create_model: the registered architecture (with no name,
    the one a described checkpoint gives) at img_size (default the name's, else the checkpoint's), with num_classes
    classes (default the checkpoint's, else the name's; 0: no head, pooled features) and timm's training flags
    (drop rates); and the weights to load, from `checkpoint` or the official ones (`pretrained`), checked strictly
    against the architecture. Like timm's loader, a checkpoint of another head size gives everything but the head
    (left out of the state, for the framework to initialise; reported on the "ppt" logger), and one of another
    image size gives its position embedding resampled to the new grid (ppt_common.pos_embed). With ema, a
    training checkpoint's EMA weights are the ones loaded (as mindcv's create_model(..., ema=True)). Returns
    (arch, state or None)."""
    unknown = sorted(set(training_flags) - set(TRAINING_FLAGS))
    if unknown:
        raise TypeError(f"unknown model keyword(s): {', '.join(unknown)} (model flags accepted here: "
                        f"{', '.join(TRAINING_FLAGS)})")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                                    or num_classes < 0):
        raise ValueError(f"num_classes must be an integer >= 0 (0: no head, pooled features), got {num_classes!r}")
    if name is None and not checkpoint:
        raise ValueError("a model name is needed, or a checkpoint that describes its architecture (a Hugging Face "
                         "folder, or a file converted from one)")
    if ema and not checkpoint:
        raise ValueError("ema=True loads the EMA weights of a training checkpoint: name it with checkpoint=")
    arch = model_arch(name, img_size) if name is not None else None
    state = None
    if pretrained:
        if checkpoint:
            raise ValueError("pretrained=True and checkpoint name two sources of weights: give one")
        from convert.hub import pretrained_weights
        checkpoint = pretrained_weights(name)
    if checkpoint:
        _, found, state = load_checked(checkpoint, name, described=name is None, ema=ema)
        arch = found if arch is None else dataclasses.replace(found, img_size=arch.img_size)
        arch = at_image_size(arch, img_size, name or str(checkpoint))
        if found.grid != arch.grid:
            prefix = 0 if arch.no_embed_class else arch.num_prefix_tokens
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (arch.grid, arch.grid), prefix)
            log.info("%s: position embedding resampled from %dx%d to %dx%d", checkpoint, found.grid, found.grid,
                     arch.grid, arch.grid)
        if num_classes is not None and num_classes != found.num_classes:
            state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
            if num_classes:
                log.warning("%s: the checkpoint's %d-class head was left out; a new %d-class head is initialised "
                            "(train it before use)", checkpoint, found.num_classes, num_classes)
            else:
                log.warning("%s: the checkpoint's %d-class head was left out; num_classes=0: the model returns "
                            "its pooled features", checkpoint, found.num_classes)
    if num_classes is not None:
        arch = dataclasses.replace(arch, num_classes=num_classes)
    return dataclasses.replace(arch, **training_flags), state


def new_head(arch: ArchConfig, state) -> bool:
    """True when the state left the head out for a new one (resolve_model)."""
    return state is not None and arch.num_classes > 0 and "head.weight" not in state


def pt2ms(src, dst, model=None, force=False):
    """PyTorch/safetensors (or any supported) checkpoint -> MindSpore .ckpt; returns the model name."""
    if not str(dst).lower().endswith(".ckpt"):
        raise CheckpointError(f"{dst}: pt2ms writes a MindSpore .ckpt file")
    check_output_path(dst, force)
    name, arch, state, described = _load(src, model)
    write_state_dict(state, dst, force=force, record=arch_record(arch) if described or model else None)
    return name


FORMATS = {"pth": TORCH_SUFFIXES, "safetensors": (".safetensors",), "hf": None}


def ms2pt(src, dst, model=None, force=False, format=None, class_names=None, ema=False):
    """MindSpore .ckpt (or any supported) -> .pth or .safetensors (format None: from dst's suffix), or with
    format="hf" a Hugging Face folder that transformers' from_pretrained loads (class_names: its id2label; default:
    the names a training checkpoint stores, else LABEL_i); with ema, a training checkpoint's EMA weights; returns the
    model name."""
    if format not in (None, *FORMATS):
        raise CheckpointError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    if format == "hf":
        hf.check_output_folder(dst, force)
        name, arch, state, described = _load(src, model, ema=ema)
        if class_names is None:
            class_names = read_class_names(src)
        if not described and name == "custom":
            raise CheckpointError(f"{src} matches no registered model and does not record its architecture (heads, "
                                  "norm eps, activation), which config.json must state: name it with --model")
        hf.write_folder(state, arch, dst, force=force, class_names=class_names)
        return name
    if class_names is not None:
        raise CheckpointError("class_names are written into a Hugging Face folder's config: use format='hf'")
    if str(dst).lower().endswith(".ckpt"):
        raise CheckpointError(f"{dst}: ms2pt writes a .pth or .safetensors file (or a folder with --format hf)")
    if format is not None and not str(dst).lower().endswith(FORMATS[format]):
        raise CheckpointError(f"{dst}: format {format} writes a file ending in {' or '.join(FORMATS[format])}")
    if "." not in os.path.basename(str(dst)):
        raise CheckpointError(f"{dst}: no file type; name a .pth or .safetensors file, or pass --format hf "
                              "to write a Hugging Face folder")
    check_output_path(dst, force)
    name, arch, state, described = _load(src, model, ema=ema)
    write_state_dict(state, dst, force=force, record=arch_record(arch) if described or model else None)
    return name


__all__ = ["CheckpointError", "read_state_dict", "read_checkpoint", "write_state_dict", "check_state",
           "check_matches", "arch_record", "arch_from_record", "expected_shapes", "read_class_names",
           "infer_arch", "resolve_arch", "timm_names", "load_checked", "resolve_model", "new_head", "pt2ms", "ms2pt",
           "hf"]
