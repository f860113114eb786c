#!/usr/bin/env python
"""Draw what PPT did to your images: after each PP block, pruned patches in black and pooled groups in their
mean colour with outlines, the chosen policy above each panel (the paper's figure 5).

    python scripts/visualize.py --checkpoint deit_tiny_patch16_224.pth --images a.jpg b.jpg --output ppt.png
    python scripts/visualize.py ... --framework pt      # the PyTorch reference instead of MindSpore
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common.files import atomic_write, check_output
from ppt_common.trace import POLICY_NAMES


def traces_for(args, cfg, images):
    if args.framework == "pt":
        import torch
        import pt_reference as library
        torch.manual_seed(0)
    else:
        import mindspore as ms
        import ms_ppt as library
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_seed(0)
    model = library.create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, ppt_config=cfg,
                                 trace=True, dtype=args.dtype, img_size=args.img_size)
    logits, traces = library.run_with_trace(model, images)[:2]
    return np.asarray(logits), traces


def class_names(checkpoint, num_classes: int):
    """The names of the model's outputs: a train_ms.py checkpoint's classes, ImageNet's for a 1000-class head."""
    from convert import read_class_names
    from ppt_common.imagenet import NUM_CLASSES, class_names as imagenet_names
    names = read_class_names(checkpoint)
    if names is None and num_classes == NUM_CLASSES:
        names = imagenet_names()
    return [names[i] if names and i < len(names) else f"class {i}" for i in range(num_classes)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_args(p)
    options.add_ppt_args(p)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--output", required=True, help="PNG file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.add_argument("--framework", choices=["ms", "pt"], default="ms")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--scale", type=int, default=1, help="enlarge each panel by this factor")
    args = p.parse_args(argv)
    return run_tool(lambda: run(args))


def run(args) -> int:
    check_output(args.output, args.force, suffix=".png", option="--output")
    eval_options = options.to_options(args, ev.EvalOptions)
    ev.check_weights(eval_options)
    if args.scale < 1:
        raise ev.UsageError("--scale must be >= 1")
    cfg = ev.ppt_config(eval_options)
    from ppt_common.config import data_config, model_arch
    from ppt_common.visual import render_figure
    arch, data = model_arch(args.model, args.img_size), data_config(args.model)
    preprocess = ev.pil_preprocess(args.model, args.img_size)
    images = np.stack([preprocess(path) for path in args.images])
    logits, traces = traces_for(args, cfg, images)
    figure = render_figure(images, traces, arch.patch_size, args.scale,
                           labels=[os.path.basename(path) for path in args.images], mean=data.mean, std=data.std)
    atomic_write(args.output, lambda tmp: figure.save(tmp, format="PNG"))
    print(f"wrote {args.output} ({figure.width}x{figure.height}); policies per PP block: "
          + ", ".join(f"block {t.block}: {POLICY_NAMES[int(v)]}" for t in traces for v in t.policy[:1]))
    names = class_names(args.checkpoint, logits.shape[1])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, row in zip(args.images, probs):
        print(f"  {os.path.basename(path)}: predicted {names[int(row.argmax())]} ({100 * row.max():.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
