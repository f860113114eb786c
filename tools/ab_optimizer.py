#!/usr/bin/env python
"""The fused AdamW (kernels/adamw_cpu.cc: update and finite check in one pass per parameter) against the graph
ops it replaces (AdamW's HyperMap of ~10 elementwise ops per parameter, TrainStep's IsFinite + ReduceAll per
gradient), A/B in one process, MindSpore graph mode:

    python tools/ab_optimizer.py --model deit_small_patch16_224 --part update      # the update and check alone
    python tools/ab_optimizer.py --model deit_small_patch16_224 --part step --variant ppt --batch-size 16

`update` times the optimizer cell with the finite check on the model's parameters and fixed random gradients;
`step` whole training steps (the fine-tuning recipe's model and loss, as scripts/benchmark.py --task train). Both
versions are built side by side and timed interleaved (--runs rounds, alternating which goes first, median), so
the machine's drift hits both alike; the per-round ratios show the spread.
"""
import argparse
import sys

import _bootstrap  # noqa: F401

import numpy as np

from ppt_common.config import MODEL_CONFIGS
from ppt_common.measure import random_training_batch, time_interleaved
from ppt_common.training import RECIPE


def update_runner(name, fused):
    import mindspore as ms
    from mindspore import nn
    import ms_ppt
    from ms_ppt import training

    class Update(nn.Cell):
        def __init__(self, optimizer):
            super().__init__(auto_prefix=False)
            self.optimizer = optimizer

        def construct(self, grads, decay_factor, step_size, bias_correction2_sqrt):
            return self.optimizer(grads, decay_factor, step_size, bias_correction2_sqrt)

    model = ms_ppt.create_model(name)
    optimizer = training.AdamW(model.trainable_params(), fused=fused)
    assert optimizer.fused == fused, "the fused update cannot be built here (no g++?)"
    rng = np.random.RandomState(0)
    # mutable: a plain tuple argument is a constant to graph mode, which would fold part of the update
    grads = ms.mutable(tuple(ms.Tensor(rng.randn(*p.shape).astype(np.float32) * 1e-3) for p in optimizer.params))
    update = Update(optimizer)
    return lambda: update(grads, *optimizer.scalars(1e-5)).asnumpy()


def step_runner(name, fused, variant, batch):
    import mindspore as ms
    import ms_ppt
    from ms_ppt import training
    model = ms_ppt.create_model(name, r=0 if variant == "dense" else None, drop_path_rate=RECIPE.drop_path)
    model.set_train(True)
    optimizer = training.AdamW(model.trainable_params(), fused=fused)
    assert optimizer.fused == fused, "the fused update cannot be built here (no g++?)"
    step = training.TrainStep(training.LossCell(model, training.build_loss(RECIPE.smoothing)), optimizer)
    x, targets = (ms.Tensor(a) for a in random_training_batch(model.arch, batch))
    return lambda: step(x, targets, None, *optimizer.scalars(RECIPE.min_lr))[0].asnumpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--part", choices=["update", "step"], default="update")
    p.add_argument("--variant", choices=["dense", "ppt"], default="dense", help="the model, for --part step")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    if args.runs <= 0 or args.batch_size <= 0:
        p.error("--runs and --batch-size must be positive")
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)

    def build(fused):
        if args.part == "update":
            return update_runner(args.model, fused)
        return step_runner(args.model, fused, args.variant, args.batch_size)

    runners = {"graph": build(False), "fused": build(True)}
    for run in runners.values():  # compile, then let the kernels settle
        run()
    rounds = []
    for i in range(args.runs):
        order = ("graph", "fused") if i % 2 == 0 else ("fused", "graph")
        rounds.append(time_interleaved({key: runners[key] for key in order}, runs=1, warmup=0))
    graph = np.array([r["graph"] for r in rounds]) * 1000
    fused = np.array([r["fused"] for r in rounds]) * 1000
    what = "optimizer update + finite check" if args.part == "update" else f"{args.variant} training step, batch " \
                                                                           f"{args.batch_size}"
    print(f"{args.model}, {what}, median of {args.runs} interleaved rounds:")
    print(f"  graph ops {np.median(graph):8.1f} ms   fused {np.median(fused):8.1f} ms   "
          f"saved {np.median(graph - fused):7.1f} ms   {np.median(graph) / np.median(fused):.2f}x faster")
    print("  per-round ratios (graph / fused): " + " ".join(f"{g / f:.2f}" for g, f in zip(graph, fused)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
