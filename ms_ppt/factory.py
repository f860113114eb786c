"""create_model in the mindcv style, the model registry, and mindcv registration (`ppt_<name>`)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import mindspore as ms

from ppt_common.schedule import config_from_settings
from ppt_common.config import MODEL_CONFIGS, PPTConfig, RSpec
from ppt_common.trace import BlockTrace
from ms_ppt.ppt import trace_record
from ms_ppt.vision_transformer import SUPPORTED_DTYPES, VisionTransformer, params_from_numpy


def resolve_dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported dtype '{dtype}'; choose from {', '.join(SUPPORTED_DTYPES)}")
        return SUPPORTED_DTYPES[dtype]
    if dtype not in SUPPORTED_DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}")
    return dtype


def list_models() -> List[str]:
    return sorted(MODEL_CONFIGS)


def create_model(name: Optional[str] = None, checkpoint: Optional[str] = None, pretrained: bool = False,
                 ppt_config: Optional[PPTConfig] = None, r: Optional[RSpec] = None,
                 pp_loc_list: Optional[Sequence[int]] = None, threshold: Optional[float] = None,
                 prop_attn: Optional[bool] = None, trace_source: Optional[bool] = None,
                 method: Optional[str] = None, schedule=None,
                 trace: bool = False,
                 dtype="float32", num_classes: Optional[int] = None, img_size: Optional[int] = None,
                 ema: bool = False,
                 custom_kernels: Optional[bool] = None, **training_flags) -> VisionTransformer:
    """A DeiT/ViT with PPT. `checkpoint` may be a MindSpore .ckpt, a PyTorch .pth/.bin/.safetensors or a Hugging
    Face transformers folder (converted in memory; a folder's config.json is honoured, and with no name gives the
    architecture); `pretrained=True` takes the official weights instead (downloaded once, verified and cached:
    convert.hub). PPT settings come as `ppt_config=PPTConfig(...)` or as its fields (r, pp_loc_list, threshold,
    prop_attn, trace_source, method; unset ones take the paper's defaults), or as `schedule`, a schedule file or
    dict (ppt_common.schedule: r and threshold per block; not with r, pp_loc_list or threshold); r=0 or an empty
    pp_loc_list gives the dense model. As timm: num_classes other than the checkpoint's puts a new head on
    (initialised as timm does, the rest loaded; 0: no head, the model returns its pooled features), and img_size
    other than the name's resamples the checkpoint's position embedding (bicubic, antialiased, as timm's loader);
    ema=True loads a training checkpoint's EMA weights. training_flags are timm's drop rates (drop_rate,
    pos_drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate). custom_kernels (default: on for the CPU
    backend) uses ms_ppt's compiled CPU kernels; turn it off for graphs meant to leave this machine (MindIR
    export)."""
    # the settings are checked before any slow checkpoint reading
    ppt_config = config_from_settings(name, schedule, ppt_config, img_size, r=r, pp_loc_list=pp_loc_list,
                                      threshold=threshold, prop_attn=prop_attn, trace_source=trace_source,
                                      method=method)
    dtype = resolve_dtype(dtype)
    from convert import new_head, resolve_model
    arch, state = resolve_model(name, checkpoint, num_classes, pretrained, img_size, ema, **training_flags)
    model = VisionTransformer(arch, ppt_config, trace=trace, custom_kernels=custom_kernels)
    if state is not None:
        if new_head(arch, state):  # the model's own initialisation
            state = {**state, **{p.name: p.asnumpy() for p in model.get_parameters() if p.name.startswith("head")}}
        params_from_numpy(model, state)
    model.to_dtype(dtype)
    model.set_train(False)
    return model


def load_checkpoint(model: VisionTransformer, path: str, ema: bool = False) -> None:
    """Load a checkpoint of any supported format into a built model, as strictly as create_model does: the file
    must exist and hold every parameter once, with the right shape and finite values. With ema, the 'ema.'
    copies of the parameters (a mindcv EMA checkpoint) are loaded instead."""
    from convert import arch_from_record, check_matches, check_state, hf, read_checkpoint, timm_names
    if hf.is_hf_folder(path) and not ema:
        _, described, state = hf.load_checked(path)
        check_matches(described, model.arch, path)  # its config's heads, eps and activation are the model's
    else:
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path!r}")
        raw, record = read_checkpoint(path, ema=ema)
        state = timm_names(raw)
        check_state(state, model.arch)
        if record is not None:
            check_matches(arch_from_record(record, path), model.arch, path)
    params_from_numpy(model, state)


def traces_from_outputs(model: VisionTransformer, records) -> List[BlockTrace]:
    """The shared BlockTrace records from what a traced model returns: each reducing block's (plan, sizes)."""
    return [trace_record(block.index, block.r, plan, sizes) for block, (plan, sizes) in zip(model.pp_blocks, records)]


def run_with_trace(model: VisionTransformer, images: np.ndarray):
    """Run a model built with trace=True: (logits [B, classes], traces, source [B, N, N0] or None)."""
    if not model.trace:
        raise ValueError("run_with_trace needs a model created with trace=True")
    outputs = model(ms.Tensor(images, model.cls_token.dtype))
    source = outputs[2].asnumpy() if model.trace_source else None
    return outputs[0].asnumpy(), traces_from_outputs(model, outputs[1]), source


def _register_with_mindcv() -> None:
    """Make mindcv.create_model('ppt_deit_small_patch16_224', checkpoint_path=..., r=...) work."""
    try:
        from mindcv.models.registry import register_model
    except Exception:  # mindcv absent or broken: our own create_model still works
        return

    def make(model_name):
        def entry(pretrained=False, num_classes=1000, in_channels=3, **kwargs):
            if in_channels != 3:
                raise ValueError(f"{model_name}: only 3 input channels are supported")
            return create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        entry.__name__ = f"ppt_{model_name}"
        entry.__module__ = __name__
        return entry

    for model_name in MODEL_CONFIGS:
        register_model(make(model_name))


def mindcv_strict_loading() -> None:
    """mindcv.create_model(..., checkpoint_path=P) loads P after building the model, and silently skips a path
    that does not exist or a tensor the file lacks, for every model. After this call it loads our models through
    load_checkpoint instead (a missing file or tensor is an error); other models keep mindcv's loader. It replaces
    mindcv's model_factory.load_model_checkpoint for the process, which is why it is a call and not an import
    side effect; calling it again changes nothing."""
    from mindcv.models import model_factory
    mindcv_loader = model_factory.load_model_checkpoint
    if getattr(mindcv_loader, "ms_ppt_strict", False):
        return

    def load_model_checkpoint(model, checkpoint_path="", ema=False, auto_mapping=False):
        if isinstance(model, VisionTransformer):
            return load_checkpoint(model, checkpoint_path, ema=ema)
        return mindcv_loader(model, checkpoint_path, ema, auto_mapping)
    load_model_checkpoint.ms_ppt_strict = True
    model_factory.load_model_checkpoint = load_model_checkpoint


_register_with_mindcv()
