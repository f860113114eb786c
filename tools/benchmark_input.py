#!/usr/bin/env python
"""Images per second of the eval input pipelines (decode + preprocess + batch), side by side in one run.

    python tools/benchmark_input.py --data-path ../shared/data/imagenet-sample ../shared/data/foolbox-imagenet

- pil: eval_ms.py / eval_pt.py `--preprocess pil` (PIL decode and timm's transform, --num-workers threads);
- mindspore: eval_ms.py's default (PIL decode, mindcv's Resize/CenterCrop/Normalize, threads);
- dataset-engine: MindSpore's own ImageFolderDataset + mindcv's eval transforms (its Decode included),
  --num-workers parallel workers. Run in a temporary working folder: MindSpore's decoder writes a copy of any bad
  file into the working folder.
Each pipeline reads every image --rounds times after one warm-up pass; the median pass is reported.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import _bootstrap  # noqa: F401  (the repository root on sys.path)

import numpy as np

from ppt_cli import run_tool
from ppt_common import evaluation as ev
from ppt_common.config import data_config, get_arch
from ppt_common.datasets import image_root
from ppt_common.imagenet import default_crop_pct, wnid_to_label


def threaded(preprocess, items, args):
    def run():
        return sum(len(labels) for _, labels, _ in ev.iter_batches(items, args.batch_size, preprocess,
                                                                    args.num_workers, "fail", []))
    return run


def dataset_engine(args):
    import mindspore.dataset as ds
    from mindcv.data import create_transforms
    img_size, data = get_arch(args.model).img_size, data_config(args.model)
    steps = create_transforms(dataset_name="imagenet", image_resize=img_size, is_training=False,
                              crop_pct=default_crop_pct(img_size) if data.crop_pct is None else data.crop_pct,
                              interpolation=data.interpolation, mean=[255 * m for m in data.mean],
                              std=[255 * s for s in data.std])
    class_indexing = wnid_to_label()  # the standard ImageNet-1k indices, as find_images gives
    folders = [image_root(p, split="val") for p in args.data_path]  # the folders eval_ms.py reads

    def run():
        count = 0
        for folder in folders:
            present = {c: i for c, i in class_indexing.items() if os.path.isdir(os.path.join(folder, c))}
            dataset = ds.ImageFolderDataset(folder, class_indexing=present, num_parallel_workers=args.num_workers,
                                            shuffle=False)
            dataset = dataset.map(steps, input_columns="image", num_parallel_workers=args.num_workers)
            for batch in dataset.batch(args.batch_size).create_tuple_iterator(output_numpy=True):
                count += len(batch[1])
        return count
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-path", nargs="+", required=True)
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args) -> int:
    items, _ = ev.load_items(ev.EvalOptions(data_path=args.data_path))
    from ms_ppt.data import mindspore_preprocess
    pipelines = {"pil": threaded(ev.pil_preprocess(args.model), items, args),
                 "mindspore": threaded(mindspore_preprocess(args.model), items, args),
                 "dataset-engine": dataset_engine(args)}
    workdir, here = tempfile.mkdtemp(prefix="ms-ppt-input-"), os.getcwd()
    os.chdir(workdir)
    try:
        times = {name: [] for name in pipelines}
        for round_ in range(args.rounds + 1):
            for name, run in pipelines.items():  # interleaved, so machine drift does not bias the ratios
                start = time.perf_counter()
                count = run()
                if round_:
                    times[name].append(time.perf_counter() - start)
                if count != len(items):
                    raise ev.UsageError(f"{name} read {count} of {len(items)} images")
    finally:
        os.chdir(here)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{len(items)} images, {args.model} preprocessing, batch {args.batch_size}, {args.num_workers} workers "
          f"(median of {args.rounds} passes)")
    for name, t in times.items():
        print(f"  {name:15s} {len(items) / float(np.median(t)):8.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
