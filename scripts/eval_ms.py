#!/usr/bin/env python
"""ImageNet evaluation of DeiT/ViT with PPT in MindSpore: top-1/top-5, loss, MACs, throughput, policies.

    python scripts/eval_ms.py                     # demo: shipped sample, random weights, about a minute
    python scripts/eval_ms.py --model deit_small_patch16_224 --checkpoint deit_small_patch16_224-cd65a155.pth \
        --data-path /data/imagenet --r_tokens 50 --pp_loc_list 3 6 9 --threshold 7e-5
    msrun --worker_num=8 --local_worker_num=8 --join=True scripts/eval_ms.py ...   # data parallel, same report
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev


def build_parser():
    parser = options.build_parser("MindSpore")
    parser.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    parser.add_argument("--preprocess", choices=["mindspore", "pil"], default="mindspore",
                        help="mindspore: mindcv's pipeline; pil: bit-identical to timm/torchvision (for parity)")
    parser.add_argument("--device", "--device_target", dest="device", default="CPU", choices=["CPU", "GPU", "Ascend"])
    return parser


def validate(args) -> dict:
    """Evaluate as `args` say and return the report; under msrun each rank takes a shard and rank 0 prints and
    writes the whole evaluation's report."""
    cfg, items = ev.prepare(args, cached_weights)
    import mindspore as ms
    from ms_ppt.context import set_context
    set_context(args.mode, args.device)
    from ms_ppt.distributed import mindspore_world
    world = mindspore_world()
    ms.set_seed(0)  # the demo's random weights are the same every run, on every rank
    import ms_ppt
    from ms_ppt.vision_transformer import params_from_numpy
    model = ms_ppt.create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                                ppt_config=cfg, trace=True, dtype=args.dtype)
    ev.check_imagenet_head(model.arch.num_classes)
    from ms_ppt.data import eval_preprocess
    preprocess = eval_preprocess(args.model, args.preprocess)
    result = ev.evaluate(items, lambda images: ms_ppt.run_with_trace(model, images)[:2], preprocess, args,
                         "eval_ms", world, fixed_batch=args.mode == "graph")
    if result.sample is None:
        raise ev.UsageError("no image could be read")
    seconds = float("nan")
    if args.throughput_runs and world.is_main:
        plain = ms_ppt.create_model(args.model, num_classes=model.arch.num_classes, ppt_config=cfg, dtype=args.dtype)
        params_from_numpy(plain, {p.name: p.asnumpy() for p in model.get_parameters()})
        batch = ms.Tensor(np.resize(result.sample, (args.batch_size,) + result.sample.shape[1:]), plain.cls_token.dtype)
        seconds = ev.time_batches(lambda: plain(batch).asnumpy(), args.throughput_runs)
    return ev.finish(args, "mindspore", result.metrics, [p.index for p in model.pp_blocks], seconds, result.skipped,
                     {"mode": args.mode, "preprocess": args.preprocess, "device": args.device}, world, result.seconds)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: validate(args))


if __name__ == "__main__":
    sys.exit(main())
