"""Checkpoint conversion between PyTorch (official DeiT .pth, timm state dicts, safetensors) and MindSpore .ckpt."""
import dataclasses

from ppt_common.config import TRAINING_FLAGS, ArchConfig, get_arch
from convert.io import CheckpointError, check_output_path, read_class_names, read_state_dict, write_state_dict
from convert.mapping import check_state, expected_shapes, infer_arch, resolve_arch, timm_names


def load_checked(path, model=None, ema=False):
    """Read a checkpoint of any supported format (with ema: a training checkpoint's EMA weights) and check it
    strictly; returns (name, arch, state)."""
    state = timm_names(read_state_dict(path, ema=ema))
    name, arch = resolve_arch(state, model)
    check_state(state, arch, model)
    return name, arch, state


def resolve_model(name, checkpoint=None, num_classes=None, pretrained=False, **training_flags):
    """What both frameworks' create_model build: the registered architecture (or the checkpoint's, checked
    strictly against it; pretrained: the official weights, downloaded once and cached), with num_classes and timm's
    training flags (drop rates) applied; (arch, state or None)."""
    unknown = sorted(set(training_flags) - set(TRAINING_FLAGS))
    if unknown:
        raise TypeError(f"unknown model keyword(s): {', '.join(unknown)} (model flags accepted here: "
                        f"{', '.join(TRAINING_FLAGS)})")
    arch: ArchConfig = get_arch(name)
    state = None
    if pretrained:
        if checkpoint:
            raise ValueError("pretrained=True and checkpoint name two sources of weights: give one")
        from convert.hub import pretrained_weights
        checkpoint = pretrained_weights(name)
    if checkpoint:
        _, arch, state = load_checked(checkpoint, name)
    if num_classes is not None and num_classes != arch.num_classes:
        if state is not None:
            raise ValueError(f"num_classes={num_classes} but the checkpoint's head has {arch.num_classes} classes")
        arch = dataclasses.replace(arch, num_classes=num_classes)
    return dataclasses.replace(arch, **training_flags), state


def pt2ms(src, dst, model=None, force=False):
    """PyTorch/safetensors (or any supported) checkpoint -> MindSpore .ckpt; returns the model name."""
    if not str(dst).lower().endswith(".ckpt"):
        raise CheckpointError(f"{dst}: pt2ms writes a MindSpore .ckpt file")
    check_output_path(dst, force)
    name, _, state = load_checked(src, model)
    write_state_dict(state, dst, force=force)
    return name


def ms2pt(src, dst, model=None, force=False, ema=False):
    """MindSpore .ckpt (or any supported) -> .pth or .safetensors; with ema, a training checkpoint's EMA weights;
    returns the model name."""
    if str(dst).lower().endswith(".ckpt"):
        raise CheckpointError(f"{dst}: ms2pt writes a .pth or .safetensors file")
    check_output_path(dst, force)
    name, _, state = load_checked(src, model, ema=ema)
    write_state_dict(state, dst, force=force)
    return name


__all__ = ["CheckpointError", "read_class_names", "read_state_dict", "write_state_dict", "check_state",
           "expected_shapes", "infer_arch", "resolve_arch", "timm_names", "load_checked", "resolve_model", "pt2ms", "ms2pt"]
