"""Fine-tuning with PPT in MindSpore, the loop behind scripts/train_ms.py: DeiT's recipe on mindcv's transforms
and Mixup, one process or data parallel under msrun, validation each epoch through the evaluation loop of
eval_ms.py, a JSON log and an atomically written checkpoint per epoch, exact resume."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import List, Optional, Tuple

import numpy as np

from ppt_common import evaluation as ev
from ppt_common.distributed import World, gather_objects
from ppt_common.files import atomic_write
from ppt_common.datasets import Classes, find_images, same_classes
from ppt_common.imagenet import ImageError, NUM_CLASSES, check_images
from ppt_common.options import check_choice, is_checkpoint
from ppt_common.training import (Recipe, TrainOptions, capped_r, describe_lr_schedule, drop_path_draws, epoch_lr,
                                 rank_steps, sample_seed, scaled_lr, step_rng)
from ppt_common.errors import TrainingError

CHECKPOINT, LOG = "checkpoint.ckpt", "log.txt"


def data_folders(args) -> Tuple[str, str]:
    train = args.train_path or (os.path.join(args.data_path, "train") if args.data_path else None)
    val = args.val_path or (os.path.join(args.data_path, "val") if args.data_path else None)
    if not train or not val:
        raise ev.UsageError("name the data: --data-path ROOT (with ROOT/train and ROOT/val), or --train-path and "
                            "--val-path")
    return train, val


def list_images(folder: str, what: str) -> Tuple[List[Tuple[str, int]], Classes]:
    try:
        return find_images(folder)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise ev.UsageError(f"{what} data: {e}") from None


def head_size(classes: Classes, num_classes: Optional[int]) -> int:
    """The head's classes: the data's (ImageNet folders: the 1000 standard labels), or --num-classes, which must
    cover every label."""
    if num_classes is None:
        return NUM_CLASSES if classes.imagenet else len(classes)
    if classes.imagenet and num_classes != NUM_CLASSES:
        raise ev.UsageError(f"--num-classes {num_classes}: the data's folders are ImageNet WordNet ids, labelled by "
                            f"their ImageNet-1k index, which needs a head of {NUM_CLASSES}")
    if num_classes < len(classes):
        raise ev.UsageError(f"--num-classes {num_classes} is fewer than the data's {classes.summary()}")
    return num_classes


def check_training_images(items, on_error: str, num_workers: int):
    """Every training image's file checked before the first step (a drawn bad image would end the run mid-epoch):
    (the readable items, a note naming the ones left out, or None). With on_error "fail" they are refused."""
    items, bad = check_images(items, num_workers)
    if not bad:
        return items, None
    named = "; ".join(f"{path} ({why})" for path, why in bad[:5]) + (f"; {len(bad) - 5} more" if len(bad) > 5 else "")
    if on_error == "fail":
        raise ev.UsageError(f"{len(bad)} unreadable training image(s): {named} (--on-error skip leaves them out)")
    return items, f"{len(bad)} unreadable training image(s) left out: {named}"


def check_args(args: TrainOptions) -> None:
    check_choice("mode", args.mode, ("graph", "pynative"))
    check_choice("device", args.device, ("CPU", "GPU", "Ascend"))
    check_choice("dtype", args.dtype, ("float32", "float64"))
    check_choice("amp_level", args.amp_level, ("O0", "O1", "O2", "O3"))
    check_choice("on_error", args.on_error, ("skip", "fail"))
    args.check_values()  # each number finite and in its declared range (ppt_common.training.TrainOptions)
    if args.mixup > 0 or args.cutmix > 0:
        if args.batch_size % 2:
            raise ev.UsageError(f"mixup/cutmix mix a batch with its reverse: --batch-size must be even, got "
                                f"{args.batch_size} (or --mixup 0 --cutmix 0)")
    if args.amp_level != "O0" and args.mode != "graph":
        raise ev.UsageError(f"--amp-level {args.amp_level} needs --mode graph: in MindSpore 2.10's PyNative mode "
                            "auto_mixed_precision keeps computing with the weights of before the optimizer step")
    if args.amp_level != "O0" and args.dtype != "float32":
        raise ev.UsageError("--amp-level mixes float16 into a float32 model: leave --dtype at float32")
    if args.resume and args.finetune:
        raise ev.UsageError("--resume and --finetune name two starting points: give one")
    for flag in ("resume", "finetune"):
        path = getattr(args, flag)
        if path and not is_checkpoint(path):
            raise ev.UsageError(f"--{flag}: checkpoint not found: {path}")
    if (args.resume or args.finetune) and args.pretrained:
        raise ev.UsageError("--pretrained and a checkpoint name two sources of weights: give one")


def prepare_output(args, world: World) -> Optional[str]:
    """The output folder, created and proved writable before any training; a folder holding an earlier run's
    checkpoint is refused unless that run is resumed (or --force), so nothing is overwritten by surprise."""
    out = args.output_dir
    if not out:
        if world.is_main:
            print("note: no --output_dir: no checkpoint or log will be written", file=sys.stderr)
        return None
    existing = os.path.join(out, CHECKPOINT)
    resuming = args.resume and os.path.realpath(args.resume) == os.path.realpath(existing)
    if os.path.exists(existing) and not resuming and not args.force:
        raise ev.UsageError(f"{out} already holds a run ({CHECKPOINT}): resume it with --resume {existing}, "
                            f"or choose another --output_dir (--force overwrites)")
    if os.path.exists(os.path.join(out, LOG)) and not os.path.exists(existing) and not args.force:
        raise ev.UsageError(f"{out} already holds a {LOG} (of a run that wrote no checkpoint): choose another "
                            "--output_dir, or --force to overwrite it")
    if world.is_main:
        try:
            os.makedirs(out, exist_ok=True)
            atomic_write(os.path.join(out, ".write-test"), lambda tmp: open(tmp, "w").close())
            os.remove(os.path.join(out, ".write-test"))
        except OSError as e:
            raise ev.UsageError(f"--output_dir {out}: cannot write there ({e.strerror or e})") from None
    return out


def read_log(path: str, before_epoch: int) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [row for row in (json.loads(line) for line in f if line.strip()) if row["epoch"] < before_epoch]


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def train(options: TrainOptions = None, **kwargs) -> dict:
    """Fine-tune and return the last epoch's log row; options as TrainOptions, or their names as keyword arguments:
    `train(model=..., resume=WEIGHTS, data_path=ROOT, output_dir=OUT, epochs=30)`. Writes only into output_dir.
    Under msrun every rank trains its share of each global batch; rank 0 prints and writes."""
    args = TrainOptions.of(options, **kwargs)
    check_args(args)
    cfg = ev.ppt_config(args)
    train_dir, val_dir = data_folders(args)
    (train_items, classes), (val_items, val_classes) = (list_images(train_dir, "training"),
                                                        list_images(val_dir, "validation"))
    same_classes([(train_dir, classes), (val_dir, val_classes)], "training and validation")
    num_classes = head_size(classes, args.num_classes)
    if args.limit:
        train_items, val_items = train_items[:args.limit], val_items[:args.limit]
    train_items, skipped_training = check_training_images(train_items, args.on_error, args.num_workers)

    import mindspore as ms
    from ms_ppt.context import set_context
    set_context(args.mode, args.device)
    from ms_ppt.distributed import mindspore_world
    world = mindspore_world()
    if world.size > 1:
        from mindspore.context import ParallelMode
        ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world.size)
    out = prepare_output(args, world)
    if len(train_items) < args.batch_size * world.size:
        raise ev.UsageError(f"{len(train_items)} training images cannot fill one global batch of "
                            f"{args.batch_size} x {world.size} ranks")
    ms.set_seed(args.seed)

    import ms_ppt
    from convert import CheckpointError, read_class_names
    from convert.io import CLASS_NAMES
    from ppt_common.datasets import summarize
    from ms_ppt import training as T
    from ms_ppt.data import TrainLoader, mindspore_preprocess, train_transform
    from ms_ppt.vision_transformer import params_from_numpy
    weights = args.resume or args.finetune
    try:
        model = ms_ppt.create_model(args.model, checkpoint=weights, pretrained=args.pretrained, ppt_config=cfg,
                                    dtype=args.dtype, img_size=args.img_size, drop_path_rate=args.drop_path,
                                    drop_rate=args.drop, num_classes=num_classes)
    except (CheckpointError, ValueError) as e:
        raise ev.UsageError(str(e)) from None
    stored = read_class_names(weights)
    if stored is not None and not classes.imagenet and tuple(stored) != classes.names and args.resume:
        raise ev.UsageError(f"--resume {args.resume}: {summarize(stored, 'checkpoint classes')}; "
                            f"{classes.summary('data classes')} (--finetune starts a new run from its weights)")
    optimizer = T.build_optimizer(model, tuple(args.opt_betas), args.opt_eps, args.weight_decay)
    ema = T.ModelEma(model.trainable_params(), args.model_ema_decay) if args.model_ema else None
    global_batch = args.batch_size * world.size
    identity = {"model_name": args.model, "seed": args.seed, "global_batch": global_batch}
    if not classes.imagenet:  # a dataset of its own: its class names, in label order, travel with the weights
        identity[CLASS_NAMES] = json.dumps(list(classes.names))
    start_epoch, log_rows = 0, []
    if args.resume:
        try:
            meta = T.load_training_state(args.resume, optimizer, ema)
        except CheckpointError as e:
            raise ev.UsageError(str(e)) from None
        if meta is not None:
            changed = [f"{k} {meta.get(k)} -> {v}" for k, v in identity.items() if meta.get(k) != v]
            if changed:
                raise ev.UsageError(f"--resume {args.resume}: cannot resume exactly with a different "
                                    f"{', '.join(changed)} (--finetune starts a new run from its weights)")
            start_epoch = int(meta["epoch"]) + 1
            before = json.loads(meta.get("recipe", "{}"))
            changed = [f"{k} {before[k]} -> {v}" for k, v in schedule(args).items() if k in before and before[k] != v]
            if changed and world.is_main:
                print(f"note: the resumed run had {', '.join(changed)}: its lr schedule changes from epoch "
                      f"{start_epoch} on", file=sys.stderr)
            if out:
                log_rows = read_log(os.path.join(out, LOG), start_epoch)
            if start_epoch >= args.epochs:
                if world.is_main:
                    print(f"the run in {args.resume} is finished: it trained epochs 0..{start_epoch - 1} of "
                          f"--epochs {args.epochs}; give a larger --epochs to continue it", file=sys.stderr)
                return log_rows[-1] if log_rows else {}
    model.set_train(True)
    network = model
    if args.amp_level != "O0":  # float16 matmuls; LayerNorm, softmax and PPT's scores stay float32 (as inference)
        network = ms.amp.auto_mixed_precision(model.drop_fast_kernels(), args.amp_level)
    loss_scale = args.loss_scale if args.loss_scale else (1.0 if args.amp_level == "O0" else 1024.0)
    step = T.TrainStep(T.LossCell(network, T.build_loss(args.smoothing)), optimizer, loss_scale, args.clip_grad,
                       world.size)
    eval_model = ms_ppt.create_model(args.model, ppt_config=cfg, trace=True, dtype=args.dtype, img_size=args.img_size,
                                     num_classes=num_classes)

    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        from mindcv.data.mixup import Mixup
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=0.0, num_classes=num_classes)
    transform = train_transform(args.model, args.aa, args.reprob, args.train_interpolation, args.img_size)
    loader = TrainLoader(transform, args.num_workers)
    peak = scaled_lr(args.lr, global_batch)
    schedule_text, lr_warning = describe_lr_schedule(args_recipe(args), args.lr, global_batch)
    capped = capped_r(args.arch(), cfg)
    preprocess = mindspore_preprocess(args.model, args.img_size)
    if world.is_main:
        print(f"fine-tuning {args.model} (r {cfg.r} at blocks {list(cfg.pp_loc_list)}, threshold {cfg.threshold}): "
              f"{len(train_items)} training and {len(val_items)} validation images, {classes.summary()}, head "
              f"{num_classes}, global batch {global_batch} "
              f"({world.size} x {args.batch_size}), epochs {start_epoch}..{args.epochs - 1}\n{schedule_text}",
              file=sys.stderr)
        for note in filter(None, (skipped_training, capped, lr_warning)):
            print(f"warning: {note}", file=sys.stderr)
    notes = [note for note in (skipped_training, capped, lr_warning) if note]
    run = EpochRunner(args, world, model, step, optimizer, ema, mixup, train_items, global_batch, num_classes)
    row = log_rows[-1] if log_rows else {}
    try:
        for epoch in range(start_epoch, args.epochs):
            lr = epoch_lr(epoch, peak, args_recipe(args))
            train_loss, num_steps, seconds, first_step = run.train_one_epoch(epoch, lr, loader)
            steady = (num_steps - 1, seconds - first_step) if num_steps > 1 else (num_steps, seconds)
            trained = {"epoch": epoch, "train_lr": lr, "train_loss": train_loss, "train_steps": num_steps,
                       # after the first step, which compiles the graph: reported apart
                       "train_images_per_second": steady[0] * global_batch / steady[1],
                       "train_first_step_seconds": first_step}
            if world.is_main and out:  # the trained epoch is kept before validation reads a single image
                meta = dict(identity, epoch=epoch, optimizer_steps=optimizer.num_steps,
                            recipe=json.dumps(schedule(args)))
                T.save_training_checkpoint(os.path.join(out, CHECKPOINT), model, optimizer, ema, meta)
                atomic_write(os.path.join(out, LOG), json_lines_writer(log_rows + [dict(trained, notes=notes)]))
            states = {"": {p.name: p.asnumpy() for p in model.get_parameters()}}
            if ema is not None:  # as DeiT with --model-ema: the model's and the EMA's accuracy, each epoch
                states["_ema"] = {p.name[len(T.EMA_PREFIX) + 1:]: p.asnumpy() for p in ema.ema}
            row = dict(trained)
            for suffix, state in states.items():
                params_from_numpy(eval_model, state)
                result = ev.evaluate_items(val_items, lambda x: ms_ppt.run_with_trace(eval_model, x)[:2], preprocess,
                                           args.batch_size, args.num_workers, "skip", args.quiet,
                                           f"val{suffix.replace('_', ' ')} {epoch}", world,
                                           fixed_batch=args.mode == "graph")
                metrics = result.metrics.result() if result.metrics.num_images else dict.fromkeys(
                    ("loss", "top1", "top5", "num_images"))
                row.update({f"test_loss{suffix}": metrics["loss"], f"test_acc1{suffix}": metrics["top1"],
                            f"test_acc5{suffix}": metrics["top5"]})
                if world.is_main and metrics["top1"] is not None:
                    print(f"Accuracy of the {'model EMA' if suffix else 'network'} on {result.metrics.num_images} "
                          f"test images: {metrics['top1']:.1f}%", file=sys.stderr)
            row.update({"test_images": result.metrics.num_images, "test_skipped": len(result.skipped),
                        "n_parameters": int(sum(np.prod(p.shape) for p in model.trainable_params())),
                        "notes": notes})
            log_rows.append(row)
            if world.is_main:
                print(json.dumps(row), file=sys.stderr if args.quiet else sys.stdout)
                if out:
                    atomic_write(os.path.join(out, LOG), json_lines_writer(log_rows))
    finally:
        loader.close()
    return row


class EpochRunner:
    """One epoch of training steps on this rank: the epoch's addressed draws (order, augmentation seeds, mixup,
    drop path), the compiled step, EMA, a progress bar with loss, lr and images/s."""

    def __init__(self, args, world: World, model, step, optimizer, ema, mixup, train_items, global_batch: int,
                 num_classes: int = NUM_CLASSES):
        self.args, self.world, self.step, self.optimizer, self.ema = args, world, step, optimizer, ema
        self.mixup, self.items, self.global_batch, self.num_classes = mixup, train_items, global_batch, num_classes
        self.depth, self.dtype = model.arch.depth, model.cls_token.dtype

    def train_one_epoch(self, epoch: int, lr: float, loader) -> Tuple[float, int, float]:
        """(mean loss over all ranks, steps, seconds, seconds of the first step)."""
        import mindspore as ms
        from ms_ppt.data import mix_with_mirror
        args, seed = self.args, self.args.seed
        steps = rank_steps(len(self.items), epoch, seed, args.repeated_aug, args.batch_size, self.world)
        # mixup pairs image i of the global batch with its mirror image; under msrun those live on the mirror rank,
        # whose batch this rank loads too (the same addressed augmentation), so N ranks mix as one process does
        mirror = World(self.world.size - 1 - self.world.rank, self.world.size)
        mirror_steps = rank_steps(len(self.items), epoch, seed, args.repeated_aug, args.batch_size, mirror) \
            if self.mixup is not None and mirror.rank != self.world.rank else None

        def load(indices, positions, s):
            return [(self.items[i][0], sample_seed(seed, epoch, s, int(pos))) for i, pos in zip(indices, positions)]
        jobs = [load(*step, s) + (load(*mirror_steps[s], s) if mirror_steps else [])
                for s, step in enumerate(steps)]
        bar = None
        if self.world.is_main and not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=len(steps), desc=f"epoch {epoch}", unit="step", file=sys.stderr)
        losses, start, first_step = [], time.perf_counter(), 0.0
        try:
            for s, loaded in enumerate(loader.batches(jobs)):
                indices, positions = steps[s]
                images, labels = loaded[:len(indices)], np.array([self.items[i][1] for i in indices])
                targets = one_hot(labels, self.num_classes)
                if self.mixup is not None:
                    np.random.seed(int(step_rng(seed, epoch, s, 2).integers(2 ** 31)))  # mindcv's Mixup draws here
                    mirror_images, mirror_labels = (loaded[len(indices):], np.array(
                        [self.items[i][1] for i in mirror_steps[s][0]])) if mirror_steps else (images, labels)
                    images, targets = mix_with_mirror(self.mixup, images, labels, mirror_images, mirror_labels,
                                                      self.num_classes)
                draws = None
                if args.drop_path > 0:
                    draws = ms.Tensor(drop_path_draws(seed, epoch, s, self.depth, positions, self.global_batch),
                                      ms.float32)
                loss, finite = self.step(ms.Tensor(images, self.dtype), ms.Tensor(targets, self.dtype), draws,
                                         *self.optimizer.scalars(lr))
                loss = float(loss.asnumpy())
                if not bool(finite.asnumpy()) or not math.isfinite(loss):
                    raise TrainingError(f"non-finite loss or gradient at epoch {epoch} step {s} (loss {loss}) at lr "
                                        f"{lr:.3g}: training stopped; the last checkpoint written is intact (lower "
                                        f"--lr; with --amp-level, a lower --loss-scale)")
                if self.ema is not None:
                    self.ema()
                losses.append(loss)
                if s == 0:  # the first step compiles the graph (and warms the loader): timed apart
                    first_step = time.perf_counter() - start
                if bar is not None:
                    seen = (s + 1) * self.global_batch
                    bar.update(1)
                    bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g} {seen / (time.perf_counter() - start):.1f} "
                                        "img/s", refresh=False)
        except ImageError as e:
            raise ev.UsageError(f"unreadable training image: {e}") from None
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        parts = gather_objects(self.world, (float(np.mean(losses)) if losses else float("nan"), len(losses)))
        loss = float(np.average([p[0] for p in parts], weights=[max(p[1], 1) for p in parts]))
        return loss, len(steps), seconds, first_step


def json_lines_writer(rows: List[dict]):
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return write


def schedule(args) -> dict:
    """The options that shape the lr schedule (a resumed run may change them, and is told)."""
    return {k: getattr(args, k) for k in ("epochs", "lr", "min_lr", "warmup_lr", "warmup_epochs")}


def args_recipe(args):
    return Recipe(epochs=args.epochs, lr=args.lr, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                  warmup_epochs=args.warmup_epochs)
