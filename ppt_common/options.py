"""The checks on an evaluation's options (an argparse namespace or any object with the same attributes), before
any work: each bad value is a UsageError naming the option."""
from __future__ import annotations

import os
import sys
from typing import Optional

from ppt_common.config import DEFAULT_METHOD, DEFAULT_R, PPTConfig, get_arch
from ppt_common.files import OutputError, check_outputs
from ppt_common.imagenet import NUM_CLASSES
from ppt_common.errors import UsageError


def check_weights(args) -> None:
    """One source of weights, and a local one that exists."""
    if args.checkpoint and args.pretrained:
        raise UsageError("--checkpoint and --pretrained name two sources of weights: give one")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint not found: {args.checkpoint}" if not os.path.exists(args.checkpoint)
                         else f"checkpoint is not a file: {args.checkpoint}")


def check_args(args) -> None:
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.throughput_runs < 0:
        raise UsageError(f"--throughput-runs must be >= 0, got {args.throughput_runs}")
    check_weights(args)
    try:
        check_outputs([("--output-json", args.output_json), ("--save-predictions", predictions_path(args))],
                      args.force)
    except OutputError as e:
        raise UsageError(str(e)) from None


def predictions_path(args) -> Optional[str]:
    """--save-predictions with the .npz suffix that np.savez would add."""
    path = args.save_predictions
    return path if path is None or path.endswith(".npz") else path + ".npz"


def check_imagenet_head(num_classes: int) -> None:
    """Labels are ImageNet-1k indices: refuse, before any image is read, a head that cannot be scored on them."""
    if num_classes != NUM_CLASSES:
        raise UsageError(f"the model's head has {num_classes} classes, but evaluation scores ImageNet-1k labels "
                         f"({NUM_CLASSES} classes): use a checkpoint with an ImageNet-1k head")


def ppt_config(args) -> PPTConfig:
    if args.target_gmacs is not None:
        choose_r_for_target(args)
    r_tokens = args.r_tokens if args.r_tokens is not None else [DEFAULT_R]
    r = 0 if args.dense else (r_tokens[0] if len(r_tokens) == 1 else tuple(r_tokens))
    try:
        return PPTConfig(r=r, pp_loc_list=tuple(args.pp_loc_list), threshold=args.threshold,
                         prop_attn=args.prop_attn, method=getattr(args, "method", DEFAULT_METHOD))
    except ValueError as e:
        raise UsageError(str(e)) from None


def choose_r_for_target(args) -> None:
    """--target-gmacs becomes --r_tokens (once: the tools may build their configuration more than once), and the
    choice with its rule is printed."""
    from ppt_common.macs import r_for_target_gmacs
    if args.dense or args.r_tokens is not None:
        raise UsageError("--target-gmacs chooses r: give it without --r_tokens or --dense")
    try:
        r, _, message = r_for_target_gmacs(get_arch(args.model), args.target_gmacs, args.pp_loc_list,
                                           getattr(args, "method", DEFAULT_METHOD))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(message, file=sys.stderr)
    args.r_tokens, args.target_gmacs = [r], None
