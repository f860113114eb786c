"""The command-line options of the tools: argparse lives here and in the scripts, never in the library.

The authors' main.py spellings (--resume, --num_workers, --r_tokens, ...) keep working beside the dashed ones.
"""
from __future__ import annotations

import argparse
import dataclasses

from ppt_common import evaluation
from ppt_common.config import (DEFAULT_METHOD, DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, DEMO_MODEL,
                               METHODS, MODEL_CONFIGS)


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{value}'")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEMO_MODEL, choices=sorted(MODEL_CONFIGS), metavar="NAME",
                   help=f"architecture (default {DEMO_MODEL}); one of: {', '.join(sorted(MODEL_CONFIGS))}")
    p.add_argument("--checkpoint", "--resume", dest="checkpoint", default=None,
                   help="DeiT .pth / timm .bin / .safetensors / MindSpore .ckpt (default: random weights, demo only)")
    p.add_argument("--pretrained", action="store_true",
                   help="the model's official weights: downloaded once, verified and cached (instead of --checkpoint)")
    add_img_size_arg(p)


def add_img_size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-size", "--img_size", dest="img_size", type=int, default=None, metavar="PIXELS",
                   help="run at another resolution (a multiple of the patch size): the checkpoint's position "
                        "embedding is resampled as timm does (bicubic, antialiased); the token schedule and MACs "
                        "follow the new token count (default: the model's own)")


SCHEDULE_REPLACES = "--r_tokens, --target-gmacs, --pp_loc_list, --threshold and --dense"


def _refuse_beside_schedule(parser, namespace, option: str) -> None:
    """--schedule and the settings it replaces, in either order (an option's default is not 'given')."""
    given = vars(namespace).setdefault("_ppt_settings_given", [])
    if option == "--schedule" and given:
        parser.error(f"--schedule sets r, the PP blocks and the thresholds: give it without {given[0]}")
    if option != "--schedule":
        if getattr(namespace, "schedule", None) is not None:
            parser.error(f"--schedule sets r, the PP blocks and the thresholds: give it without {option}")
        given.append(option)


class _Store(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_beside_schedule(parser, namespace, self.option_strings[0])
        super().__call__(parser, namespace, values, option_string)


class _StoreTrue(argparse._StoreTrueAction):
    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_beside_schedule(parser, namespace, self.option_strings[0])
        super().__call__(parser, namespace, values, option_string)


def add_ppt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", action=_Store, default=None, metavar="FILE",
                   help=f"a schedule file (scripts/search_schedule.py): the blocks that reduce, with r and the "
                        f"threshold at each; replaces {SCHEDULE_REPLACES}")
    p.add_argument("--r_tokens", "--r-tokens", dest="r_tokens", type=int, nargs="+", default=None, action=_Store,
                   help=f"tokens removed per PP block: one value, or one per PP block (0 = dense; default {DEFAULT_R})")
    p.add_argument("--target-gmacs", "--target_gmacs", dest="target_gmacs", type=float, default=None, action=_Store,
                   help="choose r instead: the same r at every PP block, the one whose MACs per image (the paper's "
                        "'GFLOPs') are nearest to this many billions; ties go to the smaller r")
    p.add_argument("--pp_loc_list", "--pp-loc-list", dest="pp_loc_list", type=int, nargs="*",
                   default=list(DEFAULT_PP_LOC_LIST), action=_Store, help="0-based indices of the PP blocks")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, action=_Store,
                   help="policy threshold on score variance")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="the reduction of every PP block: ppt (the authors' adaptive choice, by --threshold), prune "
                        "or pool alone, prune_fuse (EViT: the r dropped tokens fused into one extra token) or "
                        "decouple_merge (2211.11315: the 2r least attentive tokens merged pairwise by similarity)")
    p.add_argument("--prop_attn", "--prop-attn", dest="prop_attn", type=str2bool, nargs="?", const=True,
                   default=True, help="proportional attention (default true; '--prop_attn false' to disable)")
    p.add_argument("--dense", action=_StoreTrue, help="evaluate without PPT (same as --r_tokens 0)")


def build_parser(framework: str, json_output: bool = True, predictions: bool = True) -> argparse.ArgumentParser:
    """Options of both eval scripts; the authors' main.py names (--resume, --num_workers, ...) keep working.
    Tools that write no JSON report or no predictions do not offer the options."""
    p = argparse.ArgumentParser(
        description=f"ImageNet evaluation of DeiT/ViT with PPT ({framework}): top-1/top-5, MACs, throughput. "
                    "With no --data-path it runs a demo on a tiny sample shipped with the package.")
    add_model_args(p)
    p.add_argument("--data-path", "--data_path", dest="data_path", nargs="+", default=None,
                   help="ImageNet root holding val/, or a folder of WordNet-id class folders; several may be given "
                        "(default: the demo sample)")
    add_ppt_args(p)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=2,
                   help="threads decoding images")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--on-error", dest="on_error", choices=["skip", "fail"], default="skip",
                   help="an unreadable image: skip it with a warning (counted) or stop with an error")
    p.add_argument("--throughput-runs", dest="throughput_runs", type=int, default=5)
    if json_output:
        p.add_argument("--output-json", dest="output_json", default=None, help="write the report as JSON")
    if predictions:
        p.add_argument("--save-predictions", dest="save_predictions", default=None,
                       help="write an .npz of logits, labels, paths and policies")
    if json_output or predictions:
        p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(output_json=None, save_predictions=None, force=False)
    p.add_argument("--eval", action="store_true", help="accepted for compatibility with the authors' main.py")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def to_options(args: argparse.Namespace, cls):
    """The library's options dataclass `cls` from parsed arguments of the same names (options the library does not
    take, such as the authors' --eval, are dropped)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def add_mode_arg(p: argparse.ArgumentParser, default: str = "graph") -> None:
    p.add_argument("--mode", choices=["graph", "pynative"], default=default,
                   help="MindSpore's execution mode: graph (GRAPH_MODE, compiled; the default) or pynative")


def prepare(args: argparse.Namespace, cached_weights):
    """(EvalOptions, PPTConfig, [(path, label)], Classes) of an evaluation-style tool's arguments: checked, the images
    listed, and the demo's cached official weights chosen (ppt_common.evaluation.prepare)."""
    eval_options = to_options(args, evaluation.EvalOptions)
    return (eval_options, *evaluation.prepare(eval_options, cached_weights))
