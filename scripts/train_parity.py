#!/usr/bin/env python
"""Cross-framework training parity on your checkpoint and images: the PyTorch reference and MindSpore, same weights,
same batch, random elements off (drop rates 0, no mixup or erasing), take the same AdamW steps.

    python scripts/train_parity.py --checkpoint deit_tiny_patch16_224.pth --data-path ../shared/data/imagenet-sample \
        --limit 8 --mixed-threshold --output-json train_parity.json

Reports, step by step: both losses, the worst gradient gap over parameters (max |g_ms - g_pt| / max |g_pt|), the
worst weight gap after the update (same measure), and whether every image kept the same tokens.
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert import read_class_names
from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common.files import atomic_write, json_writer
from ppt_common.parity import DEFAULT_BOUNDS, compare_runs, worst_relative_gap
from ppt_common.training import RECIPE


def build_parser():
    p = options.build_parser("training parity", predictions=False)
    p.set_defaults(dtype="float64", batch_size=8, limit=8)
    options.add_mode_arg(p)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4, 3e-4, 2e-4, 1e-4],
                   help="the lr of each step (one AdamW step each)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=RECIPE.weight_decay)
    p.add_argument("--smoothing", type=float, default=RECIPE.smoothing)
    p.add_argument("--mixed-threshold", dest="mixed_threshold", action="store_true",
                   help="set the threshold between the batch's lowest and highest score variance at the first PP "
                        "block, so that some images pool and some prune")
    return p


def validate(args) -> dict:
    eval_options, cfg, items, classes = options.prepare(args, cached_weights)
    if args.dtype == "float16":
        raise ev.UsageError("training parity runs in float32 or float64")
    import dataclasses
    import torch
    import mindspore as ms
    import ms_ppt
    import pt_reference
    from ms_ppt import training as mst
    from ms_ppt.context import set_context
    from ms_ppt.vision_transformer import params_from_numpy
    from pt_reference import training as ptt
    set_context(args.mode)
    images, labels, paths = next(ev.iter_batches(items[:args.batch_size], args.batch_size,
                                                 ev.pil_preprocess(args.model), args.num_workers, "fail", []))
    np_dtype = np.float64 if args.dtype == "float64" else np.float32
    images = images.astype(np_dtype)
    pt = pt_reference.create_model(args.model, checkpoint=args.checkpoint, pretrained=eval_options.pretrained,
                                   ppt_config=cfg, trace=True, dtype=args.dtype)
    ev.check_classes(pt.num_classes, classes, read_class_names(args.checkpoint))
    targets = np.eye(pt.num_classes, dtype=np_dtype)[labels]
    if args.mixed_threshold and cfg.pp_loc_list:
        pt_reference.run_with_trace(pt, images)
        variance = np.sort(pt.ppt_trace[0].variance)
        cfg = dataclasses.replace(cfg, threshold=float(np.sqrt(max(variance[0], 1e-30) * variance[-1])))
        pt = pt_reference.apply_ppt(pt, cfg, trace=True)
    state = {k: v.numpy() for k, v in pt.state_dict().items()}
    msm = ms_ppt.create_model(args.model, num_classes=pt.num_classes, ppt_config=cfg, trace=True, dtype=args.dtype)
    params_from_numpy(msm, state)
    pt.train()
    msm.set_train(True)
    pt_step = ptt.TrainStep(pt, ptt.build_loss(args.smoothing), ptt.build_optimizer(pt, weight_decay=args.weight_decay))
    optimizer = mst.build_optimizer(msm, weight_decay=args.weight_decay)
    ms_step = mst.TrainStep(mst.LossCell(msm, mst.build_loss(args.smoothing)), optimizer, return_grads=True)
    steps = []
    for step, lr in enumerate(args.lrs):
        with torch.no_grad():
            logits_pt = pt(torch.from_numpy(images)).numpy()
        traces_pt = list(pt.ppt_trace)
        logits_ms, traces_ms, _ = ms_ppt.run_with_trace(msm, images)
        traces = compare_runs([traces_pt], [traces_ms], logits_pt, logits_ms, labels, paths, cfg.threshold,
                              DEFAULT_BOUNDS)
        loss_pt, grads_pt = pt_step(torch.from_numpy(images), torch.from_numpy(targets), lr)
        loss_ms, finite, grads_ms = ms_step(ms.Tensor(images), ms.Tensor(targets), None, *optimizer.scalars(lr))
        grad_gap, grad_worst = worst_relative_gap({p.name: g.asnumpy() for p, g in zip(optimizer.params, grads_ms)},
                                                  {k: v.numpy() for k, v in grads_pt.items()})
        weights_pt = {k: v.detach().numpy() for k, v in pt.named_parameters()}
        weight_gap, weight_worst = worst_relative_gap({p.name: p.asnumpy() for p in optimizer.params}, weights_pt)
        steps.append({"step": step, "lr": lr, "loss_pt": loss_pt, "loss_ms": float(loss_ms.asnumpy()),
                      "identical_traces": traces["images_with_identical_traces"] == len(labels),
                      "pooled_per_block": [int((1 - t.policy).sum()) for t in traces_ms],
                      "max_abs_logit_diff": traces["max_abs_logit_diff"],
                      "grad_gap": grad_gap, "grad_worst_parameter": grad_worst,
                      "weight_gap_after": weight_gap, "weight_worst_parameter": weight_worst,
                      "finite": bool(finite.asnumpy())})
        s = steps[-1]
        print(f"step {step} lr {lr:.3g}: loss pt {s['loss_pt']:.12f} ms {s['loss_ms']:.12f} | grad gap "
              f"{grad_gap:.3g} ({grad_worst}) | weight gap {weight_gap:.3g} ({weight_worst}) | traces "
              f"{'identical' if s['identical_traces'] else 'DIFFERENT'} | pooled per block {s['pooled_per_block']} "
              f"of {len(labels)}")
    report = {"steps": steps, "worst_grad_gap": max(s["grad_gap"] for s in steps),
              "worst_weight_gap": max(s["weight_gap_after"] for s in steps),
              "all_traces_identical": all(s["identical_traces"] for s in steps),
              "config": {"model": args.model, "checkpoint": args.checkpoint, "dtype": args.dtype, "mode": args.mode,
                         "images": len(labels), "r_tokens": cfg.r if not isinstance(cfg.r, tuple) else list(cfg.r),
                         "pp_loc_list": list(cfg.pp_loc_list), "threshold": cfg.threshold,
                         "weight_decay": args.weight_decay, "smoothing": args.smoothing}}
    print(f"worst gradient gap {report['worst_grad_gap']:.3g}, worst weight gap {report['worst_weight_gap']:.3g}, "
          f"traces identical at every step: {report['all_traces_identical']}")
    if args.output_json:
        atomic_write(args.output_json, json_writer(report))
    return report


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: validate(args))


if __name__ == "__main__":
    sys.exit(main())
