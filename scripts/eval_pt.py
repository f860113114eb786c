#!/usr/bin/env python
"""The PyTorch twin of eval_ms.py: the same options and outputs, on pt_reference (timm + PPT).

    python scripts/eval_pt.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth --data-path DIR
    torchrun --nproc_per_node 2 scripts/eval_pt.py ...   # data parallel (gloo on CPU), same report
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common.config import get_arch, reducing_blocks


def build_parser():
    parser = options.build_parser("PyTorch")
    parser.add_argument("--preprocess", choices=["pil"], default="pil",
                        help="PIL/torchvision eval transform (the MindSpore pipeline is in eval_ms.py)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def validate(args) -> dict:
    """Evaluate as `args` say and return the report; under torchrun each rank takes a shard and rank 0 prints and
    writes the whole evaluation's report."""
    cfg, items = ev.prepare(args, cached_weights)
    import torch
    import pt_reference
    from pt_reference.distributed import torch_world
    world = torch_world(args.device)
    torch.manual_seed(0)  # the demo's random weights are the same every run, on every rank
    torch.backends.cuda.matmul.allow_tf32 = False  # parity: no TF32 on GPU
    torch.backends.cudnn.allow_tf32 = False
    model = pt_reference.create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                                      ppt_config=cfg, trace=True, dtype=args.dtype)
    ev.check_imagenet_head(model.num_classes)
    model = model.to(args.device)
    result = ev.evaluate(items, lambda images: pt_reference.run_with_trace(model, images)[:2],
                         ev.pil_preprocess(args.model), args, "eval_pt", world)
    if result.sample is None:
        raise ev.UsageError("no image could be read")
    seconds = float("nan")
    if args.throughput_runs and world.is_main:
        pt_reference.set_trace(model, False)
        weight = next(model.parameters())
        batch = torch.from_numpy(np.resize(result.sample, (args.batch_size,) + result.sample.shape[1:]))
        batch = batch.to(weight.device, weight.dtype)

        def run():
            with torch.no_grad():
                model(batch)
            if batch.is_cuda:
                torch.cuda.synchronize()
        seconds = ev.time_batches(run, args.throughput_runs)
    return ev.finish(args, "pytorch", result.metrics, reducing_blocks(get_arch(args.model), cfg), seconds,
                     result.skipped, {"preprocess": "pil", "device": args.device, "threads": torch.get_num_threads()},
                     world, result.seconds)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: validate(args))


if __name__ == "__main__":
    sys.exit(main())
