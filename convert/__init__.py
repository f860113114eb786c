"""Checkpoint conversion between PyTorch (official DeiT .pth, timm state dicts, safetensors) and MindSpore .ckpt."""
from convert.io import CheckpointError, check_output_path, read_state_dict, write_state_dict
from convert.mapping import check_state, expected_shapes, infer_arch, resolve_arch, timm_names


def load_checked(path, model=None):
    """Read a checkpoint of any supported format and check it strictly; returns (name, arch, state)."""
    state = timm_names(read_state_dict(path))
    name, arch = resolve_arch(state, model)
    check_state(state, arch, model)
    return name, arch, state


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
           "infer_arch", "resolve_arch", "timm_names", "load_checked", "pt2ms", "ms2pt"]
