#!/usr/bin/env python
"""Accuracy against cost over a grid of PPT settings (r, PP blocks, threshold, method) in MindSpore: a table and a
plot.

    python scripts/sweep.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth \
        --data-path imagenet-sample foolbox-imagenet --r-values 10 20 30 40 50 60 \
        --thresholds 0 3.5e-5 7e-5 1.4e-4 1 --output deit_tiny_sweep

writes deit_tiny_sweep.json and .csv (one row per setting: top-1, top-5, loss, GMACs, measured images/s, images
pooled per PP block; the dense model first) and deit_tiny_sweep.png (top-1 against GMACs and against images/s).
The images are decoded once, in the batches eval_ms.py forms, so every row equals eval_ms.py's report for that
setting. Each setting's graph is compiled once; images/s is its forward alone, after that compilation. The table
is rewritten after every setting: --resume-sweep continues an interrupted sweep, or extends one with another grid,
evaluating only the settings missing from it. Threshold 0 makes every image prune and a threshold above every variance makes every image pool.
--methods adds the other reductions (prune, pool, prune_fuse, decouple_merge), each one curve, at the same r values.
--calibrate adds, for each r and PP block list, the threshold with the best top-1 and its margin over the next best.
"""
import argparse
import sys
import time

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from convert.hub import cached_weights
from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common import sweep
from ppt_common.config import (DEFAULT_METHOD, DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, METHODS,
                               get_arch)
from ppt_common.files import OutputError, check_outputs
from ppt_common.macs import gmacs


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_args(p)
    p.add_argument("--data-path", "--data_path", dest="data_path", nargs="+", default=None,
                   help="ImageNet root holding val/, or folders of WordNet-id class folders (default: the demo sample)")
    p.add_argument("--r-values", dest="r_values", type=int, nargs="+", default=[DEFAULT_R],
                   help="r (tokens removed at each PP block) for each point of a curve")
    p.add_argument("--pp-loc-lists", dest="pp_loc_lists", nargs="+", default=[" ".join(map(str, DEFAULT_PP_LOC_LIST))],
                   help="PP block lists, each quoted: '3 6 9' '4 7 10'")
    p.add_argument("--thresholds", type=float, nargs="+", default=[DEFAULT_THRESHOLD], help="PPT's thresholds")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=[DEFAULT_METHOD],
                   help="reductions to compare: ppt at each threshold, the others (one rule for every image) once")
    p.add_argument("--output", required=True, help="path prefix of the outputs: PREFIX.json, PREFIX.csv, PREFIX.png")
    p.add_argument("--resume-sweep", dest="resume_sweep", action="store_true",
                   help="continue the sweep in PREFIX.json (same images and model); --resume names weights, as in "
                        "the authors' main.py")
    p.add_argument("--force", action="store_true", help="overwrite an existing sweep instead")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.add_argument("--preprocess", choices=["mindspore", "pil"], default="mindspore")
    p.add_argument("--calibrate", action="store_true",
                   help="for each r and PP block list: the threshold with the best top-1 on these images (ties to the "
                        "lower loss), with its margin over the next best")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(on_error="skip")
    return p


def check(args):
    """The grid and the outputs, before any image is read: (settings, json, csv, png paths)."""
    if args.batch_size <= 0 or (args.limit is not None and args.limit <= 0):
        raise ev.UsageError("--batch-size and --limit must be positive")
    if min(args.r_values) < 0:
        raise ev.UsageError("--r-values must be >= 0")
    ev.check_weights(args)
    arch = get_arch(args.model)
    try:
        settings = sweep.grid(args.r_values, [sweep.parse_pp_loc_list(t) for t in args.pp_loc_lists], args.thresholds,
                              list(dict.fromkeys(args.methods)))
        for s in settings:
            gmacs(arch, s.ppt_config())  # PP blocks outside the model, bad thresholds
    except ValueError as e:
        raise ev.UsageError(str(e)) from None
    paths = [args.output + suffix for suffix in (".json", ".csv", ".png")]
    try:
        check_outputs([("--output", p) for p in paths], force=args.force or args.resume_sweep)
    except OutputError as e:
        raise ev.UsageError(f"{e} (--resume-sweep continues that sweep, --force replaces it)") from None
    if args.resume_sweep and args.force:
        raise ev.UsageError("--resume-sweep and --force: choose one")
    return settings, paths


def run(args) -> dict:
    settings, (json_path, csv_path, png_path) = check(args)
    try:
        done, done_config = sweep.read_table(json_path) if args.resume_sweep else ({}, {})
    except ValueError as e:
        raise ev.UsageError(str(e)) from None
    ev.use_cached_weights_for_demo(args, cached_weights)  # as eval_ms.py: the demo takes cached official weights
    items = ev.load_items(args)
    config = {"model": args.model, "checkpoint": args.checkpoint, "pretrained": args.pretrained,
              "data_path": args.data_path, "batch_size": ev.batch_size_for(len(items), args.batch_size),
              "mode": args.mode, "preprocess": args.preprocess}
    sweep.check_same_run(done_config, config, json_path)  # before any image is decoded
    import mindspore as ms
    from ms_ppt.context import set_context
    set_context(args.mode)
    ms.set_seed(0)
    import ms_ppt
    from ms_ppt.vision_transformer import params_from_numpy
    first = ms_ppt.create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, r=0)
    ev.check_imagenet_head(first.arch.num_classes)
    weights = {p.name: p.asnumpy() for p in first.get_parameters()}
    from ms_ppt.data import eval_preprocess
    preprocess = eval_preprocess(args.model, args.preprocess)
    batch_size = config["batch_size"]
    skipped = []
    batches = list(ev.iter_batches(items, batch_size, preprocess, args.num_workers, "skip", skipped))
    if not batches:
        raise ev.UsageError("no image could be read")
    config.update(num_images=sum(len(b[1]) for b in batches), skipped=len(skipped))
    sweep.check_same_run(done_config, config, json_path)
    order = {s.key: i for i, s in enumerate(settings)}
    kept = [key for key in done if key not in order]  # rows of another grid: an extended sweep keeps them
    order.update({key: len(settings) + i for i, key in enumerate(kept)})
    rows = sorted(done.values(), key=lambda row: order[row["setting"]])
    todo = [s for s in settings if s.key not in done]
    if done:
        print(f"resuming: {len(settings) - len(todo)} of {len(settings)} settings are in {json_path}"
              + (f"; its {len(kept)} other rows are kept" if kept else ""), file=sys.stderr)
    started = time.perf_counter()
    for i, setting in enumerate(todo):
        model = ms_ppt.create_model(args.model, num_classes=first.arch.num_classes,
                                    ppt_config=setting.ppt_config(), trace=True)
        params_from_numpy(model, weights)
        row = evaluate_setting(model, setting, batches, batch_size, args.mode == "graph")
        rows = sorted(rows + [row], key=lambda r: order[r["setting"]])
        sweep.write_table(json_path, csv_path, rows, config)
        if not args.quiet:
            print(f"[{i + 1}/{len(todo)}] {setting.key}: top-1 {row['top1']:.2f} %, {row['gmacs']:.4f} GMACs, "
                  f"{row['images_per_s']:.1f} images/s ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    calibration = None
    if args.calibrate:
        calibration = sweep.calibrate(rows)
        sweep.write_table(json_path, csv_path, rows, config, calibration)
        for choice in calibration:
            print(sweep.describe_calibration(choice))
    sweep.plot(rows, png_path, f"{args.model}, {config['num_images']} images")
    print(f"wrote {json_path}, {csv_path}, {png_path}")
    return {"rows": rows, "config": config, "calibration": calibration}


def evaluate_setting(model, setting, batches, batch_size: int, fixed_batch: bool) -> dict:
    """eval_ms.py's loop on decoded batches: short batches padded with their last image in graph mode."""
    from ms_ppt import run_with_trace
    metrics = ev.Metrics()
    forward_seconds = 0.0
    padded = [np.concatenate([b[0], np.repeat(b[0][-1:], batch_size - len(b[1]), 0)]) if fixed_batch and
              len(b[1]) < batch_size else b[0] for b in batches]
    run_with_trace(model, padded[0])  # compile before timing
    for images, (_, labels, paths) in zip(padded, batches):
        start = time.perf_counter()
        logits, traces = run_with_trace(model, images)[:2]
        forward_seconds += time.perf_counter() - start
        n = len(labels)
        policies = np.stack([t.policy for t in traces], 1)[:n] if traces else None
        metrics.add(np.asarray(logits)[:n], labels, paths, policies)
    result = metrics.result()
    pooled = (metrics.policy_matrix(len(model.pp_blocks)) == 1).sum(0).tolist()
    return {"setting": setting.key, "method": setting.method if setting.r else None, "r_tokens": setting.r,
            "pp_loc_list": list(setting.pp_loc_list),
            "threshold": setting.threshold if setting.r and setting.method == DEFAULT_METHOD else None, **result,
            "gmacs": gmacs(model.arch, setting.ppt_config()),
            "images_per_s": sum(len(p) for p in padded) / forward_seconds, "pooled_per_block": pooled}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), "the table holds every setting finished so far (--resume-sweep continues)")


if __name__ == "__main__":
    sys.exit(main())
