"""Checkpoint conversion between PyTorch (official DeiT .pth, timm state dicts, safetensors) and MindSpore .ckpt."""
import dataclasses
import logging
import numbers

from ppt_common.config import TRAINING_FLAGS, ArchConfig, model_arch
from ppt_common.pos_embed import resample_abs_pos_embed
from convert.io import CheckpointError, check_output_path, read_state_dict, write_state_dict
from convert.mapping import HEAD_KEYS, check_state, expected_shapes, infer_arch, resolve_arch, timm_names

log = logging.getLogger("ppt")


def load_checked(path, model=None):
    """Read a checkpoint of any supported format and check it strictly; returns (name, arch, state)."""
    state = timm_names(read_state_dict(path))
    name, arch = resolve_arch(state, model)
    check_state(state, arch, model)
    return name, arch, state


def resolve_model(name, checkpoint=None, num_classes=None, pretrained=False, img_size=None, **training_flags):
    """What both frameworks' create_model build, as timm's create_model: the registered architecture at img_size
    (default the name's), with num_classes classes (default the checkpoint's, else the name's; 0: no head, pooled
    features) and timm's training flags (drop rates); and the weights to load, from `checkpoint` or the official
    ones (`pretrained`), checked strictly against the architecture. Like timm's loader, a checkpoint of another head
    size gives everything but the head (left out of the state, for the framework to initialise; reported on the
    "ppt" logger), and one of another image size gives its position embedding resampled to the new grid
    (ppt_common.pos_embed). Returns (arch, state or None)."""
    unknown = sorted(set(training_flags) - set(TRAINING_FLAGS))
    if unknown:
        raise TypeError(f"unknown model keyword(s): {', '.join(unknown)} (model flags accepted here: "
                        f"{', '.join(TRAINING_FLAGS)})")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                                    or num_classes < 0):
        raise ValueError(f"num_classes must be an integer >= 0 (0: no head, pooled features), got {num_classes!r}")
    arch: ArchConfig = model_arch(name, img_size)
    state = None
    if pretrained:
        if checkpoint:
            raise ValueError("pretrained=True and checkpoint name two sources of weights: give one")
        from convert.hub import pretrained_weights
        checkpoint = pretrained_weights(name)
    if checkpoint:
        _, found, state = load_checked(checkpoint, name)
        arch = dataclasses.replace(arch, num_classes=found.num_classes)
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
    name, _, state = load_checked(src, model)
    write_state_dict(state, dst, force=force)
    return name


def ms2pt(src, dst, model=None, force=False):
    """MindSpore .ckpt (or any supported) -> .pth or .safetensors; returns the model name."""
    if str(dst).lower().endswith(".ckpt"):
        raise CheckpointError(f"{dst}: ms2pt writes a .pth or .safetensors file")
    check_output_path(dst, force)
    name, _, state = load_checked(src, model)
    write_state_dict(state, dst, force=force)
    return name


__all__ = ["CheckpointError", "read_state_dict", "write_state_dict", "check_state", "expected_shapes",
           "infer_arch", "resolve_arch", "timm_names", "load_checked", "resolve_model", "new_head", "pt2ms", "ms2pt"]
