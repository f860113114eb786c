#!/usr/bin/env python
"""The PyTorch twin of eval_ms.py: the same options and outputs, on pt_reference (timm + PPT).

    python scripts/eval_pt.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth --data-path DIR
"""
import sys

import _bootstrap  # noqa: F401

import numpy as np

from ppt_common import evaluation as ev
from ppt_common.config import get_arch, reducing_blocks


def main(argv=None) -> int:
    parser = ev.build_parser("PyTorch")
    parser.add_argument("--preprocess", choices=["pil"], default="pil",
                        help="PIL/torchvision eval transform (the MindSpore pipeline is in eval_ms.py)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    try:
        cfg, items = ev.prepare(args)
        import torch
        import pt_reference
        from convert import CheckpointError
        torch.manual_seed(0)
        torch.backends.cuda.matmul.allow_tf32 = False  # parity: no TF32 on GPU
        torch.backends.cudnn.allow_tf32 = False
        try:
            model = pt_reference.create_model(args.model, checkpoint=args.checkpoint, ppt_config=cfg, trace=True,
                                              dtype=args.dtype)
        except CheckpointError as e:
            raise ev.UsageError(str(e)) from None
        ev.check_imagenet_head(model.num_classes)
        model = model.to(args.device)
        dtype = next(model.parameters()).dtype
        preprocess = ev.pil_preprocess(args.model)
        metrics, skipped, first = ev.Metrics(), [], None
        batches = ev.iter_batches(items, args.batch_size, preprocess, args.num_workers, args.on_error, skipped)
        with torch.no_grad():
            for images, labels, paths in ev.progress(batches, ev.num_batches(len(items), args.batch_size),
                                                     args.quiet, "eval_pt"):
                logits, traces, _ = pt_reference.run_with_trace(model, images)
                policies = np.stack([t.policy for t in traces], 1) if traces else None
                metrics.add(logits, labels, paths, policies)
                first = images if first is None else first
            if first is None:
                raise ev.UsageError("no image could be read")
            seconds = float("nan")
            if args.throughput_runs:
                pt_reference.set_trace(model, False)
                batch = torch.from_numpy(np.resize(first, (args.batch_size,) + first.shape[1:])).to(args.device, dtype)

                def run():
                    model(batch)
                    if batch.is_cuda:
                        torch.cuda.synchronize()
                seconds = ev.time_batches(run, args.throughput_runs)
        ev.finish(args, "pytorch", metrics, reducing_blocks(get_arch(args.model), cfg), seconds, skipped,
                           {"preprocess": "pil", "device": args.device})
    except (ev.UsageError, FileNotFoundError, ValueError) as e:
        return ev.fail(str(e))
    except KeyboardInterrupt:
        return ev.interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
