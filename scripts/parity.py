#!/usr/bin/env python
"""Cross-framework parity on your data: same weights, same input arrays, pt_reference vs ms_ppt.

    python scripts/parity.py --checkpoint deit_tiny_patch16_224.pth --data-path ../shared/data/imagenet-sample \
        --dtype float64 --output-json parity.json

Reports per PP block the policy and selection agreement, every image's first disagreement with its margin
(near-tie or not), the logits' max difference, top-1/top-5 of each framework and the images predicted differently.
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert import read_class_names
from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common.parity import DEFAULT_BOUNDS, compare_on_images, publish


def main(argv=None) -> int:
    parser = options.build_parser("parity", predictions=False)
    parser.set_defaults(dtype="float64", batch_size=16)
    options.add_mode_arg(parser)
    args = parser.parse_args(argv)
    return run_tool(lambda: run(args))


def run(args) -> int:
    eval_options, cfg, items, classes = options.prepare(args, cached_weights)
    if args.dtype == "float16":
        raise ev.UsageError("parity runs in float32 or float64")
    import torch
    import ms_ppt
    import pt_reference
    from ms_ppt.vision_transformer import params_from_numpy
    from ms_ppt.context import set_context
    set_context(args.mode)
    torch.manual_seed(0)
    pt = pt_reference.create_model(args.model, checkpoint=args.checkpoint, pretrained=eval_options.pretrained,
                                   ppt_config=cfg, trace=True, dtype=args.dtype)
    ev.check_classes(pt.num_classes, classes, read_class_names(args.checkpoint))
    state = {k: v.float().numpy() for k, v in pt.state_dict().items()}  # the MindSpore weights come from these
    msm = ms_ppt.create_model(args.model, num_classes=pt.num_classes, ppt_config=cfg, trace=True,
                              dtype=args.dtype)
    params_from_numpy(msm, state)
    np_dtype = np.float64 if args.dtype == "float64" else np.float32

    def run_pt(images):
        logits, traces, _ = pt_reference.run_with_trace(pt, images.astype(np_dtype))
        return logits.astype(np.float64), traces

    def run_ms(images):
        logits, traces, _ = ms_ppt.run_with_trace(msm, images.astype(np_dtype))
        return logits, traces

    report, skipped = compare_on_images(run_pt, run_ms, items, eval_options, cfg.threshold, DEFAULT_BOUNDS)
    report["config"] = {"model": args.model, "checkpoint": args.checkpoint, "dtype": args.dtype,
                        "mode": args.mode, "r_tokens": cfg.r if not isinstance(cfg.r, tuple) else list(cfg.r),
                        "pp_loc_list": list(cfg.pp_loc_list), "threshold": cfg.threshold, "method": cfg.method,
                        "prop_attn": cfg.prop_attn, "skipped_images": skipped}
    publish(report, args.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
