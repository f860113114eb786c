#!/usr/bin/env python
"""Throughput of dense vs PPT in MindSpore (graph mode) and PyTorch: same machine, same batch, one run.

    python scripts/benchmark.py --models deit_tiny_patch16_224 deit_small_patch16_224 --batch-sizes 8 1
    python scripts/benchmark.py --task train --batch-sizes 16     # training steps: forward, backward, AdamW

Training steps use the fine-tuning recipe's model (drop path 0.1) and loss (smoothing 0.1), timed as whole
optimizer steps on fixed random images and labels.

Protocol: random weights and fixed random images (speed does not depend on the weights; the policy mix does a
little, since the fused CPU reduction computes only the policy each image takes: these inputs pool at blocks 3 and
6 and mostly prune at block 9, like the real DeiT-Tiny on ImageNet photos). Graphs are compiled and --warmup calls
discarded first; then --runs rounds, each running every variant once (interleaved, so machine drift does not bias
the ratios) after a short pause (so one framework's spinning worker threads do not slow the next call); the median
per variant is reported. Outputs are fetched to host (asnumpy / CUDA synchronise) inside each timed call.
"""
import argparse
import os
import sys
import time

import _bootstrap  # noqa: F401

import numpy as np

from ppt_common.config import MODEL_CONFIGS, get_arch
from ppt_common.evaluation import UsageError, fail
from ppt_common.files import OutputError, atomic_write, check_output, json_writer
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
    from ms_ppt.vision_transformer import TokenReduction
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    original = TokenReduction.construct
    if variant == "ppt_without_token_ops":
        TokenReduction.construct = slice_instead_of_reduce
    try:
        model = ms_ppt.create_model(name, dtype=dtype, r=0 if variant == "dense" else None)
        if variant == "ppt_graph_reduction":  # the reduction as graph ops, as before the fused kernel
            for _, cell in model.cells_and_names():
                if isinstance(cell, TokenReduction):
                    cell.drop_fast_kernel()
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
    x, targets = train_batch(model.arch, batch)
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
    x, targets = (torch.from_numpy(a).to(device, weight.dtype) for a in train_batch(get_arch(name), batch))

    def run():
        step(x, targets, RECIPE.min_lr)
        if x.is_cuda:
            torch.cuda.synchronize()
    return run


def train_batch(arch, batch):
    rng = np.random.RandomState(0)
    return (rng.randn(batch, 3, arch.img_size, arch.img_size),
            np.eye(arch.num_classes)[rng.randint(0, arch.num_classes, batch)])


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


# Pause before each timed call: PyTorch's OpenMP workers keep spinning for a few ms after a call and slow
# whatever runs next (measured: a 4 ms MindSpore call took 11 ms right after a PyTorch call, 3.6 ms after 20 ms).
SETTLE_S = 0.05


def time_interleaved(runners: dict, runs: int, warmup: int) -> dict:
    """Median seconds per variant; every round runs each variant once, so drift on a busy machine hits all
    variants alike instead of biasing the ratios."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {key: [] for key in runners}
    for _ in range(runs):
        for key, run in runners.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(v)) for key, v in times.items()}


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
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"], help="MindSpore execution mode")
    p.add_argument("--device", default="cpu", help="PyTorch device")
    p.add_argument("--token-ops", dest="token_ops", action="store_true",
                   help="also time MindSpore PPT with its token operations replaced by a slice (their cost), and "
                        "with the reduction as graph ops instead of the fused CPU kernel")
    p.add_argument("--output-json", dest="output_json", default=None)
    p.add_argument("--force", action="store_true", help="overwrite an existing --output-json")
    args = p.parse_args(argv)
    try:
        for name in args.models:
            if name not in MODEL_CONFIGS:
                raise UsageError(f"unknown model '{name}'")
        if min(args.batch_sizes) <= 0 or args.runs <= 0 or args.warmup < 0:
            raise UsageError("batch sizes and --runs must be positive, --warmup >= 0")
        if args.task == "train" and (args.token_ops or args.dtype != "float32"):
            raise UsageError("--task train times float32 dense and PPT steps (no --token-ops, no float16)")
        if args.output_json:
            check_output(args.output_json, args.force, option="--output-json")
    except (UsageError, OutputError) as e:
        return fail(str(e))
    rows = []
    started = time.time()
    for name in args.models:
        for batch in args.batch_sizes:
            runners = {}
            for fw in args.frameworks:
                variants = ["dense", "ppt"] + (["ppt_graph_reduction", "ppt_without_token_ops"]
                                               if fw == "mindspore" and args.token_ops else [])
                train = args.task == "train"
                for variant in variants:
                    if fw == "mindspore":
                        make = mindspore_train_runner if train else mindspore_runner
                        runners[(fw, variant)] = make(name, batch, variant, args.dtype, args.mode)
                    else:
                        make = pytorch_train_runner if train else pytorch_runner
                        runners[(fw, variant)] = make(name, batch, variant, args.dtype, args.device)
            for (fw, variant), sec in time_interleaved(runners, args.runs, args.warmup).items():
                rows.append({"model": name, "task": args.task, "framework": fw, "variant": variant, "batch_size": batch,
                             "images_per_s": batch / sec, "latency_ms": 1000 * sec})
                print(f"  {name} {fw:9s} {variant:21s} batch {batch:3d}: {1000 * sec:8.1f} ms", file=sys.stderr)
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
             f"| model | batch | framework | dense img/s | PPT img/s | PPT speed-up | {step} dense / PPT (ms) |",
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
        for variant, label in (("ppt", "PPT"), ("ppt_graph_reduction", "PPT, graph-op reduction")):
            full = find.get((model, "mindspore", variant, batch))
            if ablated and full and ms_d:
                share = 1 - ablated["latency_ms"] / full["latency_ms"]
                lines.append(f"| {model} | {batch} | MindSpore {label} | | {full['images_per_s']:.1f} | "
                             f"{ms_d['latency_ms'] / full['latency_ms']:.2f}x | token ops {100 * share:.1f} % of the "
                             "forward |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
