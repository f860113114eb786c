"""The tools' options as dataclasses with the command line's names (underscores for dashes), and their checks
before any work: each bad value is a UsageError naming the option.

Every option declares its own range where it has one (`option(default, check)`), and `Options.of`, which every
library entry point calls, checks them all: a float that is not finite, a count below its minimum, a probability
outside [0, 1]. A new tool's options get the same validation by declaring their fields.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import sys
from typing import Callable, Optional, Sequence

from ppt_common.config import (DEFAULT_METHOD, DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, DEMO_MODEL,
                               METHODS, MODEL_CONFIGS, PPTConfig, model_arch)
from ppt_common.files import OutputError, check_outputs
from ppt_common.errors import UsageError


Check = Callable[[float], Optional[str]]  # a value -> what is wrong with it, or None


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {number(low)}"


def positive(v: float) -> Optional[str]:
    return None if v > 0 else "must be positive"


def between(low: float, high: float, high_open: bool = False) -> Check:
    """low <= v <= high (v < high with high_open)."""
    return lambda v: None if low <= v and (v < high if high_open else v <= high) else (
        f"must be in [{number(low)}, {number(high)}{')' if high_open else ']'}")


PROBABILITY = between(0, 1)
RATE = between(0, 1, high_open=True)  # a smoothing or drop rate: 1 would leave nothing


def option(default, check: Optional[Check] = None):
    """A dataclass field with its range; a sequence's check applies to each element."""
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Options:
    """A tool's options as a dataclass: the command line's names, underscores for dashes."""

    @classmethod
    def of(cls, options=None, **kwargs):
        """`options` (an instance, or None for the defaults) with `kwargs` replaced, its values checked; an unknown
        name is refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(sorted(names))}")
        done = dataclasses.replace(options, **kwargs) if options is not None else cls(**kwargs)
        done.check_values()
        return done

    def check_values(self) -> None:
        """Every number finite, every declared range held (None is an unset option)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    continue
                if not math.isfinite(v):
                    raise UsageError(f"{flag(f.name)} must be a finite number, got {v}")
                problem = f.metadata.get("check", lambda _: None)(v)
                if problem:
                    raise UsageError(f"{flag(f.name)} {problem}, got {value if value is v else list(values)}")


@dataclasses.dataclass
class ModelOptions(Options):
    """The model and its PPT schedule, as every tool that builds one takes them (ppt_config turns them into a
    PPTConfig)."""
    model: str = DEMO_MODEL
    r_tokens: Optional[Sequence[int]] = option(None, at_least(0))  # one value, or one per PP block; None: default r
    target_gmacs: Optional[float] = option(None, positive)  # choose r for this budget instead
    pp_loc_list: Sequence[int] = DEFAULT_PP_LOC_LIST
    threshold: float = option(DEFAULT_THRESHOLD, at_least(0))
    method: str = DEFAULT_METHOD
    prop_attn: bool = True
    dense: bool = False
    pretrained: bool = False  # the model's official weights, downloaded once and cached
    schedule: Optional[str] = None  # a schedule file (ppt_common.schedule): r and threshold per block instead
    img_size: Optional[int] = option(None, positive)  # None: the model's; another resamples the position embedding

    def arch(self):
        """The architecture the options build (the registered one, at img_size)."""
        try:
            return model_arch(self.model, self.img_size)
        except ValueError as e:
            raise UsageError(str(e)) from None


@dataclasses.dataclass
class EvalOptions(ModelOptions):
    """What to evaluate and how: the options of eval_ms.py and eval_pt.py. Each framework adds its own
    (ms_ppt.evaluation.MSEvalOptions, pt_reference.evaluation.PTEvalOptions)."""
    checkpoint: Optional[str] = None  # DeiT .pth / timm .bin / .safetensors / MindSpore .ckpt
    data_path: Optional[Sequence[str]] = None  # ImageNet roots holding val/, or folders of class folders; None: demo
    batch_size: int = option(32, positive)
    dtype: str = "float32"
    num_workers: int = option(2, at_least(0))
    limit: Optional[int] = option(None, positive)
    on_error: str = "skip"  # an unreadable image: "skip" (counted) or "fail"
    throughput_runs: int = option(5, at_least(0))
    output_json: Optional[str] = None
    save_predictions: Optional[str] = None
    force: bool = False
    quiet: bool = False


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise UsageError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_weights(options: EvalOptions) -> None:
    """One source of weights, and a local one that exists."""
    if options.checkpoint and options.pretrained:
        raise UsageError("--checkpoint and --pretrained name two sources of weights: give one")
    if options.checkpoint and not is_checkpoint(options.checkpoint):
        raise UsageError(f"checkpoint not found: {options.checkpoint}" if not os.path.exists(options.checkpoint)
                         else f"checkpoint is neither a file nor a Hugging Face model folder (with config.json): "
                              f"{options.checkpoint}")


def is_checkpoint(path: str) -> bool:
    """A file, or a Hugging Face model folder (convert.hf reads it)."""
    return os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json"))


def check_args(options: EvalOptions) -> None:
    check_choice("model", options.model, sorted(MODEL_CONFIGS))
    check_choice("method", options.method, METHODS)
    check_choice("dtype", options.dtype, ("float32", "float64", "float16"))
    check_choice("on_error", options.on_error, ("skip", "fail"))
    if isinstance(options.data_path, str):
        raise UsageError(f"data_path is a list of folders, got the string {options.data_path!r}")
    options.check_values()
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


def ppt_config(options: ModelOptions) -> PPTConfig:
    if getattr(options, "schedule", None) is not None:
        return schedule_ppt_config(options)
    if options.target_gmacs is not None:
        choose_r_for_target(options)
    r_tokens = options.r_tokens if options.r_tokens is not None else [DEFAULT_R]
    r = 0 if options.dense else (r_tokens[0] if len(r_tokens) == 1 else tuple(r_tokens))
    try:
        return PPTConfig(r=r, pp_loc_list=tuple(options.pp_loc_list), threshold=options.threshold,
                         prop_attn=options.prop_attn, method=getattr(options, "method", DEFAULT_METHOD))
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def schedule_ppt_config(options: ModelOptions) -> PPTConfig:
    """--schedule's PPTConfig, with --prop-attn and --method on top; refused beside the settings it replaces
    (those still at their defaults are not 'given': ppt_cli's parser refuses them even when spelled out)."""
    from ppt_common.schedule import load_schedule, schedule_config
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    given = [flag(name) for name in ("r_tokens", "target_gmacs", "dense", "pp_loc_list", "threshold")
             if _differs(getattr(options, name), defaults[name])]
    if given:
        raise UsageError(f"--schedule sets r, the PP blocks and the thresholds: give it without {', '.join(given)}")
    cfg = schedule_config(load_schedule(options.schedule, options.model, options.arch().img_size), options.prop_attn)
    try:
        return dataclasses.replace(cfg, method=getattr(options, "method", DEFAULT_METHOD))
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def _differs(value, default) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) != list(default)
    return value != default


def choose_r_for_target(options: ModelOptions) -> None:
    """--target-gmacs becomes --r_tokens (once: the tools may build their configuration more than once), and the
    choice with its rule is printed."""
    from ppt_common.macs import r_for_target_gmacs
    if options.dense or options.r_tokens is not None:
        raise UsageError("--target-gmacs chooses r: give it without --r_tokens or --dense")
    try:
        r, _, message = r_for_target_gmacs(options.arch(), options.target_gmacs, options.pp_loc_list,
                                           getattr(options, "method", DEFAULT_METHOD))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(message, file=sys.stderr)
    options.r_tokens, options.target_gmacs = [r], None
