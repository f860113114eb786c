"""ImageNet evaluation in MindSpore (what scripts/eval_ms.py runs): `evaluate(...) -> report`, timm's validate shape
over the framework-free loop in ppt_common.evaluation."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from ppt_common import evaluation as ev
from ppt_common.options import EvalOptions, check_choice


@dataclasses.dataclass
class MSEvalOptions(EvalOptions):
    mode: str = "graph"  # MindSpore's GRAPH_MODE or PyNative
    preprocess: str = "mindspore"  # mindcv's pipeline; "pil": bit-identical to timm/torchvision (for parity)
    device: str = "CPU"  # CPU, GPU or Ascend
    ema: bool = False  # the EMA weights of a train_ms.py checkpoint (its 'ema.' entries)


def evaluate(options: MSEvalOptions = None, **kwargs) -> dict:
    """Evaluate and return the report (the JSON eval_ms.py writes); options as MSEvalOptions, or their names as
    keyword arguments: `evaluate(model="deit_small_patch16_224", checkpoint=..., data_path=[...])`. Writes only
    output_json and save_predictions, when given. Under msrun each rank takes a shard and rank 0 prints and writes
    the whole evaluation's report."""
    options = MSEvalOptions.of(options, **kwargs)
    check_choice("mode", options.mode, ("graph", "pynative"))
    check_choice("preprocess", options.preprocess, ("mindspore", "pil"))
    check_choice("device", options.device, ("CPU", "GPU", "Ascend"))
    from convert.hub import cached_weights
    if options.ema and not options.checkpoint:
        raise ev.UsageError("--ema evaluates the EMA weights of a train_ms.py checkpoint: name it with --checkpoint")
    cfg, items, classes = ev.prepare(options, cached_weights)
    import mindspore as ms
    from ms_ppt.context import set_context
    set_context(options.mode, options.device)
    from ms_ppt.distributed import mindspore_world
    world = mindspore_world()
    ms.set_seed(0)  # the demo's random weights are the same every run, on every rank
    from ms_ppt.data import eval_preprocess
    from convert import read_class_names
    from ms_ppt.factory import create_model, run_with_trace
    from ms_ppt.vision_transformer import params_from_numpy
    model = create_model(options.model, checkpoint=options.checkpoint, pretrained=options.pretrained,
                         ppt_config=cfg, trace=True, dtype=options.dtype, img_size=options.img_size,
                         ema=options.ema)
    note = ev.check_classes(model.arch.num_classes, classes, read_class_names(options.checkpoint))
    if note and world.is_main:
        print(f"note: {note}", file=sys.stderr)
    preprocess = eval_preprocess(options.model, options.preprocess, options.img_size)
    result = ev.evaluate_items(items, lambda images: run_with_trace(model, images)[:2], preprocess,
                               options.batch_size, options.num_workers, options.on_error, options.quiet, "eval_ms",
                               world, fixed_batch=options.mode == "graph")
    if result.sample is None:
        raise ev.UsageError("no image could be read")
    seconds = float("nan")
    if options.throughput_runs and world.is_main:
        plain = create_model(options.model, num_classes=model.arch.num_classes, ppt_config=cfg, dtype=options.dtype,
                             img_size=options.img_size)
        params_from_numpy(plain, {p.name: p.asnumpy() for p in model.get_parameters()})
        batch = ms.Tensor(np.resize(result.sample, (options.batch_size,) + result.sample.shape[1:]),
                          plain.cls_token.dtype)
        seconds = ev.time_batches(lambda: plain(batch).asnumpy(), options.throughput_runs)
    return ev.finish(options, "mindspore", result.metrics, [p.index for p in model.pp_blocks], seconds,
                     result.skipped, {"mode": options.mode, "preprocess": options.preprocess,
                                      "device": options.device, "ema": options.ema}, world, result.seconds, classes)
