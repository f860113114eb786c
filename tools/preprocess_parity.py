#!/usr/bin/env python
"""How much does MindSpore's data pipeline (mindcv) differ from PIL/torchvision, and what does it change?

    python tools/preprocess_parity.py --checkpoint deit_tiny_patch16_224.pth --data-path DIR [DIR ...]

Prints the pixel differences (in normalised units and in 8-bit levels), top-1 with each pipeline, and how many
images change policy or selection at each PP block, on the MindSpore model.
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert import read_class_names
from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ms_ppt.data import mindspore_preprocess
from ppt_common.config import data_config


def main(argv=None) -> int:
    parser = options.build_parser("preprocessing parity", json_output=False, predictions=False)
    options.add_mode_arg(parser)
    args = parser.parse_args(argv)
    return run_tool(lambda: run(args))


def run(args) -> int:
    eval_options, cfg, items, classes = options.prepare(args, cached_weights)
    import ms_ppt
    from ms_ppt.context import set_context
    set_context(args.mode)
    model = ms_ppt.create_model(args.model, checkpoint=args.checkpoint, pretrained=eval_options.pretrained,
                                ppt_config=cfg, trace=True, dtype=args.dtype)
    ev.check_classes(model.arch.num_classes, classes, read_class_names(args.checkpoint))
    pipelines = {"pil": ev.pil_preprocess(args.model), "mindspore": mindspore_preprocess(args.model)}
    std = np.array(data_config(args.model).std, np.float32)[:, None, None]
    diffs, results = [], {k: {"logits": [], "traces": []} for k in pipelines}
    labels = np.array([lbl for _, lbl in items])
    for start in ev.progress(range(0, len(items), args.batch_size), ev.num_batches(len(items), args.batch_size),
                             args.quiet, "preprocess"):
        paths = [p for p, _ in items[start:start + args.batch_size]]
        arrays = {k: np.stack([f(p) for p in paths]) for k, f in pipelines.items()}
        diffs.append(np.abs(arrays["pil"] - arrays["mindspore"]) * std * 255)  # in 8-bit levels
        for k, x in arrays.items():
            logits, traces, _ = ms_ppt.run_with_trace(model, x)
            results[k]["logits"].append(logits)
            results[k]["traces"].append(traces)
    d = np.concatenate(diffs)
    print(f"images: {len(items)}")
    print(f"pixel |difference| (8-bit levels): mean {d.mean():.3f}, 99th percentile {np.percentile(d, 99):.2f}, "
          f"max {d.max():.1f}; identical pixels {100 * (d < 0.5).mean():.1f} %")
    top1 = {k: 100 * float((np.concatenate(v["logits"]).argmax(1) == labels).mean()) for k, v in results.items()}
    preds = {k: np.concatenate(v["logits"]).argmax(1) for k, v in results.items()}
    print(f"top-1: pil {top1['pil']:.2f} %, mindspore {top1['mindspore']:.2f} %; "
          f"predictions differ on {int((preds['pil'] != preds['mindspore']).sum())} images")
    for j, block in enumerate(p.index for p in model.pp_blocks):
        pol = {k: np.concatenate([t[j].policy for t in v["traces"]]) for k, v in results.items()}
        same_sel = []
        for ta, tb in zip(results["pil"]["traces"], results["mindspore"]["traces"]):
            a, b = ta[j], tb[j]
            same_sel.append((a.policy == b.policy) & (a.kept == b.kept).all(1) & (a.merge_src == b.merge_src).all(1)
                            & (a.merge_dst == b.merge_dst).all(1))
        print(f"PP block {block}: policy differs on {int((pol['pil'] != pol['mindspore']).sum())} images, "
              f"selection differs on {int((~np.concatenate(same_sel)).sum())} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
