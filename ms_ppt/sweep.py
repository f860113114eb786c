"""Accuracy against cost over a grid of PPT settings in MindSpore (what scripts/sweep.py runs): every setting is
evaluated with eval_ms.py's preprocessing, batching and batch step on images decoded once, so each row equals
eval_ms.py's report for that setting; the grid, table and plot are ppt_common.sweep's. Schedule files
(--schedules) are evaluated as settings of their own; every row gets its KL from the dense model and its top-1
agreement with it (the dense model is evaluated in every run that adds rows)."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ppt_common import evaluation as ev
from ppt_common import sweep as table
from ppt_common.config import (DEFAULT_METHOD, DEFAULT_PP_LOC_LIST, DEFAULT_R, DEFAULT_THRESHOLD, DEMO_MODEL,
                               METHODS, model_arch)
from ppt_common.files import OutputExistsError, check_outputs
from ppt_common.macs import gmacs
from ppt_common.options import Options, at_least, check_choice, option, positive


OUTPUTS = (".json", ".csv", ".png")


@dataclasses.dataclass
class SweepOptions(Options):
    """The options of sweep.py (underscores for dashes)."""
    output: Optional[str] = None  # path prefix of the outputs: PREFIX.json, PREFIX.csv, PREFIX.png
    model: str = DEMO_MODEL
    checkpoint: Optional[str] = None
    pretrained: bool = False
    img_size: Optional[int] = option(None, positive)  # None: the model's own
    data_path: Optional[Sequence[str]] = None  # ImageNet roots holding val/, or folders of class folders
    r_values: Sequence[int] = option((DEFAULT_R,), at_least(0))
    pp_loc_lists: Sequence[Union[str, Sequence[int]]] = (DEFAULT_PP_LOC_LIST,)  # (3, 6, 9) or "3 6 9"
    thresholds: Sequence[float] = option((DEFAULT_THRESHOLD,), at_least(0))
    methods: Sequence[str] = (DEFAULT_METHOD,)
    schedules: Sequence[str] = ()  # schedule files (ppt_common.schedule), each a setting of its own
    resume_sweep: bool = False  # continue (or extend) the sweep in PREFIX.json
    force: bool = False  # replace an existing sweep instead
    batch_size: int = option(32, positive)
    num_workers: int = option(2, at_least(0))
    limit: Optional[int] = option(None, positive)
    mode: str = "graph"
    preprocess: str = "mindspore"
    calibrate: bool = False  # for each r and PP block list, the threshold with the best top-1
    quiet: bool = False


def pp_loc_list(value) -> Tuple[int, ...]:
    return table.parse_pp_loc_list(value) if isinstance(value, str) else tuple(value)


def check(args: SweepOptions):
    """The grid and the outputs, before any image is read: (settings, json, csv, png paths)."""
    check_choice("mode", args.mode, ("graph", "pynative"))
    check_choice("preprocess", args.preprocess, ("mindspore", "pil"))
    for method in args.methods:
        check_choice("methods", method, METHODS)
    if not args.output:
        raise ev.UsageError("--output names the sweep's files: PREFIX.json, PREFIX.csv and PREFIX.png")
    if args.output.endswith(("/", os.sep)) or os.path.isdir(args.output):
        raise ev.UsageError(f"--output is a path prefix such as {os.path.join(args.output, 'sweep')} (giving "
                            "sweep.json, sweep.csv, sweep.png), not a folder")
    args.check_values()
    ev.check_weights(args)
    try:
        arch = model_arch(args.model, args.img_size)
    except ValueError as e:
        raise ev.UsageError(str(e)) from None
    try:
        settings = table.grid(args.r_values, [pp_loc_list(p) for p in args.pp_loc_lists], args.thresholds,
                              list(dict.fromkeys(args.methods)))
        for s in settings:
            gmacs(arch, s.ppt_config())  # PP blocks outside the model, bad thresholds
    except ValueError as e:
        raise ev.UsageError(str(e)) from None
    from ppt_common.schedule import load_schedule
    keys = {s.key for s in settings}
    for path in args.schedules:
        setting = table.ScheduleSetting.of(load_schedule(path, args.model, arch.img_size), path)
        if setting.key not in keys:  # one row per distinct schedule
            settings.append(setting)
            keys.add(setting.key)
    prefix = os.path.splitext(args.output)[0] if args.output.lower().endswith(OUTPUTS) else args.output
    paths = [prefix + suffix for suffix in OUTPUTS]  # --output res.json names res.json, res.csv, res.png
    try:
        check_outputs([("--output", p) for p in paths], force=args.force or args.resume_sweep)
    except OutputExistsError as e:
        raise ev.UsageError(f"{e} (--resume-sweep continues that sweep, --force replaces it)") from None
    if args.resume_sweep and args.force:
        raise ev.UsageError("--resume-sweep and --force: choose one")
    return settings, paths


def run_sweep(options: SweepOptions = None, **kwargs) -> dict:
    """Evaluate every setting of the grid on the same decoded images; returns {"rows", "config", "calibration"} and
    writes the table (PREFIX.json, .csv, rewritten after every setting) and the plot (PREFIX.png). Options as
    SweepOptions, or their names as keyword arguments."""
    args = SweepOptions.of(options, **kwargs)
    settings, (json_path, csv_path, png_path) = check(args)
    try:
        done, done_config = table.read_table(json_path) if args.resume_sweep else ({}, {})
    except ValueError as e:
        raise ev.UsageError(str(e)) from None
    from convert.hub import cached_weights
    ev.use_cached_weights_for_demo(args, cached_weights)  # as eval_ms.py: the demo takes cached official weights
    items, classes = ev.load_items(args)
    config = {"model": args.model, "img_size": args.img_size, "checkpoint": args.checkpoint,
              "pretrained": args.pretrained,
              "data_path": args.data_path, "batch_size": ev.batch_size_for(len(items), args.batch_size),
              "mode": args.mode, "preprocess": args.preprocess}
    table.check_same_run(done_config, config, json_path)  # before any image is decoded
    import mindspore as ms
    from ms_ppt.context import set_context
    set_context(args.mode)
    ms.set_seed(0)
    from ms_ppt.factory import create_model
    from ms_ppt.vision_transformer import params_from_numpy
    first = create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, r=0,
                         img_size=args.img_size)
    from convert import read_class_names
    ev.check_classes(first.arch.num_classes, classes, read_class_names(args.checkpoint))
    weights = {p.name: p.asnumpy() for p in first.get_parameters()}
    config["weights_sha256"] = table.weights_digest(weights)  # the model itself, wherever its file lives
    table.check_same_run(done_config, config, json_path)  # before any image is decoded
    from ms_ppt.data import eval_preprocess
    preprocess = eval_preprocess(args.model, args.preprocess, args.img_size)
    batch_size = config["batch_size"]
    skipped = []
    batches = list(ev.iter_batches(items, batch_size, preprocess, args.num_workers, "skip", skipped))
    if not batches:
        raise ev.UsageError("no image could be read")
    config.update(num_images=sum(len(b[1]) for b in batches), skipped=len(skipped))
    table.check_same_run(done_config, config, json_path)
    order = {s.key: i for i, s in enumerate(settings)}
    kept = [key for key in done if key not in order]  # rows of another grid: an extended sweep keeps them
    order.update({key: len(settings) + i for i, key in enumerate(kept)})
    rows = sorted(done.values(), key=lambda row: order[row["setting"]])
    todo = [s for s in settings if s.key not in done]
    if done:
        reused = [s.key for s in settings if s.key in done]
        print(f"resuming: {len(reused)} of {len(settings)} settings are in {json_path} (same weights, sha256 "
              f"{config['weights_sha256'][:12]}...), reused: {'; '.join(reused) or 'none'}"
              + (f"; its {len(kept)} other rows are kept" if kept else ""), file=sys.stderr)
    started = time.perf_counter()

    def evaluate(setting):
        model = create_model(args.model, num_classes=first.arch.num_classes, img_size=args.img_size,
                             ppt_config=setting.ppt_config(), trace=True)
        params_from_numpy(model, weights)
        return evaluate_setting(model, setting, batches, batch_size, args.mode == "graph")
    dense_logits = None
    if todo and todo[0].key != "dense":  # the dense row is in the table already: its logits are not
        dense_logits = evaluate(settings[0])[1]
    for i, setting in enumerate(todo):
        row, logits = evaluate(setting)
        dense_logits = logits if dense_logits is None else dense_logits
        row["kl_dense"], row["agreement_dense"] = table.kl_from_dense(dense_logits, logits)
        rows = sorted(rows + [row], key=lambda r: order[r["setting"]])
        table.write_table(json_path, csv_path, rows, config)
        if not args.quiet:
            print(f"[{i + 1}/{len(todo)}] {setting.key}: top-1 {row['top1']:.2f} %, KL from dense "
                  f"{row['kl_dense']:.4f}, {row['gmacs']:.4f} GMACs, {row['images_per_s']:.1f} images/s "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    calibration = None
    if args.calibrate:
        calibration = table.calibrate(rows)
        table.write_table(json_path, csv_path, rows, config, calibration)
        for choice in calibration:
            print(table.describe_calibration(choice))
    table.plot(rows, png_path, f"{args.model}, {config['num_images']} images")
    print(f"wrote {json_path}, {csv_path}, {png_path}")
    return {"rows": rows, "config": config, "calibration": calibration}


def evaluate_setting(model, setting, batches, batch_size: int, fixed_batch: bool) -> dict:
    """Every evaluation's batch step (ev.score_batch) on the decoded batches, timing the forwards alone: (the row,
    the logits)."""
    from ms_ppt.factory import run_with_trace
    metrics = ev.Metrics()
    forward = {"seconds": 0.0, "images": 0}

    def timed(images):
        start = time.perf_counter()
        out = run_with_trace(model, images)[:2]
        forward["seconds"] += time.perf_counter() - start
        forward["images"] += len(images)
        return out
    first = batches[0][0]
    run_with_trace(model, ev.pad_batch(first, batch_size) if fixed_batch else first)  # compile before timing
    for images, labels, paths in batches:
        ev.score_batch(metrics, images, labels, paths, timed, batch_size, fixed_batch)
    result = metrics.result()
    pooled = (metrics.policy_matrix(len(model.pp_blocks)) == 1).sum(0).tolist()
    listed = (lambda v: list(v)) if isinstance(setting, table.ScheduleSetting) else (lambda v: v)
    row = {"setting": setting.key, "method": setting.method if setting.r else None, "r_tokens": listed(setting.r),
           "pp_loc_list": list(setting.pp_loc_list),
           "threshold": listed(setting.threshold) if setting.r and setting.method == DEFAULT_METHOD else None,
           **result, "gmacs": gmacs(model.arch, setting.ppt_config()),
           "images_per_s": forward["images"] / forward["seconds"], "pooled_per_block": pooled,
           "schedule": getattr(setting, "name", None)}
    return row, np.concatenate(metrics.logits)
