#!/usr/bin/env python
"""Throughput of dense vs PPT in MindSpore (graph mode) and PyTorch: same machine, same batch, one run.

    python scripts/benchmark.py --models deit_tiny_patch16_224 deit_small_patch16_224 --batch-sizes 8 1
    python scripts/benchmark.py --task train --batch-sizes 16     # training steps: forward, backward, AdamW
    python scripts/benchmark.py --unfused      # also without the fused attention/MLP kernels: what they gain

Training steps use the fine-tuning recipe's model (drop path 0.1) and loss (smoothing 0.1), timed as whole
optimizer steps on fixed random images and labels.

Protocol: random weights and fixed random images (speed does not depend on the weights; the policy mix does a
little, since the fused CPU reduction computes only the policy each image takes: these inputs pool at blocks 3 and
6 and mostly prune at block 9, like the real DeiT-Tiny on ImageNet photos). Graphs are compiled and --warmup calls
discarded first; then --runs rounds, each running every variant once (interleaved, so machine drift does not bias
the ratios) after a short pause (so one framework's spinning worker threads do not slow the next call); the median
per variant is reported. Outputs are fetched to host (asnumpy / CUDA synchronise) inside each timed call.

Memory: each variant is also built, compiled and called three times in a child process of its own, and that
process's peak resident set size (RSS, its VmHWM) is reported: what a user's process needs for that model, batch
and framework, libraries included (--no-memory skips it). For training that is the steady state of a run: PyTorch's
AdamW creates its moments in its first step, after that step's backward, so they sit beside the activations only
from the second step on (MindSpore's exist from the start). The --token-ops and --unfused diagnostic variants are
timed only.
"""
import argparse
import os
import subprocess
import sys
import time

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from ppt_cli import options
from ppt_cli.main import fail, run_tool
from ppt_common.config import MODEL_CONFIGS, get_arch
from ppt_common.errors import UsageError
from ppt_common.files import atomic_write, check_output, json_writer
from ppt_common.measure import own_peak_rss_mb, random_training_batch, time_interleaved
from ppt_common.training import RECIPE


def slice_instead_of_reduce(self, x, attn, v, k, size, source):
    """Ablation of TokenReduction.construct: keep the first N-r tokens. Same shapes downstream, none of PPT's
    token operations (scores, merge metric, variance, ranking, matching, merge)."""
    n_out = x.shape[1] - self.r
    return x[:, :n_out], size[:, :n_out], source, ()


def mindspore_runner(name, batch, variant, dtype, mode):
    """A call that runs one forward and fetches the logits; the graph is compiled here, not in the timing."""
    import mindspore as ms
    import ms_ppt
    from ms_ppt.layers import Attention, Mlp
    from ms_ppt.vision_transformer import TokenReduction
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    original = TokenReduction.construct
    if variant == "ppt_without_token_ops":
        TokenReduction.construct = slice_instead_of_reduce
    try:
        model = ms_ppt.create_model(name, dtype=dtype, r=0 if variant.startswith("dense") else None)
        if variant == "ppt_graph_reduction":  # the reduction as graph ops, as before the fused kernel
            for _, cell in model.cells_and_names():
                if isinstance(cell, TokenReduction):
                    cell.unfuse()
        if variant.endswith("_unfused"):  # the attention and MLP as before their fused kernels
            for _, cell in model.cells_and_names():
                if isinstance(cell, (Attention, Mlp)):
                    cell.unfuse()
        x = ms.Tensor(np.random.RandomState(0).randn(batch, 3, model.arch.img_size, model.arch.img_size),
                      model.cls_token.dtype)
        run = lambda: model(x).asnumpy()  # noqa: E731
        run()  # compile while the ablation is in place
        return run
    finally:
        TokenReduction.construct = original


def mindspore_train_runner(name, batch, variant, dtype, mode):
    """One training step (forward, backward, AdamW update), the loss fetched; compiled here."""
    import mindspore as ms
    import ms_ppt
    from ms_ppt import training
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    model = ms_ppt.create_model(name, dtype=dtype, r=0 if variant == "dense" else None,
                                drop_path_rate=RECIPE.drop_path)
    model.set_train(True)
    optimizer = training.build_optimizer(model)
    step = training.TrainStep(training.LossCell(model, training.build_loss(RECIPE.smoothing)), optimizer)
    x, targets = random_training_batch(model.arch, batch)
    x, targets = ms.Tensor(x, model.cls_token.dtype), ms.Tensor(targets, model.cls_token.dtype)
    run = lambda: step(x, targets, None, *optimizer.scalars(RECIPE.min_lr))[0].asnumpy()  # noqa: E731
    run()
    return run


def pytorch_train_runner(name, batch, variant, dtype, device):
    import torch
    import pt_reference
    from pt_reference import training
    model = pt_reference.create_model(name, dtype=dtype, r=0 if variant == "dense" else None,
                                      drop_path_rate=RECIPE.drop_path).to(device).train()
    step = training.TrainStep(model, training.build_loss(RECIPE.smoothing), training.build_optimizer(model))
    weight = next(model.parameters())
    x, targets = (torch.from_numpy(a).to(device, weight.dtype) for a in random_training_batch(get_arch(name), batch))

    def run():
        step(x, targets, RECIPE.min_lr)
        if x.is_cuda:
            torch.cuda.synchronize()
    return run


def pytorch_runner(name, batch, variant, dtype, device):
    import torch
    import pt_reference
    model = pt_reference.create_model(name, dtype=dtype, r=0 if variant == "dense" else None).to(device)
    arch = get_arch(name)
    x = torch.from_numpy(np.random.RandomState(0).randn(batch, 3, arch.img_size, arch.img_size)).to(
        device, next(model.parameters()).dtype)

    def run():
        with torch.no_grad():
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return run


def make_runner(fw, name, batch, variant, args):
    if fw == "mindspore":
        make = mindspore_train_runner if args.task == "train" else mindspore_runner
        return make(name, batch, variant, args.dtype, args.mode)
    make = pytorch_train_runner if args.task == "train" else pytorch_runner
    return make(name, batch, variant, args.dtype, args.device)


def peak_rss_mb(fw, name, batch, variant, args) -> float:
    """Peak RSS (MB) of a fresh process that builds this variant, compiles it and calls it MEMORY_CALLS times."""
    command = [sys.executable, os.path.abspath(__file__), "--task", args.task, "--dtype", args.dtype, "--mode",
               args.mode, "--device", args.device, "--memory-child", fw, name, str(batch), variant]
    child = subprocess.run(command, capture_output=True, text=True)
    lines = child.stdout.split()
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"the memory run of {fw} {variant} failed: {child.stderr[-500:]}")
    return float(lines[-1])


MEMORY_CALLS = 3  # a training step's peak from the second on: see the module's docstring


def memory_child(args) -> int:
    fw, name, batch, variant = args.memory_child
    run = make_runner(fw, name, int(batch), variant, args)
    for _ in range(MEMORY_CALLS):
        run()
    print(own_peak_rss_mb())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[8, 1])
    p.add_argument("--frameworks", nargs="+", choices=["mindspore", "pytorch"], default=["mindspore", "pytorch"])
    p.add_argument("--task", choices=["inference", "train"], default="inference",
                   help="time forwards, or training steps (forward, backward, AdamW)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    options.add_mode_arg(p)
    p.add_argument("--device", default="cpu", help="PyTorch device")
    p.add_argument("--token-ops", dest="token_ops", action="store_true",
                   help="also time MindSpore PPT with its token operations replaced by a slice (their cost), and "
                        "with the reduction as graph ops instead of the fused CPU kernel")
    p.add_argument("--unfused", action="store_true",
                   help="also time MindSpore dense and PPT without the fused attention and MLP kernels (qkv bias and "
                        "head split, scaled softmax, fc1 bias and GELU): their gain")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory runs (one child process per variant)")
    p.add_argument("--memory-child", dest="memory_child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--output-json", dest="output_json", default=None)
    p.add_argument("--force", action="store_true", help="overwrite an existing --output-json")
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    return run_tool(lambda: benchmark(args))


def check(args) -> None:
    for name in args.models:
        if name not in MODEL_CONFIGS:
            raise UsageError(f"unknown model '{name}'")
    if min(args.batch_sizes) <= 0 or args.runs <= 0 or args.warmup < 0:
        raise UsageError("batch sizes and --runs must be positive, --warmup >= 0")
    if args.task == "train" and (args.token_ops or args.unfused or args.dtype != "float32"):
        raise UsageError("--task train times float32 dense and PPT steps (no --token-ops or --unfused, "
                         "no float16)")
    if args.output_json:
        check_output(args.output_json, args.force, option="--output-json")


def benchmark(args) -> int:
    check(args)
    rows = []
    started = time.time()
    for name in args.models:
        for batch in args.batch_sizes:
            variants = [(fw, variant) for fw in args.frameworks for variant in ["dense", "ppt"] + (
                ["ppt_graph_reduction", "ppt_without_token_ops"] if fw == "mindspore" and args.token_ops else []) + (
                ["dense_unfused", "ppt_unfused"] if fw == "mindspore" and args.unfused else [])]
            try:  # before the timed runners exist, so that the children have the machine to themselves
                memory = {key: peak_rss_mb(*key[:1], name, batch, key[1], args) for key in variants
                          if key[1] in ("dense", "ppt")} if args.memory else {}
            except RuntimeError as e:
                return fail(str(e), 1)
            runners = {(fw, variant): make_runner(fw, name, batch, variant, args) for fw, variant in variants}
            for (fw, variant), sec in time_interleaved(runners, args.runs, args.warmup).items():
                rows.append({"model": name, "task": args.task, "framework": fw, "variant": variant, "batch_size": batch,
                             "images_per_s": batch / sec, "latency_ms": 1000 * sec,
                             "peak_rss_mb": memory.get((fw, variant))})
                print(f"  {name} {fw:9s} {variant:21s} batch {batch:3d}: {1000 * sec:8.1f} ms"
                      + (f", peak RSS {memory[(fw, variant)]:.0f} MB" if (fw, variant) in memory else ""),
                      file=sys.stderr)
    print(format_table(rows))
    if args.output_json:
        report = {"rows": rows, "config": vars(args), "seconds": time.time() - started, "machine": machine()}
        try:
            atomic_write(args.output_json, json_writer(report))
        except OSError as e:
            return fail(f"the benchmark finished (table above) but {args.output_json} could not be written: {e}")
    return 0


def machine() -> dict:
    import platform
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def format_table(rows) -> str:
    find = {(r["model"], r["framework"], r["variant"], r["batch_size"]): r for r in rows}
    task = rows[0]["task"] if rows else "inference"
    step = "step" if task == "train" else "latency"
    lines = [f"{'training steps (forward, backward, AdamW)' if task == 'train' else 'inference'}",
             f"| model | batch | framework | dense img/s | PPT img/s | PPT speed-up | {step} dense / PPT (ms) | "
             "peak RSS dense / PPT (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["batch_size"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for model, batch in keys:
        for fw in ("mindspore", "pytorch"):
            d, p = find.get((model, fw, "dense", batch)), find.get((model, fw, "ppt", batch))
            if d and p:
                lines.append(f"| {model} | {batch} | {fw} | {d['images_per_s']:.1f} | {p['images_per_s']:.1f} | "
                             f"{p['images_per_s'] / d['images_per_s']:.2f}x | {d['latency_ms']:.1f} / "
                             f"{p['latency_ms']:.1f} | {memory_cell(d, p)} |")
        ms_d, pt_d = find.get((model, "mindspore", "dense", batch)), find.get((model, "pytorch", "dense", batch))
        ms_p, pt_p = find.get((model, "mindspore", "ppt", batch)), find.get((model, "pytorch", "ppt", batch))
        if ms_d and pt_d and ms_p and pt_p:
            memory = (f"{ms_d['peak_rss_mb'] / pt_d['peak_rss_mb']:.2f}x / {ms_p['peak_rss_mb'] / pt_p['peak_rss_mb']:.2f}x"
                      if ms_d.get("peak_rss_mb") and pt_d.get("peak_rss_mb") else "")
            lines.append(f"| {model} | {batch} | MindSpore / PyTorch | {ms_d['images_per_s'] / pt_d['images_per_s']:.2f}x"
                         f" | {ms_p['images_per_s'] / pt_p['images_per_s']:.2f}x | | | {memory} |")
        ablated = find.get((model, "mindspore", "ppt_without_token_ops", batch))
        for variant, label in (("ppt", "PPT"), ("ppt_graph_reduction", "PPT, graph-op reduction")):
            full = find.get((model, "mindspore", variant, batch))
            if ablated and full and ms_d:
                share = 1 - ablated["latency_ms"] / full["latency_ms"]
                lines.append(f"| {model} | {batch} | MindSpore {label} | | {full['images_per_s']:.1f} | "
                             f"{ms_d['latency_ms'] / full['latency_ms']:.2f}x | token ops {100 * share:.1f} % of the "
                             "forward | |")
        d = find.get((model, "mindspore", "dense_unfused", batch))
        p = find.get((model, "mindspore", "ppt_unfused", batch))
        if d and p and ms_d and ms_p:
            lines.append(f"| {model} | {batch} | MindSpore, unfused attention and MLP | {d['images_per_s']:.1f} | "
                         f"{p['images_per_s']:.1f} | {p['images_per_s'] / d['images_per_s']:.2f}x | "
                         f"{d['latency_ms']:.1f} / {p['latency_ms']:.1f} | fused kernels: "
                         f"{d['latency_ms'] / ms_d['latency_ms']:.2f}x / {p['latency_ms'] / ms_p['latency_ms']:.2f}x "
                         "faster |")
    return "\n".join(lines)


def memory_cell(dense, ppt) -> str:
    if dense.get("peak_rss_mb") is None or ppt.get("peak_rss_mb") is None:
        return ""
    return f"{dense['peak_rss_mb']:.0f} / {ppt['peak_rss_mb']:.0f}"


if __name__ == "__main__":
    sys.exit(main())
