#!/usr/bin/env python
"""ImageNet evaluation of DeiT/ViT with PPT in MindSpore: top-1/top-5, loss, MACs, throughput, policies.

    python scripts/eval_ms.py                     # demo: shipped sample, random weights, about a minute
    python scripts/eval_ms.py --model deit_small_patch16_224 --checkpoint deit_small_patch16_224-cd65a155.pth \
        --data-path /data/imagenet --r_tokens 50 --pp_loc_list 3 6 9 --threshold 7e-5
    msrun --worker_num=8 --local_worker_num=8 --join=True scripts/eval_ms.py ...   # data parallel, same report
"""
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

from ppt_cli import options, run_tool


def build_parser():
    parser = options.build_parser("MindSpore")
    options.add_mode_arg(parser)
    parser.add_argument("--preprocess", choices=["mindspore", "pil"], default="mindspore",
                        help="mindspore: mindcv's pipeline; pil: bit-identical to timm/torchvision (for parity)")
    parser.add_argument("--device", "--device_target", dest="device", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--ema", action="store_true",
                        help="the EMA weights of a train_ms.py checkpoint (--checkpoint) instead of its weights")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: evaluate(args))


def evaluate(args) -> dict:
    from ms_ppt import evaluation  # imported after run_tool has quieted MindSpore's logs
    return evaluation.evaluate(options.to_options(args, evaluation.MSEvalOptions))


if __name__ == "__main__":
    sys.exit(main())
