#!/usr/bin/env python
"""The PyTorch twin of eval_ms.py: the same options and outputs, on pt_reference (timm + PPT).

    python scripts/eval_pt.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth --data-path DIR
    torchrun --nproc_per_node 2 scripts/eval_pt.py ...   # data parallel (gloo on CPU), same report
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

from ppt_cli import options, run_tool


def build_parser():
    parser = options.build_parser("PyTorch")
    parser.add_argument("--preprocess", choices=["pil"], default="pil",
                        help="PIL/torchvision eval transform (the MindSpore pipeline is in eval_ms.py)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: evaluate(args))


def evaluate(args) -> dict:
    from pt_reference import evaluation
    return evaluation.evaluate(options.to_options(args, evaluation.PTEvalOptions))


if __name__ == "__main__":
    sys.exit(main())
