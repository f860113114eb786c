#!/usr/bin/env python
"""Where a training step's memory goes, MindSpore (graph mode) beside PyTorch: peak RSS after building the model,
after a loss forward, after forward + backward (the parameters' gradients), and after whole steps (AdamW).

    python tools/memory_train.py --model deit_small_patch16_224 --batch-size 16 --variants dense ppt

Each figure is a fresh process (the fine-tuning recipe's model, drop path 0.1, smoothing 0.1; as
scripts/benchmark.py --task train) that runs its stage three times and prints its peak RSS (libraries included),
so the stages' differences say what the forward, the backward and the optimizer hold. A figure growing with the
batch (try two batch sizes) is activation memory; MindSpore holds a CPU graph's buffers in its memory pool, so its
peak is also what it keeps. See docs/performance.md, "Training memory".
"""
import argparse
import os
import subprocess
import sys

import _bootstrap  # noqa: F401

from ppt_common.config import MODEL_CONFIGS, get_arch
from ppt_common.measure import own_peak_rss_mb, random_training_batch
from ppt_common.training import RECIPE

STAGES = ("built", "forward", "backward", "step")
FRAMEWORKS = ("mindspore", "pytorch")


def mindspore_stage(name, batch, variant, stage):
    """A call that runs the stage once (the graph compiled at its first call)."""
    import mindspore as ms
    from mindspore import nn
    import ms_ppt
    from ms_ppt import training
    from ppt_common.heap import release_free_heap
    ms.set_context(mode=ms.GRAPH_MODE)
    model = ms_ppt.create_model(name, r=0 if variant == "dense" else None, drop_path_rate=RECIPE.drop_path)
    model.set_train(True)
    x, targets = (ms.Tensor(a) for a in random_training_batch(model.arch, batch))
    loss_cell = training.LossCell(model, training.build_loss(RECIPE.smoothing))
    optimizer = training.build_optimizer(model)
    if stage == "built":
        return lambda: None
    if stage in ("forward", "backward"):
        class Backward(nn.Cell):
            def __init__(self):
                super().__init__(auto_prefix=False)
                self.value_and_grad = ms.value_and_grad(loss_cell, None, optimizer.params)

            def construct(self, images, targets):
                return self.value_and_grad(images, targets, None)  # (loss, gradients): both kept

        cell = loss_cell if stage == "forward" else Backward()
        args = (x, targets, None) if stage == "forward" else (x, targets)
        cell.compile(*args)
        release_free_heap()  # as TrainStep does after its compile, so that the stages add up to the step

        def run():
            out = cell(*args)
            (out[0] if stage == "backward" else out).asnumpy()
        return run
    step = training.TrainStep(loss_cell, optimizer)
    return lambda: step(x, targets, None, *optimizer.scalars(RECIPE.min_lr))[0].asnumpy()


def pytorch_stage(name, batch, variant, stage):
    import torch
    import pt_reference
    from pt_reference import training
    model = pt_reference.create_model(name, r=0 if variant == "dense" else None,
                                      drop_path_rate=RECIPE.drop_path).train()
    x, targets = (torch.from_numpy(a) for a in random_training_batch(get_arch(name), batch))
    loss_fn = training.build_loss(RECIPE.smoothing)
    if stage == "built":
        return lambda: None
    if stage == "forward":
        def forward():
            with torch.no_grad():
                loss_fn(model(x), targets).item()
        return forward
    if stage == "backward":
        def backward():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), targets).backward()
        return backward
    step = training.TrainStep(model, loss_fn, training.build_optimizer(model))
    return lambda: step(x, targets, RECIPE.min_lr)


def child(framework, name, batch, variant, stage) -> float:
    run = (mindspore_stage if framework == "mindspore" else pytorch_stage)(name, batch, variant, stage)
    for _ in range(3):
        run()
    return own_peak_rss_mb()


def measure(framework, name, batch, variant, stage) -> float:
    command = [sys.executable, os.path.abspath(__file__), "--child", framework, name, str(batch), variant, stage]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.split()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{framework} {variant} {stage} failed: {done.stderr[-500:]}")
    return float(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--variants", nargs="+", choices=["dense", "ppt"], default=["dense", "ppt"])
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        framework, name, batch, variant, stage = args.child
        print(child(framework, name, int(batch), variant, stage))
        return 0
    print(f"peak RSS (MB), {args.model}, batch {args.batch_size}, training mode")
    print("| framework | variant | " + " | ".join(STAGES) + " |")
    print("|---|---|" + "---|" * len(STAGES))
    for framework in args.frameworks:
        for variant in args.variants:
            peaks = [measure(framework, args.model, args.batch_size, variant, stage) for stage in STAGES]
            print(f"| {framework} | {variant} | " + " | ".join(f"{mb:.0f}" for mb in peaks) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
