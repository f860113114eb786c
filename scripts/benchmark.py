#!/usr/bin/env python
"""Throughput of dense vs PPT in MindSpore (graph mode) and PyTorch: same machine, same batch, one run.

    python scripts/benchmark.py --models deit_tiny_patch16_224 deit_small_patch16_224 --batch-sizes 8 1

Protocol: random weights (speed does not depend on them, but PPT's policy mix does a little: inputs are fixed
random images), warm-up calls discarded (graph compilation included there), then the median of --runs timed calls;
outputs are fetched to host (asnumpy / CUDA synchronise) inside the timed call.
"""
import argparse
import json
import os
import sys
import time

import _bootstrap  # noqa: F401

import numpy as np

from ppt_common.config import MODEL_CONFIGS, get_arch
from ppt_common.evaluation import UsageError, atomic_write, fail, time_batches


def slice_instead_of_reduce(x, scores, metric, size, r, threshold, source=None):
    """Ablation: keep the first N-r tokens. Same shapes downstream, none of PPT's token operations."""
    n_out = x.shape[1] - r
    return x[:, :n_out], size[:, :n_out], source, ()


def bench_mindspore(name, batch, ppt, runs, warmup, dtype, mode, ablate_token_ops=False):
    import mindspore as ms
    import ms_ppt
    from ms_ppt import ppt as ppt_ops
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    original = ppt_ops.reduce_tokens
    if ablate_token_ops:
        ppt_ops.reduce_tokens = slice_instead_of_reduce
    try:
        model = ms_ppt.create_model(name, dtype=dtype, **({} if ppt else {"r": 0}))
        x = ms.Tensor(np.random.RandomState(0).randn(batch, 3, model.arch.img_size, model.arch.img_size),
                      model.cls_token.dtype)
        return time_batches(lambda: model(x).asnumpy(), runs, warmup)
    finally:
        ppt_ops.reduce_tokens = original


def bench_pytorch(name, batch, ppt, runs, warmup, dtype, device):
    import torch
    import pt_reference
    model = pt_reference.create_model(name, dtype=dtype, **({} if ppt else {"r": 0})).to(device)
    arch = get_arch(name)
    x = torch.from_numpy(np.random.RandomState(0).randn(batch, 3, arch.img_size, arch.img_size)).to(
        device, next(model.parameters()).dtype)

    def run():
        with torch.no_grad():
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return time_batches(run, runs, warmup)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[8, 1])
    p.add_argument("--frameworks", nargs="+", choices=["mindspore", "pytorch"], default=["mindspore", "pytorch"])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"], help="MindSpore execution mode")
    p.add_argument("--device", default="cpu", help="PyTorch device")
    p.add_argument("--token-ops", dest="token_ops", action="store_true",
                   help="also time MindSpore PPT with its token operations replaced by a slice (their cost)")
    p.add_argument("--output-json", dest="output_json", default=None)
    args = p.parse_args(argv)
    try:
        for name in args.models:
            if name not in MODEL_CONFIGS:
                raise UsageError(f"unknown model '{name}'")
        if min(args.batch_sizes) <= 0 or args.runs <= 0 or args.warmup < 0:
            raise UsageError("batch sizes and --runs must be positive, --warmup >= 0")
        if args.output_json and not os.path.isdir(os.path.dirname(os.path.abspath(args.output_json))):
            raise UsageError(f"output folder does not exist: {os.path.dirname(os.path.abspath(args.output_json))}")
    except UsageError as e:
        return fail(str(e))
    rows = []
    started = time.time()
    for name in args.models:
        for batch in args.batch_sizes:
            for fw in args.frameworks:
                for variant in ("dense", "ppt"):
                    if fw == "mindspore":
                        sec = bench_mindspore(name, batch, variant == "ppt", args.runs, args.warmup, args.dtype,
                                              args.mode)
                    else:
                        sec = bench_pytorch(name, batch, variant == "ppt", args.runs, args.warmup, args.dtype,
                                            args.device)
                    rows.append({"model": name, "framework": fw, "variant": variant, "batch_size": batch,
                                 "images_per_s": batch / sec, "latency_ms": 1000 * sec})
                    print(f"  {name} {fw:9s} {variant:5s} batch {batch:3d}: {1000 * sec:8.1f} ms", file=sys.stderr)
                if fw == "mindspore" and args.token_ops:
                    sec = bench_mindspore(name, batch, True, args.runs, args.warmup, args.dtype, args.mode,
                                          ablate_token_ops=True)
                    rows.append({"model": name, "framework": fw, "variant": "ppt_without_token_ops",
                                 "batch_size": batch, "images_per_s": batch / sec, "latency_ms": 1000 * sec})
    print(format_table(rows))
    if args.output_json:
        report = {"rows": rows, "config": vars(args), "seconds": time.time() - started, "machine": machine()}

        def dump(tmp):
            with open(tmp, "w") as f:
                json.dump(report, f, indent=2)
        atomic_write(args.output_json, dump, ".json")
    return 0


def machine() -> dict:
    import platform
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def format_table(rows) -> str:
    find = {(r["model"], r["framework"], r["variant"], r["batch_size"]): r for r in rows}
    lines = ["| model | batch | framework | dense img/s | PPT img/s | PPT speed-up | latency dense / PPT (ms) |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["batch_size"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for model, batch in keys:
        for fw in ("mindspore", "pytorch"):
            d, p = find.get((model, fw, "dense", batch)), find.get((model, fw, "ppt", batch))
            if d and p:
                lines.append(f"| {model} | {batch} | {fw} | {d['images_per_s']:.1f} | {p['images_per_s']:.1f} | "
                             f"{p['images_per_s'] / d['images_per_s']:.2f}x | {d['latency_ms']:.1f} / "
                             f"{p['latency_ms']:.1f} |")
        ms_d, pt_d = find.get((model, "mindspore", "dense", batch)), find.get((model, "pytorch", "dense", batch))
        ms_p, pt_p = find.get((model, "mindspore", "ppt", batch)), find.get((model, "pytorch", "ppt", batch))
        if ms_d and pt_d and ms_p and pt_p:
            lines.append(f"| {model} | {batch} | MindSpore / PyTorch | {ms_d['images_per_s'] / pt_d['images_per_s']:.2f}x"
                         f" | {ms_p['images_per_s'] / pt_p['images_per_s']:.2f}x | | |")
        ablated = find.get((model, "mindspore", "ppt_without_token_ops", batch))
        if ablated and ms_p:
            share = 1 - ablated["latency_ms"] / ms_p["latency_ms"]
            lines.append(f"| {model} | {batch} | MindSpore PPT token ops | | | | {100 * share:.1f} % of the PPT "
                         "forward |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
