#!/usr/bin/env python
"""float16 vs float32 in MindSpore on your images: policies, selections and top-1 that change.

    python tools/float16_report.py --checkpoint deit_tiny_patch16_224.pth --data-path DIR [DIR ...]

float16 runs the matmuls in float16 and keeps softmax, importance scores, variance, similarity and LayerNorm in
float32 (the deployment setting on Ascend). Disagreements are reported with their margins as in parity.py.
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert import read_class_names
from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common.parity import compare_on_images, publish

# float16 carries ~1e-3 relative error: bounds 10x wider than parity.py's float32 ones
FP16_BOUNDS = {"policy": 1e-1, "prune": 1e-1, "pool": 1e-2}


def main(argv=None) -> int:
    parser = options.build_parser("float16 report", predictions=False)
    options.add_mode_arg(parser)
    args = parser.parse_args(argv)
    return run_tool(lambda: run(args))


def run(args) -> int:
    eval_options, cfg, items, classes = options.prepare(args, cached_weights)
    import ms_ppt
    from ms_ppt.vision_transformer import params_from_numpy
    from ms_ppt.context import set_context
    set_context(args.mode)
    fp32 = ms_ppt.create_model(args.model, checkpoint=args.checkpoint, pretrained=eval_options.pretrained, ppt_config=cfg,
                               trace=True)
    ev.check_classes(fp32.arch.num_classes, classes, read_class_names(args.checkpoint))
    fp16 = ms_ppt.create_model(args.model, num_classes=fp32.arch.num_classes, ppt_config=cfg, trace=True,
                               dtype="float16")
    params_from_numpy(fp16, {p.name: p.asnumpy() for p in fp32.get_parameters()})

    def runner(model, dtype):
        def run(images):
            logits, traces, _ = ms_ppt.run_with_trace(model, images.astype(dtype))
            return logits.astype(np.float64), traces
        return run

    report, _ = compare_on_images(runner(fp32, np.float32), runner(fp16, np.float16), items, eval_options,
                                  cfg.threshold, FP16_BOUNDS, names=("fp32", "fp16"))
    publish(report, args.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
