#!/usr/bin/env python
"""Fine-tune DeiT/ViT with PPT in MindSpore: the authors' recipe (DeiT's, 30 epochs at lr 1e-5 per 512 images).

    python scripts/train_ms.py --model deit_small_patch16_224 --resume deit_small_patch16_224-cd65a155.pth \
        --data-path /data/imagenet --output_dir out/ppt_deit_s --r_tokens 50 --threshold 6e-5 --pp_loc_list 3 6 9
    msrun --worker_num=8 --local_worker_num=8 --join=True scripts/train_ms.py ... --batch_size 128   # 8 NPUs
    python scripts/train_ms.py ... --resume out/ppt_deit_s/checkpoint.ckpt   # continue exactly where it stopped

--resume takes official weights (.pth, timm .bin/.safetensors, .ckpt) to start a fine-tune, or this script's
checkpoint.ckpt to continue one; --finetune takes weights only. Any folder of class folders trains (ImageFolder:
the classes are the sorted folder names, stored in the checkpoint). docs/training.md explains each default.
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

from ppt_cli import options, run_tool
from ppt_cli.options import add_img_size_arg, add_ppt_args, str2bool
from ppt_common.config import MODEL_CONFIGS
from ppt_common.training import TrainOptions


def build_parser():
    d = TrainOptions()  # the library's defaults
    p = argparse.ArgumentParser(description="Fine-tune DeiT/ViT with PPT in MindSpore (DeiT's recipe; the authors' "
                                            "option names work)")
    p.add_argument("--model", default=d.model, choices=sorted(MODEL_CONFIGS), metavar="NAME")
    p.add_argument("--resume", default=None, help="weights to fine-tune (.pth/.bin/.safetensors/.ckpt), or this "
                                                   "script's checkpoint.ckpt to continue exactly")
    p.add_argument("--finetune", default=None, help="weights to start from (a checkpoint.ckpt's weights only)")
    p.add_argument("--pretrained", action="store_true", help="start from the model's official weights")
    add_img_size_arg(p)
    p.add_argument("--data-path", "--data_path", dest="data_path", default=None, help="root holding train/ and val/")
    p.add_argument("--train-path", dest="train_path", default=None, help="training class folders (instead of "
                                                                         "DATA_PATH/train)")
    p.add_argument("--val-path", dest="val_path", default=None, help="validation class folders (DATA_PATH/val)")
    p.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, default=None,
                   help="the head's size (default: the data's classes, the sorted class folders; ImageNet's "
                        "WordNet-id folders: 1000)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", default=None,
                   help="checkpoint.ckpt and log.txt, rewritten atomically after every epoch")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in --output_dir")
    add_ppt_args(p)
    p.set_defaults(threshold=d.threshold)  # the authors' fine-tuning value (7e-5 is their evaluation default)
    g = p.add_argument_group("recipe (DeiT's defaults, the PPT authors' fine-tuning values)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=d.batch_size,
                   help="per process")
    g.add_argument("--lr", type=float, default=d.lr, help="per 512 images: scaled by the global batch / 512")
    g.add_argument("--min-lr", "--min_lr", dest="min_lr", type=float, default=d.min_lr)
    g.add_argument("--warmup-lr", "--warmup_lr", dest="warmup_lr", type=float, default=d.warmup_lr)
    g.add_argument("--warmup-epochs", "--warmup_epochs", dest="warmup_epochs", type=int, default=d.warmup_epochs)
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=d.weight_decay)
    g.add_argument("--opt-eps", dest="opt_eps", type=float, default=d.opt_eps)
    g.add_argument("--opt-betas", dest="opt_betas", type=float, nargs=2, default=list(d.opt_betas))
    g.add_argument("--clip-grad", dest="clip_grad", type=float, default=d.clip_grad)
    g.add_argument("--smoothing", type=float, default=d.smoothing)
    g.add_argument("--mixup", type=float, default=d.mixup)
    g.add_argument("--cutmix", type=float, default=d.cutmix)
    g.add_argument("--mixup-prob", dest="mixup_prob", type=float, default=d.mixup_prob)
    g.add_argument("--mixup-switch-prob", dest="mixup_switch_prob", type=float, default=d.mixup_switch_prob)
    g.add_argument("--aa", default=d.aa, help="RandAugment, timm's spelling ('none' to turn off)")
    g.add_argument("--reprob", type=float, default=d.reprob, help="random erasing probability (per-pixel values)")
    g.add_argument("--train-interpolation", dest="train_interpolation", default=d.train_interpolation)
    g.add_argument("--repeated-aug", dest="repeated_aug", action="store_const", const=d.repeated_aug,
                   default=d.repeated_aug, help=f"each image {d.repeated_aug}x per epoch (default)")
    g.add_argument("--no-repeated-aug", dest="repeated_aug", action="store_const", const=1)
    g.add_argument("--drop-path", "--drop_path", dest="drop_path", type=float, default=d.drop_path)
    g.add_argument("--drop", type=float, default=d.drop)
    g.add_argument("--model-ema", dest="model_ema", type=str2bool, nargs="?", const=True, default=d.model_ema)
    g.add_argument("--no-model-ema", dest="model_ema", action="store_false")
    g.add_argument("--model-ema-decay", dest="model_ema_decay", type=float, default=d.model_ema_decay)
    g.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num_workers", "--num-workers", dest="num_workers", type=int, default=d.num_workers,
                   help="processes augmenting images (0: in this process)")
    options.add_mode_arg(p, d.mode)
    p.add_argument("--device", "--device_target", dest="device", default=d.device, choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    p.add_argument("--amp-level", "--amp_level", dest="amp_level", choices=["O0", "O1", "O2", "O3"], default=d.amp_level,
                   help="MindSpore mixed precision (O2 for Ascend); PPT's scoring stays float32. GRAPH mode only")
    p.add_argument("--loss-scale", dest="loss_scale", type=float, default=None,
                   help="static loss scale (default 1, or 1024 with --amp-level)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training and validation images")
    p.add_argument("--on-error", dest="on_error", choices=["skip", "fail"], default=d.on_error,
                   help="unreadable images (every training file is checked before the first step): left out with a "
                        "warning and counted (skip, the default), or refused before training (fail)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: fine_tune(args), lambda: kept(args.output_dir))


def kept(output_dir) -> str:
    """What an interruption leaves: the last epoch's checkpoint, if this run or the one it resumes wrote one."""
    if output_dir and os.path.exists(os.path.join(output_dir, "checkpoint.ckpt")):
        return f"the last checkpoint written, {os.path.join(output_dir, 'checkpoint.ckpt')}, is intact"
    return "no checkpoint was written"


def fine_tune(args) -> None:
    from ms_ppt.trainer import train  # imported after run_tool has quieted MindSpore's logs
    train(options.to_options(args, TrainOptions))


if __name__ == "__main__":
    sys.exit(main())
