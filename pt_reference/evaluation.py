"""ImageNet evaluation in PyTorch (what scripts/eval_pt.py runs): `evaluate(...) -> report`, timm's validate shape
over the framework-free loop in ppt_common.evaluation."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from ppt_common import evaluation as ev
from ppt_common.config import reducing_blocks
from ppt_common.options import EvalOptions, check_choice


@dataclasses.dataclass
class PTEvalOptions(EvalOptions):
    preprocess: str = "pil"  # PIL/torchvision's eval transform (the MindSpore pipeline is eval_ms.py's)
    device: str = "cpu"  # a torch device, e.g. cpu or cuda


def evaluate(options: PTEvalOptions = None, **kwargs) -> dict:
    """Evaluate and return the report (the JSON eval_pt.py writes); options as PTEvalOptions, or their names as
    keyword arguments. Writes only output_json and save_predictions, when given. Under torchrun each rank takes a
    shard and rank 0 prints and writes the whole evaluation's report."""
    options = PTEvalOptions.of(options, **kwargs)
    check_choice("preprocess", options.preprocess, ("pil",))
    from convert.hub import cached_weights
    cfg, items, classes = ev.prepare(options, cached_weights)
    import torch
    from pt_reference.distributed import torch_world
    from pt_reference.factory import create_model, run_with_trace
    from pt_reference.vision_transformer import set_trace
    world = torch_world(options.device)
    torch.manual_seed(0)  # the demo's random weights are the same every run, on every rank
    torch.backends.cuda.matmul.allow_tf32 = False  # parity: no TF32 on GPU
    torch.backends.cudnn.allow_tf32 = False
    model = create_model(options.model, checkpoint=options.checkpoint, pretrained=options.pretrained,
                         ppt_config=cfg, trace=True, dtype=options.dtype, img_size=options.img_size)
    from convert import read_class_names
    note = ev.check_classes(model.num_classes, classes, read_class_names(options.checkpoint))
    if note and world.is_main:
        print(f"note: {note}", file=sys.stderr)
    model = model.to(options.device)
    result = ev.evaluate_items(items, lambda images: run_with_trace(model, images)[:2],
                               ev.pil_preprocess(options.model, options.img_size), options.batch_size, options.num_workers,
                               options.on_error, options.quiet, "eval_pt", world)
    if result.sample is None:
        raise ev.UsageError("no image could be read")
    seconds = float("nan")
    if options.throughput_runs and world.is_main:
        set_trace(model, False)
        weight = next(model.parameters())
        batch = torch.from_numpy(np.resize(result.sample, (options.batch_size,) + result.sample.shape[1:]))
        batch = batch.to(weight.device, weight.dtype)

        def run():
            with torch.no_grad():
                model(batch)
            if batch.is_cuda:
                torch.cuda.synchronize()
        seconds = ev.time_batches(run, options.throughput_runs)
    return ev.finish(options, "pytorch", result.metrics, reducing_blocks(options.arch(), cfg), seconds,
                     result.skipped, {"preprocess": "pil", "device": options.device,
                                      "threads": torch.get_num_threads()}, world, result.seconds, classes)
