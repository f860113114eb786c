"""Reading and writing state dicts in every format users bring, as {dotted name: float32 numpy array}.

Torch files are read with the weights-only loader. Writes go to a temporary file in the destination folder and
are renamed into place, so a failure never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from ppt_common.files import atomic_write, check_output
from ppt_common.errors import CheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar")
StateDict = Dict[str, np.ndarray]


def _suffix(path: str) -> str:
    return os.path.splitext(str(path))[1].lower()


def _need_torch(path):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{path}: reading PyTorch/safetensors files needs the torch extra "
                              "(pip install 'ms-ppt[torch]')") from None


def _to_float32(name: str, value) -> np.ndarray:
    arr = value
    if hasattr(value, "detach"):  # torch tensor; bfloat16 has no numpy dtype
        arr = value.detach().cpu()
        arr = (arr.float() if arr.is_floating_point() else arr).numpy()
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    raise CheckpointError(f"tensor '{name}' has non-float dtype {arr.dtype}")


def unwrap_state_dict(obj, path) -> dict:
    """Accept a plain state dict or one under 'model' / 'state_dict' / 'module' (the official DeiT release)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict of tensors)")
    for key in ("model", "state_dict", "module"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:10]))})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}


def _memory_available() -> Optional[int]:
    """Bytes the kernel can give a new allocation (MemAvailable: free plus reclaimable page cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_mindspore_checkpoint(path: str, **kwargs) -> dict:
    """mindspore.load_checkpoint, with its memory check measuring what can really be allocated.

    MindSpore 2.10 refuses a .ckpt larger than *free* memory (SC_AVPHYS_PAGES), which leaves out the page cache:
    after large file reads (a pip install, a dataset pass) a 350 MB ViT-B checkpoint was refused with 22 GB
    available. Its check is kept, measured with MemAvailable where Linux reports it."""
    import mindspore as ms
    from mindspore.train import serialization
    free_memory = getattr(serialization, "_get_available_memory", None)
    if free_memory is None or _memory_available() is None:
        return ms.load_checkpoint(path, **kwargs)
    serialization._get_available_memory = _memory_available
    try:
        return ms.load_checkpoint(path, **kwargs)
    finally:
        serialization._get_available_memory = free_memory


# what a training checkpoint (ms_ppt.training, mindcv's trainer) holds besides the weights: EMA copies, Adam
# moments and step scalars. Reading weights skips them; ms_ppt.load_checkpoint(ema=True) reads the EMA copies.
TRAINING_PREFIXES = ("ema.", "adam_m.", "adam_v.")
TRAINING_SCALARS = ("epoch", "step", "optimizer_steps", "seed", "global_batch", "model_name", "recipe",
                    "global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense", "epoch_num",
                    "step_num", "class_names")
CLASS_NAMES = "class_names"  # a training checkpoint's classes (own datasets): a JSON list of the folder names


# A file converted from a Hugging Face folder (or under a model name) records what its tensors cannot show: the
# architecture's heads, norm eps and activation (ArchConfig's fields as JSON), in a .ckpt's entries or a
# .safetensors file's metadata. A .pth keeps the plain state-dict layout other code loads.
ARCH_RECORD = "arch_config"


def _training_entry(name: str) -> bool:
    return name.startswith(TRAINING_PREFIXES) or name in TRAINING_SCALARS or name == ARCH_RECORD


def _json_entry(path, name: str, value, kind: type, what: str):
    """A checkpoint's JSON string entry decoded, None if absent; one of another shape is refused by name."""
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        decoded = None
    if not isinstance(decoded, kind):
        raise CheckpointError(f"{path}: its '{name}' entry is not {what}")
    return decoded


def _record(path, value) -> Optional[dict]:
    return _json_entry(path, ARCH_RECORD, value, dict, "a JSON object")


def read_class_names(path) -> Optional[List[str]]:
    """The class names a training checkpoint stores (its label order), or None: a checkpoint of ImageNet-1k, or any
    file that is not a MindSpore .ckpt (no path: None)."""
    if not path or _suffix(path) != ".ckpt" or not os.path.isfile(path):
        return None
    try:
        raw = load_mindspore_checkpoint(os.fspath(path), choice_func=lambda name: name == CLASS_NAMES)
    except Exception:  # unreadable: reading its weights says why
        return None
    names = _json_entry(path, CLASS_NAMES, raw.get(CLASS_NAMES), list, "a JSON list of names")
    if names is not None and not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: its '{CLASS_NAMES}' entry is not a JSON list of names")
    return names


def read_state_dict(path, ema: bool = False) -> StateDict:
    """Read .pth/.pt/.bin/.tar (torch), .safetensors, .ckpt (MindSpore) or a Hugging Face model folder (timm's
    names: convert.hf) into float32 numpy arrays. A training checkpoint (.ckpt) gives its weights, or with ema its
    EMA weights (under the weights' names)."""
    return read_checkpoint(path, ema)[0]


def read_checkpoint(path, ema: bool = False) -> Tuple[StateDict, Optional[dict]]:
    """read_state_dict, and the file's architecture record (ARCH_RECORD) where it has one."""
    path = os.fspath(path)
    record = None
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        from convert.hf import is_hf_folder, read_folder
        if is_hf_folder(path) and not ema:
            return read_folder(path).state, None
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file or a Hugging Face model folder "
                              "(config.json and its weights)")
    suffix = _suffix(path)
    if os.path.getsize(path) == 0:  # MindSpore would speak of 'filter_prefix', torch of a zip archive
        raise CheckpointError(f"{path}: the file is empty (0 bytes)")
    if ema and suffix != ".ckpt":
        raise CheckpointError(f"{path}: holds no EMA weights (they are the 'ema.' entries of a MindSpore training "
                              "checkpoint, .ckpt)")
    try:
        if suffix == ".safetensors":
            _need_torch(path)
            from safetensors import safe_open
            from safetensors.torch import load_file
            raw = load_file(path)
            with safe_open(path, "pt") as f:
                record = (f.metadata() or {}).get(ARCH_RECORD)
        elif suffix == ".ckpt":
            raw = load_mindspore_checkpoint(path)
            record = raw.get(ARCH_RECORD)
            if ema:
                raw = {k[len("ema."):]: v for k, v in raw.items() if k.startswith("ema.")}
                if not raw:
                    raise CheckpointError(f"{path}: holds no EMA weights ('ema.' entries: train_ms.py writes them "
                                          "unless --no-model-ema)")
            weights = {k: v.asnumpy() for k, v in raw.items() if not _training_entry(k)}
            if raw and not weights:
                raise CheckpointError(f"{path}: holds only training state ({', '.join(sorted(raw)[:3])}, ...), no "
                                      "model weights")
            raw = weights
        elif suffix in TORCH_SUFFIXES:
            _need_torch(path)
            import torch
            raw = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
        else:
            raise CheckpointError(f"{path}: unknown checkpoint type '{suffix}' "
                                  f"(expected .pth/.pt/.bin/.tar, .safetensors or .ckpt)")
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as e:  # truncated zip, bad pickle, unsafe pickle, bad header...
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {first_line})") from e
    if not raw:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return {k: _to_float32(k, v) for k, v in raw.items()}, _record(path, record)


def check_output_path(path, force: bool = False) -> str:
    """Before any reading: the output's type is known and the file can be written (files.check_output)."""
    if _suffix(path) not in (".ckpt", ".safetensors") + TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unknown output type '{_suffix(path)}' (use .ckpt, .pth or .safetensors)")
    return check_output(path, force)


def write_state_dict(state: StateDict, path, force: bool = False, record: Optional[dict] = None) -> None:
    """Write .ckpt, .pth/.pt/.bin or .safetensors atomically; refuse to overwrite unless force. record (the
    architecture: ARCH_RECORD) goes into a .ckpt or .safetensors file."""
    path = check_output_path(path, force)
    suffix = _suffix(path)
    if suffix != ".ckpt":
        _need_torch(path)

    def write(tmp):
        if suffix == ".ckpt":
            import mindspore as ms
            ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in state.items()], tmp,
                               append_dict={ARCH_RECORD: json.dumps(record)} if record else None)
        elif suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp,
                      metadata={"format": "pt", ARCH_RECORD: json.dumps(record)} if record else None)
        else:
            import torch
            torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, tmp)
    atomic_write(path, write)
