#!/usr/bin/env python
"""Look for ops that are not bit-identical from call to call at the model's own shapes (MindSpore, CPU).

    python tools/op_determinism.py --batch-sizes 12 --methods ppt --calls 10 --modes pynative graph

Level 1 (cells): a model with random weights runs once in PyNative while forward pre-hooks copy the inputs of the
sub-cells that do the work (patch_embed, each block's norm1, attn, reduction, norm2, mlp and LayerScales, the final
norm, head). Each is then called --calls times on those inputs in each mode, forward and backward (the gradient of
a fixed random weighting of its floating outputs, with respect to its floating inputs and parameters), and every
output is compared bit for bit with the first call's. A check that repeats an earlier method's exactly (same cell,
weights and input bytes) is skipped. Level 2 (primitives): elementwise and reduction primitives on fixed random
inputs of every floating shape (2-D or more) the sub-cells received and the sizes' [B, N] and [B, N, 1], and Log
on the model's own sizes; one fresh cell per shape.
MindSpore's CPU kernels that use ParallelLaunchAutoSearch try a new parallel split every 5 launches (calls 5-9,
10-14, ... of each kernel; more splits with more threads), then keep the fastest; Log's bits depend on the split.
In graph mode each compiled cell has its own kernels; in PyNative one kernel per op serves every shape and cell of
the process, so only its first use can show this. --calls 20 (the default) covers the search on 2 threads.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("GLOG_v", "3")
# a graph that fails to compile (or is interrupted) writes rank_0/om/analyze_fail.ir here, not into the cwd
os.environ.setdefault("MS_OM_PATH", os.path.join(tempfile.gettempdir(), "ms_ppt_op_determinism"))

from ppt_common.quiet import silence_mindspore_exit_noise  # noqa: E402

silence_mindspore_exit_noise()  # importing ms_ppt no longer does it: the command-line tools do

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from ms_ppt.factory import run_with_trace  # noqa: E402
from ms_ppt.vision_transformer import VisionTransformer, params_from_numpy  # noqa: E402
from ppt_common.config import METHODS, MODEL_CONFIGS, PPTConfig, arch_schedule, get_arch  # noqa: E402
from ppt_common.interrupts import handle_interrupts, take_interrupt  # noqa: E402
from ppt_common.proportional import log_size_table  # noqa: E402

MODES = {"pynative": ms.PYNATIVE_MODE, "graph": ms.GRAPH_MODE}
DTYPES = {"float32": ms.float32, "float16": ms.float16}
BLOCK_CELLS = ("norm1", "attn", "ls1", "reduction", "norm2", "mlp", "ls2")
MODEL_CELLS = ("patch_embed", "norm_pre", "norm", "head", "head_dist")
SAME, NOT_SAME = "bit-identical", "NOT bit-identical"


def leaves(value, path=()):
    """[(path, value)] of every leaf of nested tuples."""
    if isinstance(value, (tuple, list)):
        return [leaf for i, v in enumerate(value) for leaf in leaves(v, path + (i,))]
    return [(path, value)]


def ulp_order(a):
    """Float bits as int64 ordered like the floats: neighbouring floats differ by 1."""
    int_type = a.dtype.str.replace("f", "i")
    bits = a.reshape(-1).view(int_type).astype(np.int64)
    return np.where(bits < 0, -(bits & np.iinfo(int_type).max), bits)


def compare(results):
    """([index of every call whose arrays differ from the first call's], max difference in ulp of a float or None)."""
    differing, max_ulp = [], None
    for call, other in enumerate(results[1:], 1):
        same = len(other) == len(results[0])
        for a, b in zip(results[0], other):
            if a.shape != b.shape or a.dtype != b.dtype:
                same = False
            elif not np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)):
                same = False
                if a.dtype.kind == "f":
                    max_ulp = max(float(np.abs(ulp_order(a).astype(np.float64) - ulp_order(b)).max()), max_ulp or 0)
        if not same:
            differing.append(call)
    return differing, max_ulp


class Outputs(nn.Cell):
    """A cell's tensor outputs at `paths` as one flat tuple (a None output fails graph inference beside Custom
    ops); with `weights`, the loss sum(out_i * w_i) whose gradient a backward check repeats."""

    def __init__(self, cell, paths, weights=None):
        super().__init__()
        self.cell, self.paths, self.weights = cell, paths, weights

    def construct(self, *args):
        out, picked = self.cell(*args), ()
        for path in self.paths:
            leaf = out
            for i in path:
                leaf = leaf[i]
            picked = picked + (leaf,)
        if self.weights is None:
            return picked
        total = 0.0
        for i in range(len(self.weights)):
            total = total + (picked[i] * self.weights[i]).astype(ms.float32).sum()
        return total


# (name, input) of Primitives' outputs, in order; inputs: fixed random arrays of one shape
PRIMITIVES = (("ops.log", "whole 1..8"), ("ops.exp", "normal"), ("ops.erf", "wide"), ("ops.sqrt", "positive"),
              ("ops.rsqrt", "positive"), ("ops.sigmoid", "wide"), ("ops.tanh", "wide"), ("ops.softmax(-1)", "wide"),
              ("sum(-1)", "normal"), ("mean(-1)", "normal"), ("ops.cumsum(-1)", "normal"),
              ("ops.cumsum(-1) int32", "ints"), ("nn.GELU(exact)", "wide"), ("ops.gather(log table)", "index"))


class Primitives(nn.Cell):
    def __init__(self, log_table):
        super().__init__()
        self.table, self.gelu = log_table, nn.GELU(approximate=False)

    def construct(self, whole, normal, wide, positive, ints, index):
        return (ops.log(whole), ops.exp(normal), ops.erf(wide), ops.sqrt(positive), ops.rsqrt(positive),
                ops.sigmoid(wide), ops.tanh(wide), ops.softmax(wide, -1), normal.sum(-1), normal.mean(-1),
                ops.cumsum(normal, -1), ops.cumsum(ints, -1), self.gelu(wide), ops.gather(self.table, index, 0))


class Log(nn.Cell):
    def construct(self, x):
        return ops.log(x)


def repeat(fn, calls):
    """`calls` results of fn as lists of arrays, and the error text if it raised."""
    try:
        return [[v.asnumpy() for _, v in leaves(fn())] for _ in range(calls)], ""
    except Exception as exc:  # noqa: BLE001 - one failing check must not stop the survey
        return None, f"{type(exc).__name__}: {(str(exc).strip() or '?').splitlines()[0][:160]}"


def add_check(checks, results, note, seconds, skipped=False, **where):
    """Record a check from its calls' results (None: an error, or a skip, with the reason in `note`)."""
    differing, max_ulp = compare(results) if results else ([], None)
    status = "skipped" if skipped else "error" if results is None else NOT_SAME if differing else SAME
    entry = dict(where, calls=len(results or ()), differing=differing, max_ulp=max_ulp, status=status, note=note,
                 seconds=round(seconds, 3))
    checks.append(entry)
    if status != SAME:
        print(f"  {status}: {' '.join(table_row(entry))} {note}".rstrip(), file=sys.stderr, flush=True)


def timed_check(checks, fn, calls, **where):
    start = time.time()
    add_check(checks, *repeat(fn, calls), time.time() - start, **where)


def shapes_text(arrays):
    return " ".join("None" if a is None else f"[{','.join(map(str, a.shape))}]" +
                    ("" if a.dtype.kind == "f" else str(a.dtype)) for a in arrays)


def check_cell(checks, name, cell, inputs, outputs, where, args):
    """Forward and backward checks of a captured cell in the current mode (`outputs`: its tensor outputs
    [(path, array)] from PyNative)."""
    tensors = [None if a is None else Tensor(a) for a in inputs]
    forward = Outputs(cell, tuple(p for p, _ in outputs))
    timed_check(checks, lambda: forward(*tensors), args.calls, name=f"{name} forward", **where)
    floats = [(p, a) for p, a in outputs if a.dtype.kind == "f"]
    positions = tuple(i for i, a in enumerate(inputs) if a is not None and a.dtype.kind == "f")
    params = cell.trainable_params()
    if not floats or not (positions or params):
        reason = "no floating outputs" if not floats else "no floating inputs or parameters"
        return add_check(checks, None, reason, 0.0, skipped=True, name=f"{name} backward", **where)
    rng = np.random.RandomState(args.seed)
    weights = tuple(Tensor(rng.randn(*a.shape).astype(a.dtype)) for _, a in floats)
    grad = ms.grad(Outputs(cell, tuple(p for p, _ in floats), weights), grad_position=positions or None,
                   weights=params or None)
    timed_check(checks, lambda: grad(*tensors), args.calls, name=f"{name} backward", **where)


def capture(model, x):
    """One PyNative run with pre-hooks: the work cells [(name, cell, input copies, tensor outputs)] in call order,
    every sub-cell's floating input {(shape, dtype)}, and the traces."""
    captured, shapes = {}, set()

    def hook_for(name):
        def hook(cell, args):
            shapes.update((tuple(a.shape), ms.dtype_to_nptype(a.dtype)) for a in args if isinstance(a, Tensor))
            last, dots = name.rsplit(".", 1)[-1], name.count(".")
            if name not in captured and (last in BLOCK_CELLS and dots == 2 or last in MODEL_CELLS and dots == 0):
                captured[name] = (cell, [a.asnumpy().copy() if isinstance(a, Tensor) else None for a in args])
        return hook
    handles = [cell.register_forward_pre_hook(hook_for(name)) for name, cell in model.cells_and_names() if name]
    try:
        _, traces, _ = run_with_trace(model, x)
    finally:
        for handle in handles:
            handle.remove()
    cells = []
    for name, (cell, inputs) in captured.items():
        out = cell(*[None if a is None else Tensor(a) for a in inputs])
        cells.append((name, cell, inputs, [(p, v.asnumpy()) for p, v in leaves(out) if isinstance(v, Tensor)]))
    return cells, shapes, traces


def primitive_checks(checks, shapes, sizes, where, args):
    """Level 2 in the current mode: Primitives on each shape's inputs, each drawn from RandomState(seed) (not
    depending on the other shapes); Log on each of the model's own size tensors."""
    np_dtype, num_tokens = np.dtype(where["dtype"]), get_arch(args.model).num_tokens
    table = Tensor(log_size_table(num_tokens).astype(np_dtype))
    draws = {"whole 1..8": lambda r, s: r.randint(1, 9, s).astype(np_dtype), "normal": lambda r, s: r.randn(*s),
             "wide": lambda r, s: 3 * r.randn(*s), "positive": lambda r, s: r.uniform(0.1, 10, s),
             "ints": lambda r, s: r.randint(0, 3, s).astype(np.int32),
             "index": lambda r, s: r.randint(1, num_tokens + 1, s).astype(np.int32)}
    for shape in sorted(shapes):
        inputs = [draws[kind](np.random.RandomState(args.seed), shape) for kind in draws]
        inputs = [Tensor(a if a.dtype == np.int32 else a.astype(np_dtype)) for a in inputs]
        cell, start = Primitives(table), time.time()
        results, error = repeat(lambda: cell(*inputs), args.calls)
        seconds = (time.time() - start) / len(PRIMITIVES)
        for i, (name, kind) in enumerate(PRIMITIVES):
            add_check(checks, results and [r[i:i + 1] for r in results], error, seconds, name=name,
                      inputs=f"[{','.join(map(str, shape))}] {kind}", **where)
    for size, cell_name, method in sizes:
        cell, arg = Log(), Tensor(size)
        timed_check(checks, lambda: cell(arg), args.calls, name="ops.log(model sizes)", inputs=f"{shapes_text([size])} "
                    f"sizes into {cell_name}", **dict(where, dtype=size.dtype.name, method=method))


def build(arch, state, method, threshold, dtype, args):
    model = VisionTransformer(arch, PPTConfig(r=args.r, pp_loc_list=args.pp_loc_list, threshold=threshold,
                                              method=method), trace=True)
    params_from_numpy(model, state)
    model.to_dtype(DTYPES[dtype])
    model.set_train(False)
    return model


def digest(cell, inputs, dtype):
    """What makes a cell check repeat an earlier one: the cell's class and settings, its weights, its inputs."""
    h = hashlib.sha1(f"{type(cell).__name__} {dtype} {getattr(cell, 'method', '')} "
                     f"{getattr(cell, 'threshold', '')}".encode())
    for a in list(inputs) + [p.asnumpy() for p in cell.trainable_params()]:
        h.update(b"None" if a is None else f"{a.shape}{a.dtype}".encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def progress(label, new, start, extra=""):
    print(f"[{label}] {extra}{len(new)} checks, {sum(c['status'] == NOT_SAME for c in new)} not bit-identical, "
          f"{sum(c['status'] in ('error', 'skipped') for c in new)} errors/skipped; {time.time() - start:.0f} s",
          file=sys.stderr, flush=True)


def survey(args, checks):
    arch, seen = get_arch(args.model), set()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(args.seed)  # MindSpore's initialisers (LayerNorm weights 1); every model gets these weights
    state = {p.name: p.asnumpy() for p in VisionTransformer(arch, PPTConfig(), trace=True).get_parameters()}
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            ms.set_context(mode=ms.PYNATIVE_MODE)
            x = np.random.RandomState(args.seed).randn(batch, 3, arch.img_size, arch.img_size).astype(np.float32)
            threshold = args.threshold
            if threshold is None:  # between the smallest and largest score variance: a ppt batch pools and prunes
                _, traces, _ = run_with_trace(build(arch, state, "prune", 0.0, "float32", args), x)
                v = np.sort(traces[0].variance) if traces else [PPTConfig().threshold] * 2
                threshold = float(np.sqrt(v[0] * v[-1]))
            prim_shapes, sizes = set(), {}
            for method in args.methods:
                ms.set_context(mode=ms.PYNATIVE_MODE)
                cells, shapes, traces = capture(build(arch, state, method, threshold, dtype, args), x)
                prim_shapes |= {s for s, d in shapes if d == np.dtype(dtype) and len(s) >= 2}
                prim_shapes |= {(batch, n) + tail for t in traces for n in (t.tokens_in, t.tokens_out)
                                for tail in ((), (1,))}
                for name, _, inputs, _ in cells:  # reduction(x, attn, v, k, size, source): each distinct size tensor
                    if name.endswith(".reduction") and inputs[4] is not None:
                        sizes.setdefault(inputs[4].tobytes() + str(inputs[4].shape).encode(), (inputs[4], name, method))
                pooled = f"{int((traces[0].policy == 1).sum())} of {batch} pool" if traces else "no reduction"
                for mode in args.modes if "cells" in args.levels else ():
                    start, before, repeats = time.time(), len(checks), 0
                    ms.set_context(mode=MODES[mode])
                    for name, cell, inputs, outputs in cells:
                        key = (mode, digest(cell, inputs, dtype))
                        repeats += key in seen
                        if key not in seen:
                            seen.add(key)
                            where = dict(level=1, inputs=shapes_text(inputs), dtype=dtype, mode=mode, method=method,
                                         batch=batch)
                            check_cell(checks, name, cell, inputs, outputs, where, args)
                    progress(f"{mode} {method} batch {batch} {dtype}", checks[before:], start,
                             f"threshold {threshold:.3g} ({pooled}), {repeats} cells as an earlier method's: ")
            for mode in args.modes if "primitives" in args.levels else ():
                ms.set_context(mode=MODES[mode])
                start, before = time.time(), len(checks)
                primitive_checks(checks, prim_shapes, list(sizes.values()),
                                 dict(level=2, dtype=dtype, mode=mode, method="-", batch=batch), args)
                progress(f"{mode} primitives batch {batch} {dtype}", checks[before:], start,
                         f"{len(prim_shapes)} shapes, {len(sizes)} size tensors: ")


COLUMNS = ("level", "name", "inputs", "dtype", "mode", "method", "batch", "differ", "calls that differ", "max ulp")


def calls_text(calls):
    """[5, 6, 7, 9] -> '5-7,9'."""
    runs = []
    for c in calls:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def table_row(c):
    return [str(c["level"]), c["name"], c["inputs"], c["dtype"], c["mode"], c["method"], str(c["batch"]),
            f"{len(c['differing'])}/{max(c['calls'] - 1, 0)}", calls_text(c["differing"]) or "-",
            "-" if c["max_ulp"] is None else f"{c['max_ulp']:.0f}"]


def report(checks, elapsed, interrupted):
    rows = [table_row(c) for c in checks if c["status"] == NOT_SAME]
    widths = [max(len(r[i]) for r in rows + [COLUMNS]) for i in range(len(COLUMNS))]
    for row in [COLUMNS] + rows if rows else []:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for c in checks:
        if c["status"] in ("error", "skipped"):
            print(f"{c['status']}: {' '.join(table_row(c)[:7])}: {c['note']}")
    same = sum(c["status"] == SAME for c in checks)
    print(f"{'interrupted: ' if interrupted else ''}{len(checks)} checks, {same} bit-identical, {len(rows)} not, "
          f"{len(checks) - same - len(rows)} errors/skipped; {elapsed:.0f} s (calls counted from 0, compared with 0)")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224", help="a name of ppt_common.config.MODEL_CONFIGS")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 12, 16, 32])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--calls", type=int, default=20, help="calls per check, each compared with the first")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["pynative", "graph"])
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32"])
    p.add_argument("--levels", nargs="+", choices=["cells", "primitives"], default=["cells", "primitives"])
    p.add_argument("--r", type=int, default=50)
    p.add_argument("--pp-loc-list", type=int, nargs="+", default=[3, 6, 9])
    p.add_argument("--threshold", type=float, help="default: per batch, between its extreme score variances")
    p.add_argument("--output-json", help="write every check here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.model not in MODEL_CONFIGS:
        p.error(f"unknown model '{args.model}'; known models: {', '.join(sorted(MODEL_CONFIGS))}")
    if args.calls < 2:
        p.error(f"--calls must be at least 2 (each call is compared with the first), got {args.calls}")
    if min(args.batch_sizes) < 1:
        p.error(f"--batch-sizes must be positive, got {' '.join(map(str, args.batch_sizes))}")
    if args.threshold is not None and not 0 <= args.threshold < float("inf"):
        p.error(f"--threshold must be a finite number >= 0, got {args.threshold}")
    try:
        arch_schedule(get_arch(args.model), PPTConfig(r=args.r, pp_loc_list=args.pp_loc_list))
    except (TypeError, ValueError) as exc:
        p.error(str(exc))
    for name in ("batch_sizes", "methods", "modes", "dtypes", "levels"):  # a repeated value would repeat work
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    return args


def main(argv=None):
    args = parse_args(argv)
    handle_interrupts()  # under `timeout` or Ctrl-C, still report what was checked
    checks, start = [], time.time()
    try:
        survey(args, checks)
    except KeyboardInterrupt:
        pass
    interrupted = take_interrupt()
    elapsed = time.time() - start
    report(checks, elapsed, interrupted)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(dict(options=vars(args), elapsed_s=round(elapsed, 1), interrupted=interrupted, checks=checks),
                      f, indent=1)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
