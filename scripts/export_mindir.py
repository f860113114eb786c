#!/usr/bin/env python
"""Export a PPT DeiT/ViT to MindIR for a fixed input shape (for MindSpore Lite / Ascend deployment).

    python scripts/export_mindir.py --model deit_tiny_patch16_224 --checkpoint deit_tiny_patch16_224.pth \
        --batch-size 1 --dtype float16 --output ppt_deit_tiny_b1_fp16.mindir

The graph is static (PPT removes a fixed number of tokens whatever each image's policy), so the whole model,
token reduction included, exports. The file is written under a temporary name and renamed when complete; with
--verify (default) it is loaded back with mindspore.load + nn.GraphCell and compared with the live cell.
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401  (the repository root on sys.path)

from ppt_cli import options, run_tool
from ppt_cli.main import NOTHING_WRITTEN


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_args(p)
    options.add_ppt_args(p)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--output", required=True, help="FILE.mindir")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--verify", type=options.str2bool, nargs="?", const=True, default=True,
                   help="reload the file and compare its logits with the live cell (default true)")
    p.add_argument("--device", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--ema", action="store_true",
                   help="export the EMA weights of a train_ms.py checkpoint (--checkpoint) instead of its weights")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    before = file_identity(args.output)
    return run_tool(lambda: run(args), lambda: kept(args.output, before))


def file_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def kept(output, before) -> str:
    """What an interruption leaves: the export is renamed into place before --verify reloads it."""
    if file_identity(output) not in (None, before):
        return f"{output} was written; its check against the live cell did not finish"
    return NOTHING_WRITTEN


def run(args) -> int:
    from ms_ppt.export import ExportOptions, export_mindir  # imported after run_tool has quieted MindSpore's logs
    done = export_mindir(options.to_options(args, ExportOptions))
    cfg = done["config"]
    print(f"exported {args.model} (r={cfg.r} at {list(cfg.pp_loc_list)}, threshold {cfg.threshold_text}, "
          f"{args.dtype}, input {done['input_shape']}) to {args.output}: {done['mib']:.1f} MiB in "
          f"{done['seconds']:.1f} s")
    if not args.checkpoint:
        print("note: random weights (no --checkpoint)")
    elif args.ema:
        print(f"the EMA weights of {args.checkpoint}")
    if done["max_logit_diff"] is not None:
        print("reloaded with mindspore.load + nn.GraphCell: max |logit difference| vs the live cell "
              f"{done['max_logit_diff']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
