"""An evaluation's options, one dataclass with the command line's names (underscores for dashes), and their checks
before any work: each bad value is a UsageError naming the option."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from ppt_common.config import (DEFAULT_METHOD, DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, DEMO_MODEL,
                               METHODS, MODEL_CONFIGS, PPTConfig, get_arch)
from ppt_common.files import OutputError, check_outputs
from ppt_common.imagenet import NUM_CLASSES
from ppt_common.errors import UsageError


class Options:
    """A tool's options as a dataclass: the command line's names, underscores for dashes."""

    @classmethod
    def of(cls, options=None, **kwargs):
        """`options` (an instance, or None for the defaults) with `kwargs` replaced; an unknown name is refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(sorted(names))}")
        return dataclasses.replace(options, **kwargs) if options is not None else cls(**kwargs)


@dataclasses.dataclass
class ModelOptions(Options):
    """The model and its PPT schedule, as every tool that builds one takes them (ppt_config turns them into a
    PPTConfig)."""
    model: str = DEMO_MODEL
    r_tokens: Optional[Sequence[int]] = None  # one value, or one per PP block; None: the default r
    target_gmacs: Optional[float] = None  # choose r for this budget instead
    pp_loc_list: Sequence[int] = DEFAULT_PP_LOC_LIST
    threshold: float = DEFAULT_THRESHOLD
    method: str = DEFAULT_METHOD
    prop_attn: bool = True
    dense: bool = False
    pretrained: bool = False  # the model's official weights, downloaded once and cached


@dataclasses.dataclass
class EvalOptions(ModelOptions):
    """What to evaluate and how: the options of eval_ms.py and eval_pt.py. Each framework adds its own
    (ms_ppt.evaluation.MSEvalOptions, pt_reference.evaluation.PTEvalOptions)."""
    checkpoint: Optional[str] = None  # DeiT .pth / timm .bin / .safetensors / MindSpore .ckpt
    data_path: Optional[Sequence[str]] = None  # ImageNet roots holding val/, or folders of class folders; None: demo
    batch_size: int = 32
    dtype: str = "float32"
    num_workers: int = 2
    limit: Optional[int] = None
    on_error: str = "skip"  # an unreadable image: "skip" (counted) or "fail"
    throughput_runs: int = 5
    output_json: Optional[str] = None
    save_predictions: Optional[str] = None
    force: bool = False
    quiet: bool = False


def check_choice(option: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise UsageError(f"--{option.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_weights(options: EvalOptions) -> None:
    """One source of weights, and a local one that exists."""
    if options.checkpoint and options.pretrained:
        raise UsageError("--checkpoint and --pretrained name two sources of weights: give one")
    if options.checkpoint and not os.path.isfile(options.checkpoint):
        raise UsageError(f"checkpoint not found: {options.checkpoint}" if not os.path.exists(options.checkpoint)
                         else f"checkpoint is not a file: {options.checkpoint}")


def check_args(options: EvalOptions) -> None:
    check_choice("model", options.model, sorted(MODEL_CONFIGS))
    check_choice("method", options.method, METHODS)
    check_choice("dtype", options.dtype, ("float32", "float64", "float16"))
    check_choice("on_error", options.on_error, ("skip", "fail"))
    if isinstance(options.data_path, str):
        raise UsageError(f"data_path is a list of folders, got the string {options.data_path!r}")
    if options.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {options.batch_size}")
    if options.limit is not None and options.limit <= 0:
        raise UsageError(f"--limit must be positive, got {options.limit}")
    if options.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {options.num_workers}")
    if options.throughput_runs < 0:
        raise UsageError(f"--throughput-runs must be >= 0, got {options.throughput_runs}")
    check_weights(options)
    try:
        check_outputs([("--output-json", options.output_json), ("--save-predictions", predictions_path(options))],
                      options.force)
    except OutputError as e:
        raise UsageError(str(e)) from None


def predictions_path(options: EvalOptions) -> Optional[str]:
    """--save-predictions with the .npz suffix that np.savez would add."""
    path = options.save_predictions
    return path if path is None or path.endswith(".npz") else path + ".npz"


def check_imagenet_head(num_classes: int) -> None:
    """Labels are ImageNet-1k indices: refuse, before any image is read, a head that cannot be scored on them."""
    if num_classes != NUM_CLASSES:
        raise UsageError(f"the model's head has {num_classes} classes, but evaluation scores ImageNet-1k labels "
                         f"({NUM_CLASSES} classes): use a checkpoint with an ImageNet-1k head")


def ppt_config(options: ModelOptions) -> PPTConfig:
    if options.target_gmacs is not None:
        choose_r_for_target(options)
    r_tokens = options.r_tokens if options.r_tokens is not None else [DEFAULT_R]
    r = 0 if options.dense else (r_tokens[0] if len(r_tokens) == 1 else tuple(r_tokens))
    try:
        return PPTConfig(r=r, pp_loc_list=tuple(options.pp_loc_list), threshold=options.threshold,
                         prop_attn=options.prop_attn, method=getattr(options, "method", DEFAULT_METHOD))
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def choose_r_for_target(options: ModelOptions) -> None:
    """--target-gmacs becomes --r_tokens (once: the tools may build their configuration more than once), and the
    choice with its rule is printed."""
    from ppt_common.macs import r_for_target_gmacs
    if options.dense or options.r_tokens is not None:
        raise UsageError("--target-gmacs chooses r: give it without --r_tokens or --dense")
    try:
        r, _, message = r_for_target_gmacs(get_arch(options.model), options.target_gmacs, options.pp_loc_list,
                                           getattr(options, "method", DEFAULT_METHOD))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(message, file=sys.stderr)
    options.r_tokens, options.target_gmacs = [r], None
