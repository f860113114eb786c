#!/usr/bin/env python
"""Search a per-block PPT schedule for a MAC budget on your own images (no labels, no training).

    python scripts/search_schedule.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth \\
        --data-path my-images --target-gmacs 0.8 --output schedule.json
    python scripts/eval_ms.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth \\
        --data-path imagenet/val --schedule schedule.json

Chooses which blocks reduce, r and the threshold at each, to keep the model's softmax closest (mean KL) to the
dense model's own on the first --limit images, within --target-gmacs (MACs as the evaluation counts them): the best
of evenly spaced uniform schedules, refined by exchanging tokens between blocks. The schedule so far is rewritten
after every exchange taken; running the same command again continues an interrupted search
(--force starts again). Runs in PyTorch (pt_reference): see docs/sweeps.md.
"""
import argparse
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

from ppt_cli import options, run_tool


def build_parser():
    from ppt_common.search import DEFAULT_STEPS, DEFAULT_THRESHOLDS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_args(p)
    p.add_argument("--data-path", "--data_path", dest="data_path", nargs="+", default=None,
                   help="folders of images (labels are not read; default: the demo sample)")
    p.add_argument("--target-gmacs", "--target_gmacs", dest="target_gmacs", type=float, required=True,
                   help="the budget: MACs per image in billions, as the evaluation counts them")
    p.add_argument("--output", required=True, help="the schedule file (JSON)")
    p.add_argument("--limit", type=int, default=256, help="images used (default 256)")
    p.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS),
                   help="tokens an exchange moves between blocks, coarse to fine (default: %(default)s)")
    p.add_argument("--min-gain-se", dest="min_gain_se", type=float, default=2.0,
                   help="an exchange is taken only if it lowers the mean KL by this many standard errors of its "
                        "per-image differences (default 2)")
    p.add_argument("--screen-images", dest="screen_images", type=int, default=64,
                   help="every exchange is screened on the first this many images, the best four scored on all "
                        "(default 64)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
                   help="thresholds tried at each block (default: 0 prune only, 7e-5, 1 pool only)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64)
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=2)
    p.add_argument("--force", action="store_true", help="start again instead of continuing --output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), "the schedule so far is in --output: run the same command to continue")


def run(args) -> int:
    from pt_reference.search import SearchOptions, search_schedule
    search_schedule(options.to_options(args, SearchOptions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
