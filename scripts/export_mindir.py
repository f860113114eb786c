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
import time

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from ppt_cli import options, run_tool
from ppt_common import evaluation as ev
from ppt_common.files import atomic_write, check_output


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
    return p.parse_args(argv)


def check(args):
    if args.batch_size <= 0:
        raise ev.UsageError(f"--batch-size must be positive, got {args.batch_size}")
    check_output(args.output, args.force, suffix=".mindir", option="--output")
    ev.check_weights(args)


def export(model, batch_size: int, output: str) -> float:
    """mindspore.export to a temporary name in the output folder, then rename; returns seconds."""
    import mindspore as ms
    size = model.arch.img_size
    example = ms.Tensor(np.zeros((batch_size, 3, size, size)), model.cls_token.dtype)
    start = time.perf_counter()
    # file_name without the suffix: mindspore.export adds ".mindir" to the temporary name it is given
    atomic_write(output, lambda tmp: ms.export(model, example, file_name=tmp[:-len(".mindir")],
                                               file_format="MINDIR"))
    return time.perf_counter() - start


def verify(model, path: str, batch_size: int) -> float:
    """Max |logit difference| between the reloaded MindIR and the live cell on random images."""
    import mindspore as ms
    size = model.arch.img_size
    x = ms.Tensor(np.random.RandomState(0).randn(batch_size, 3, size, size), model.cls_token.dtype)
    graph = ms.nn.GraphCell(ms.load(path))
    return float(np.abs(graph(x).asnumpy().astype(np.float64) - model(x).asnumpy().astype(np.float64)).max())


def main(argv=None) -> int:
    args = parse(argv)
    return run_tool(lambda: run(args))


def run(args) -> int:
    check(args)
    cfg = ev.ppt_config(args)
    import mindspore as ms
    import ms_ppt
    ms.set_context(mode=ms.GRAPH_MODE, device_target=args.device)
    model = ms_ppt.create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                                ppt_config=cfg, dtype=args.dtype,
                                custom_kernels=False)  # portable graph: no host-compiled .so inside
    seconds = export(model, args.batch_size, args.output)
    print(f"exported {args.model} (r={cfg.r} at {list(cfg.pp_loc_list)}, threshold {cfg.threshold:g}, "
          f"{args.dtype}, input [{args.batch_size}, 3, {model.arch.img_size}, {model.arch.img_size}]) to "
          f"{args.output}: {os.path.getsize(args.output) / 2**20:.1f} MiB in {seconds:.1f} s")
    if not args.checkpoint:
        print("note: random weights (no --checkpoint)")
    if args.verify:
        diff = verify(model, args.output, args.batch_size)
        print(f"reloaded with mindspore.load + nn.GraphCell: max |logit difference| vs the live cell {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
