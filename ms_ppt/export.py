"""Export a PPT DeiT/ViT to MindIR for a fixed input shape, for MindSpore Lite / Ascend (what
scripts/export_mindir.py runs). The graph is static (PPT removes a fixed number of tokens whatever each image's
policy), so the whole model, token reduction included, exports."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import numpy as np

from ppt_common.errors import UsageError
from ppt_common.files import atomic_write, check_output
from ppt_common.options import ModelOptions, check_choice, check_weights, ppt_config


@dataclasses.dataclass
class ExportOptions(ModelOptions):
    """The options of export_mindir.py (underscores for dashes)."""
    output: Optional[str] = None  # FILE.mindir
    batch_size: Optional[int] = None  # the fixed input shape's batch
    checkpoint: Optional[str] = None
    dtype: str = "float32"
    force: bool = False
    verify: bool = True  # reload the file and compare its logits with the live cell
    device: str = "CPU"
    ema: bool = False  # the EMA weights of a train_ms.py checkpoint (its 'ema.' entries)


def export_mindir(options: ExportOptions = None, **kwargs) -> dict:
    """Build the model, export it (under a temporary name, renamed when complete) and, with verify, reload it with
    mindspore.load + nn.GraphCell; returns {"output", "config" (the PPT settings), "input_shape", "mib", "seconds",
    "max_logit_diff" (None without verify)}."""
    args = ExportOptions.of(options, **kwargs)
    check_choice("dtype", args.dtype, ("float32", "float16"))
    check_choice("device", args.device, ("CPU", "GPU", "Ascend"))
    if args.batch_size is None or args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if not args.output:
        raise UsageError("--output names the .mindir file to write")
    check_output(args.output, args.force, suffix=".mindir", option="--output")
    check_weights(args)
    if args.ema and not args.checkpoint:
        raise UsageError("--ema exports the EMA weights of a train_ms.py checkpoint: name it with --checkpoint")
    cfg = ppt_config(args)
    from ms_ppt.context import set_context
    from ms_ppt.factory import create_model
    set_context("graph", args.device)
    model = create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, ppt_config=cfg,
                         dtype=args.dtype, img_size=args.img_size, ema=args.ema,
                         custom_kernels=False)  # portable graph: no host-compiled .so inside
    seconds = export(model, args.batch_size, args.output)
    size = model.arch.img_size
    return {"output": args.output, "config": cfg, "input_shape": [args.batch_size, 3, size, size],
            "mib": os.path.getsize(args.output) / 2**20, "seconds": seconds,
            "max_logit_diff": verify(model, args.output, args.batch_size) if args.verify else None}


def export(model, batch_size: int, output: str) -> float:
    """mindspore.export to a temporary name in the output folder, then rename; returns seconds."""
    import mindspore as ms
    size = model.arch.img_size
    example = ms.Tensor(np.zeros((batch_size, 3, size, size)), model.cls_token.dtype)
    start = time.perf_counter()
    # file_name without the suffix: mindspore.export adds ".mindir" to the temporary name it is given
    atomic_write(output, lambda tmp: ms.export(model, example, file_name=tmp[:-len(".mindir")],
                                               file_format="MINDIR"))
    return time.perf_counter() - start


def verify(model, path: str, batch_size: int) -> float:
    """Max |logit difference| between the reloaded MindIR and the live cell on random images."""
    import mindspore as ms
    size = model.arch.img_size
    x = ms.Tensor(np.random.RandomState(0).randn(batch_size, 3, size, size), model.cls_token.dtype)
    graph = ms.nn.GraphCell(ms.load(path))
    return float(np.abs(graph(x).asnumpy().astype(np.float64) - model(x).asnumpy().astype(np.float64)).max())
