#!/usr/bin/env python
"""Where a training step's time goes, MindSpore (graph mode) beside PyTorch: forward, backward and optimizer, and
the time per op type in each.

    python tools/profile_train.py --model deit_small_patch16_224 --batch-size 16 --variants dense ppt

A step (the fine-tuning recipe's model, drop path 0.1, smoothing 0.1, AdamW; as scripts/benchmark.py --task
train) is timed whole in both frameworks, interleaved (--runs rounds, median). Then one step per framework is
profiled (MindSpore's CPU Profiler; torch.profiler) and each op's time is put in a stage: MindSpore's by scope (the
optimizer cell's with the finite check, the gradient graph's; its "forward" also holds the compiled kernels' graph-op
backwards, see mindspore_step_profile), PyTorch's by record_function ranges around TrainStep's forward, backward
and update. Profiled sums
include the profilers' overhead (torch.profiler's is large on small ops): read them as shares of each framework's
profiled step, and the wall times for the ratio.
"""
import argparse
import collections
import glob
import os
import shutil
import sys
import tempfile

import _bootstrap  # noqa: F401

from ppt_common.config import MODEL_CONFIGS, get_arch
from ppt_common.measure import random_training_batch, time_interleaved
from ppt_common.training import RECIPE

STAGES = ("forward", "forward+backward", "step")


def mindspore_step(name, batch, variant):
    """One compiled MindSpore training step, as scripts/benchmark.py --task train times it."""
    import mindspore as ms
    import ms_ppt
    from ms_ppt import training
    ms.set_context(mode=ms.GRAPH_MODE)
    model = ms_ppt.create_model(name, r=0 if variant == "dense" else None, drop_path_rate=RECIPE.drop_path)
    model.set_train(True)
    optimizer = training.build_optimizer(model)
    step = training.TrainStep(training.LossCell(model, training.build_loss(RECIPE.smoothing)), optimizer)
    x, t = (ms.Tensor(a) for a in random_training_batch(model.arch, batch))
    run = lambda: step(x, t, None, *optimizer.scalars(RECIPE.min_lr))[0].asnumpy()  # noqa: E731
    run()
    return run


def pytorch_parts(name, batch, variant):
    """pt_reference.training.TrainStep's work in three parts, {stage: call}: run in order they make one step."""
    import torch
    import pt_reference
    from pt_reference import training
    model = pt_reference.create_model(name, r=0 if variant == "dense" else None,
                                      drop_path_rate=RECIPE.drop_path).train()
    loss_fn, optimizer = training.build_loss(RECIPE.smoothing), training.build_optimizer(model)
    x, t = (torch.from_numpy(a) for a in random_training_batch(get_arch(name), batch))
    state = {}

    def forward():
        for group in optimizer.param_groups:
            group["lr"] = RECIPE.min_lr
        optimizer.zero_grad()
        state["loss"] = loss_fn(model(x), t)

    def backward():
        state["loss"].backward()

    def update():
        {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        state.pop("loss").item()

    parts = {"forward": forward, "backward": backward, "optimizer": update}
    for _ in range(2):
        for run in parts.values():
            run()
    return parts


def mindspore_step_profile(run) -> dict:
    """{(stage, op type): ms} of one step from MindSpore's CPU profiler, staged by the ops' scopes: the
    optimizer cell's, which also holds the finite check since AdamW does it (in its fused update's pass, or as
    IsFinite + ReduceAll with fused=False; "finite check" counts such ops outside it, as older code had); the gradient
    graph's (Gradients/, and Expand/ for the expanded bprops of MatMul, Sum, ...) as the backward; the rest,
    Default/, as "forward": the forward plus the compiled kernels' graph-op bprops (cells.py), which MindSpore
    inlines in the forward's scope and schedules as soon as their inputs exist, so neither scope nor order
    separates them (op types only they use: Erf, Exp, ReduceMean, most BroadcastTo)."""
    from mindspore import Profiler
    out = tempfile.mkdtemp(prefix="ms_profile_")
    profiler = Profiler(output_path=out)
    run()
    profiler.stop()
    profiler.analyse()
    times = collections.Counter()
    for path in glob.glob(os.path.join(out, "**", "cpu_op_execute_timestamp_*.txt"), recursive=True):
        with open(path) as f:
            for line in f:
                name, _, rest = line.strip().split(";")
                duration = float(rest.split(",")[1])
                kind = name.rsplit("/", 1)[-1].split("-op")[0]
                if "optimizer-AdamW" in name:
                    stage = "optimizer"
                elif name.startswith(("Gradients/", "Expand/")):
                    stage = "backward"
                elif kind in ("IsFinite", "ReduceAll", "Stack"):
                    stage = "finite check"
                else:
                    stage = "forward"
                times[(stage, kind)] += duration
    shutil.rmtree(out, ignore_errors=True)
    return dict(times)


def pytorch_step_profile(programs) -> dict:
    """{(stage, op name): ms} of one step (TrainStep's work, each part in a record_function range): torch.profiler's
    self CPU time of every op inside the range."""
    import torch
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for stage in ("forward", "backward", "optimizer"):
            with torch.profiler.record_function(f"stage::{stage}"):
                programs[stage]()
    events = prof.events()
    ranges = [(e.time_range.start, e.time_range.end, e.name[len("stage::"):]) for e in events
              if e.name.startswith("stage::")]
    times = collections.Counter()
    for e in events:
        if e.name.startswith("stage::") or e.self_cpu_time_total <= 0:
            continue
        for lo, hi, stage in ranges:
            if lo <= e.time_range.start <= hi:
                times[(stage, e.name)] += e.self_cpu_time_total / 1000
                break
    return dict(times)


def stage_table(profiles: dict) -> str:
    """Profiled ms per stage for each (framework, variant), and the stage's share of the profiled step."""
    stages = ("forward", "backward", "finite check", "optimizer")
    lines = ["| framework | variant | " + " | ".join(f"{s} ms (share)" for s in stages) + " |",
             "|---|---|" + "---|" * len(stages)]
    for (fw, variant), times in profiles.items():
        total = sum(times.values())
        per = {s: sum(v for (stage, _), v in times.items() if stage == s) for s in stages}
        lines.append(f"| {fw} | {variant} | " + " | ".join(
            f"{per[s]:.0f} ({100 * per[s] / total:.0f} %)" if per[s] else "-" for s in stages) + " |")
    return "\n".join(lines)


def op_table(title, times: dict, top: int) -> str:
    """Op types by total step time: ms in each stage."""
    stages = ("forward", "backward", "optimizer")
    kinds = collections.defaultdict(collections.Counter)
    for (stage, kind), v in times.items():
        kinds[kind][stage if stage in stages else "optimizer"] += v
    total = sum(times.values())
    forward = "forward (+ kernels' bprops) ms" if title.startswith("mindspore") else "forward ms"
    lines = [f"{title} (profiled step {total:.0f} ms)",
             f"| op type | {forward} | backward ms | optimizer ms | share of step |", "|---|---|---|---|---|"]
    for kind, v in sorted(kinds.items(), key=lambda kv: -sum(kv[1].values()))[:top]:
        lines.append(f"| {kind} | {v['forward']:.0f} | {v['backward']:.0f} | {v['optimizer']:.0f} | "
                     f"{100 * sum(v.values()) / total:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--variants", nargs="+", choices=["dense", "ppt"], default=["dense", "ppt"])
    p.add_argument("--runs", type=int, default=3, help="interleaved timed rounds of the whole steps")
    p.add_argument("--top", type=int, default=14, help="op types listed per table")
    args = p.parse_args(argv)
    import torch
    print(f"{args.model}, batch {args.batch_size}, float32, torch threads {torch.get_num_threads()}")
    steps, parts = {}, {}
    for variant in args.variants:
        steps[("mindspore", variant)] = mindspore_step(args.model, args.batch_size, variant)
        parts[variant] = pytorch_parts(args.model, args.batch_size, variant)
        steps[("pytorch", variant)] = lambda parts=parts[variant]: [run() for run in parts.values()]
    times = time_interleaved(steps, args.runs, warmup=0)
    print("| variant | MindSpore step ms | PyTorch step ms | MindSpore / PyTorch speed |")
    print("|---|---|---|---|")
    for variant in args.variants:
        ms_t, pt_t = 1000 * times[("mindspore", variant)], 1000 * times[("pytorch", variant)]
        print(f"| {variant} | {ms_t:.0f} | {pt_t:.0f} | {pt_t / ms_t:.2f}x |")
    profiles = {}
    for variant in args.variants:
        profiles[("mindspore", variant)] = mindspore_step_profile(steps[("mindspore", variant)])
        profiles[("pytorch", variant)] = pytorch_step_profile(parts[variant])
    print()
    print(stage_table(profiles))
    for (fw, variant), times in profiles.items():
        print()
        print(op_table(f"{fw} {variant}", times, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
