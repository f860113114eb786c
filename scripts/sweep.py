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
--schedules FILE... adds schedule files (scripts/search_schedule.py's) as settings, marked apart in the plot. Every
row has its mean KL divergence from the dense model's softmax and its top-1 agreement with dense (a third panel).
"""
import argparse
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

from ppt_cli import options, run_tool
from ppt_common.config import DEFAULT_METHOD, DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, METHODS


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
    p.add_argument("--schedules", nargs="+", default=[], metavar="FILE",
                   help="schedule files (scripts/search_schedule.py's), each evaluated as a setting and marked in "
                        "the plot")
    p.add_argument("--output", required=True, help="path prefix of the outputs: PREFIX.json, PREFIX.csv, PREFIX.png")
    p.add_argument("--resume-sweep", dest="resume_sweep", action="store_true",
                   help="continue the sweep in PREFIX.json (same images and model); --resume names weights, as in "
                        "the authors' main.py")
    p.add_argument("--force", action="store_true", help="overwrite an existing sweep instead")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    options.add_mode_arg(p)
    p.add_argument("--preprocess", choices=["mindspore", "pil"], default="mindspore")
    p.add_argument("--calibrate", action="store_true",
                   help="for each r and PP block list: the threshold with the best top-1 on these images (ties to the "
                        "lower loss), with its margin over the next best")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(on_error="skip")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), "the table holds every setting finished so far (--resume-sweep continues)")


def run(args) -> dict:
    from ms_ppt import sweep  # imported after run_tool has quieted MindSpore's logs
    return sweep.run_sweep(options.to_options(args, sweep.SweepOptions))


if __name__ == "__main__":
    sys.exit(main())
