"""scripts/train_ms.py end to end on the real DeiT-Tiny and the shared photos: exact resume, msrun data parallel
equal to one process, and every bad input refused before training with the earlier run left intact."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEIT_TINY, FOOLBOX, IMAGENET_SAMPLE, ROOT, free_port, need_shared_data

SCRIPT = os.path.join(ROOT, "scripts", "train_ms.py")
DATA = ["--train-path", os.path.join(IMAGENET_SAMPLE, "val"), "--val-path", os.path.join(FOOLBOX, "val")]


def train(out, *args, launcher=None, cwd=None, compile_cache=None):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": ROOT}
    if compile_cache:  # MindSpore's graph cache: later runs skip compilation (and must still agree bit for bit)
        env.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=str(compile_cache))
    cmd = [sys.executable, SCRIPT]
    if launcher == "msrun":
        cmd = [os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2", "--local_worker_num=2",
               f"--master_port={free_port()}", f"--log_dir={out}-logs", "--join=True", SCRIPT]
    return subprocess.run(cmd + [str(a) for a in (*DATA, "--output_dir", out, "--quiet", *args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def checkpoint(path):
    import mindspore as ms
    return {k: (v.asnumpy() if hasattr(v, "asnumpy") else v) for k, v in ms.load_checkpoint(str(path)).items()}


def log_rows(out):
    rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    for row in rows:  # timings differ from run to run
        row.pop("train_images_per_second")
        assert row.pop("train_first_step_seconds") > 0  # compilation, reported apart from the steady rate
    return rows


@pytest.mark.slow
def test_one_epoch_then_resume_equals_two_epochs_bit_for_bit(tmp_path):
    """The recipe's random elements all on (RandAugment, random erasing, mixup/cutmix, drop path, repeated
    augmentation): 2 epochs in one run, or 1 epoch then --resume for the second, give identical weights, EMA,
    Adam moments and log, whether images are augmented in 2 worker processes or in the main one. A resumed run
    that diverges (an absurd lr) stops with exit code 1 and leaves the last checkpoint and log as they were."""
    need_shared_data()
    # GRAPH_MODE: PyNative's CPU backward is not bit-reproducible from run to run (measured: ~1e-9 in the
    # gradients of a batch that pools), so a PyNative resume matches to float32 noise only
    common = ["--model", "deit_tiny_patch16_224", "--limit", "8", "--batch_size", "4", "--lr", "1e-3"]
    cache = tmp_path / "compile-cache"
    whole = train(tmp_path / "whole", *common, "--resume", DEIT_TINY, "--epochs", "2", "--num_workers", "2",
                  compile_cache=cache)  # compiles and fills the cache; the split runs load from it
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "Exception ignored" not in whole.stderr  # #30 case 9: worker pools end quietly at exit
    first = train(tmp_path / "split", *common, "--resume", DEIT_TINY, "--epochs", "1", "--num_workers", "0",
                  compile_cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    after_one = checkpoint(tmp_path / "split" / "checkpoint.ckpt")
    saved = (tmp_path / "split" / "checkpoint.ckpt").read_bytes()
    diverging = train(tmp_path / "split", *common, "--resume", tmp_path / "split" / "checkpoint.ckpt", "--epochs", "2",
                      "--num_workers", "0", "--warmup-epochs", "0", "--lr", "1e30", "--mode", "pynative")
    assert diverging.returncode == 1 and "non-finite loss or gradient at epoch 1" in diverging.stderr, \
        diverging.stderr[-3000:]
    assert (tmp_path / "split" / "checkpoint.ckpt").read_bytes() == saved  # the last good epoch is intact
    assert len((tmp_path / "split" / "log.txt").read_text().splitlines()) == 1
    second = train(tmp_path / "split", *common, "--resume", tmp_path / "split" / "checkpoint.ckpt", "--epochs", "2",
                   "--num_workers", "0", compile_cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    want, got = checkpoint(tmp_path / "whole" / "checkpoint.ckpt"), checkpoint(tmp_path / "split" / "checkpoint.ckpt")
    assert sorted(got) == sorted(want)
    assert {"ema.head.weight", "adam_m.head.weight", "adam_v.head.weight", "epoch"} <= set(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert int(got["epoch"]) == 1 and int(got["optimizer_steps"]) == 4
    assert not np.array_equal(after_one["head.weight"], got["head.weight"])  # the second epoch did train
    split, whole_rows = log_rows(tmp_path / "split"), log_rows(tmp_path / "whole")
    for row, want_row in zip(split, whole_rows):  # the logged loss is a threaded float32 sum: last bits vary
        assert row.pop("train_loss") == pytest.approx(want_row.pop("train_loss"), rel=1e-6)
    assert split == whole_rows
    assert [r["epoch"] for r in whole_rows] == [0, 1]
    import ms_ppt  # the training checkpoint is also plain weights (and EMA weights) for every tool
    from ms_ppt.factory import load_checkpoint
    model = ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=str(tmp_path / "whole" / "checkpoint.ckpt"))
    np.testing.assert_array_equal(model.head.weight.asnumpy(), want["head.weight"])
    load_checkpoint(model, str(tmp_path / "whole" / "checkpoint.ckpt"), ema=True)
    np.testing.assert_array_equal(model.head.weight.asnumpy(), want["ema.head.weight"])


@pytest.mark.slow
def test_msrun_two_workers_train_as_one_process_with_the_global_batch(tmp_path):
    """2 ranks x batch 4 against 1 process x batch 8, 2 steps, with the default recipe (mixup and cutmix on: each
    rank mixes with the global batch's mirror images, from the mirror rank's batch): the same images with the same
    augmentation, mixing and drop-path draws reach the same weights up to float32 summation order, and validation
    counts summed over ranks equal the single process's. Only rank 0 writes. The same msrun run again (PyNative,
    PPT pooling) gives the same bits.

    The keys' rows of qkv are the exception, in any framework: softmax ignores a shift of the keys, so the key
    bias's gradient is zero up to rounding, and so is the key weights' along 1/gamma of the LayerNorm before them
    (that direction gives every token's key the same shift: the normalised tokens sum to zero); Adam turns that
    noise into steps of +-lr, so these rows can differ by 2 x lr per step."""
    need_shared_data()
    if shutil.which("msrun", path=os.path.dirname(sys.executable)) is None:
        pytest.fail("msrun is not installed beside this Python (it comes with mindspore)")
    common = ["--model", "deit_tiny_patch16_224", "--resume", DEIT_TINY, "--limit", "16", "--epochs", "1",
              "--num_workers", "1", "--mode", "pynative"]
    work = tmp_path / "work"
    work.mkdir()
    single = train(tmp_path / "single", *common, "--batch_size", "8", cwd=work)
    assert single.returncode == 0, single.stderr[-3000:]
    parallel = train(tmp_path / "parallel", *common, "--batch_size", "4", launcher="msrun", cwd=work)
    logs = "".join(p.read_text()[-2000:] for p in sorted((tmp_path / "parallel-logs").glob("*.log")))
    assert parallel.returncode == 0, parallel.stderr[-3000:] + logs
    want, got = checkpoint(tmp_path / "single" / "checkpoint.ckpt"), checkpoint(tmp_path / "parallel" / "checkpoint.ckpt")
    again = train(tmp_path / "again", *common, "--batch_size", "4", launcher="msrun", cwd=work)
    assert again.returncode == 0, again.stderr[-3000:]
    repeated = checkpoint(tmp_path / "again" / "checkpoint.ckpt")
    for name in got:  # the same msrun run twice: the same bits (weights, EMA, Adam moments)
        if hasattr(got[name], "dtype"):
            np.testing.assert_array_equal(repeated[name], got[name], err_msg=name)
    weights = [k for k in want if not k.startswith(("adam_", "ema.")) and getattr(want[k], "dtype", None) == np.float32]
    diffs = {k: np.abs(got[k].astype(np.float64) - want[k]) for k in weights}
    dim = 192
    keys = [k for k in weights if k.endswith(("attn.qkv.bias", "attn.qkv.weight"))]
    key_rows = max(float(diffs[k][dim:2 * dim].max()) for k in keys)
    for k in keys:
        diffs[k][dim:2 * dim] = 0
    worst_name = max(diffs, key=lambda k: float(diffs[k].max()))
    worst = float(diffs[worst_name].max())
    lr = 1e-6  # epoch 0 runs at the warm-up lr
    print(f"msrun vs one process: worst weight difference {worst:.3g} ({worst_name}), key rows {key_rows:.3g}")
    assert worst <= 1e-6 and key_rows <= 2 * lr * 2, (worst, key_rows)
    a, b = log_rows(tmp_path / "single"), log_rows(tmp_path / "parallel")
    for key in ("train_steps", "test_acc1", "test_acc5", "test_images"):
        assert a[0][key] == b[0][key], key
    assert a[0]["train_steps"] == 2 and abs(a[0]["train_loss"] - b[0]["train_loss"]) < 1e-5
    assert sorted(os.listdir(tmp_path / "parallel")) == ["checkpoint.ckpt", "log.txt"] and os.listdir(work) == []


@pytest.mark.parametrize("args, message", [
    ([], "name the data"),
    (["--train-path", "/nonexistent/train", "--val-path", DATA[3]], "training data: data path does not exist"),
    (["--train-path", IMAGENET_SAMPLE, "--val-path", DATA[3]],  # a root holding val/: used as named, never its val/
     f"training data: {IMAGENET_SAMPLE} holds val/ rather than class folders: name {IMAGENET_SAMPLE}/val itself"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),  # once wrote a NaN checkpoint and exited 0
    (["--limit=-24"], "--limit must be positive, got -24"),  # once failed with a traceback after an epoch
    (["--smoothing", "1.5"], "--smoothing must be in [0, 1), got 1.5"),
    (["--device", "Ascend"], "this MindSpore build"),
    (["--batch_size", "3"], "--batch-size must be even"),
    (["--resume", "/nonexistent.pth"], "checkpoint not found"),
    (["--resume", DEIT_TINY, "--finetune", DEIT_TINY], "two starting points"),
    (["--model", "deit_small_patch16_224", "--resume", DEIT_TINY], "deit_tiny_patch16_224"),
])
def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(args, message, tmp_path):
    need_shared_data()
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, "--output_dir", str(out), "--quiet", "--limit", "8", "--batch_size", "4"]
    if not any(a in args for a in ("--train-path",)) and args != []:
        cmd += DATA
    res = subprocess.run(cmd + [str(a) for a in args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or os.listdir(out) == []
    assert sorted(os.listdir(tmp_path)) == ["out"] if out.exists() else os.listdir(tmp_path) == []


@pytest.mark.slow
def test_an_earlier_run_is_neither_overwritten_nor_resumed_inexactly(tmp_path):
    """A folder holding a run is refused for a new one; resuming with another global batch or seed is refused
    (it could not repeat the run); an unwritable output folder is refused before training. The checkpoint is
    untouched by all of them."""
    need_shared_data()
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.ckpt").write_bytes(b"an earlier run")
    res = subprocess.run([sys.executable, SCRIPT, *DATA, "--output_dir", str(out), "--resume", DEIT_TINY, "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "already holds a run" in res.stderr, res.stderr[-2000:]
    assert (out / "checkpoint.ckpt").read_bytes() == b"an earlier run"
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = subprocess.run([sys.executable, SCRIPT, *DATA, "--output_dir", str(blocker / "sub"), "--resume", DEIT_TINY,
                          "--quiet", "--limit", "8", "--batch_size", "4"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "cannot write there" in res.stderr, res.stderr[-2000:]
    import ms_ppt
    from ms_ppt import training
    model = ms_ppt.create_model("deit_tiny_patch16_224")
    saved = tmp_path / "saved" / "checkpoint.ckpt"
    saved.parent.mkdir()
    training.save_training_checkpoint(str(saved), model, training.build_optimizer(model), None,
                                      {"epoch": 0, "optimizer_steps": 2, "seed": 0, "global_batch": 8,
                                       "model_name": "deit_tiny_patch16_224"})
    before = saved.read_bytes()
    res = subprocess.run([sys.executable, SCRIPT, *DATA, "--output_dir", str(saved.parent), "--resume", str(saved),
                          "--quiet", "--limit", "8", "--batch_size", "4", "--no-model-ema"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "global_batch 8 -> 4" in res.stderr, res.stderr[-2000:]
    assert saved.read_bytes() == before and sorted(os.listdir(saved.parent)) == ["checkpoint.ckpt"]
    res = subprocess.run([sys.executable, SCRIPT, *DATA, "--output_dir", str(saved.parent), "--resume", str(saved),
                          "--quiet", "--limit", "8", "--batch_size", "8", "--no-model-ema", "--epochs", "1"],
                         capture_output=True, text=True, timeout=600)  # epoch 0 of 1 done: nothing to train
    assert res.returncode == 0 and "is finished: it trained epochs 0..0 of --epochs 1" in res.stderr, res.stderr
    assert "epochs 1..0" not in res.stderr and saved.read_bytes() == before


def test_a_folder_holding_only_a_log_is_not_overwritten(tmp_path):
    need_shared_data()
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text('{"epoch": 0}\n')
    res = train(out, "--limit", "8", "--batch_size", "4")
    assert res.returncode == 2 and "already holds a log.txt" in res.stderr, res.stderr[-2000:]
    assert (out / "log.txt").read_text() == '{"epoch": 0}\n' and os.listdir(out) == ["log.txt"]


def photo_folder(folder, source, count, bad=()):
    """`count` shared photos copied into class folders under `folder`, plus bad files named 0_<name> (sorted
    first) with the given bytes: (name, bytes) pairs."""
    from ppt_common.datasets import find_images
    items = find_images(source, split="val")[0][:count]
    for path, _ in items:
        (folder / os.path.basename(os.path.dirname(path))).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / os.path.basename(os.path.dirname(path)))
    first = folder / os.path.basename(os.path.dirname(items[0][0]))
    for name, data in bad:
        (first / f"0_{name}").write_bytes(data(open(items[0][0], "rb").read()))
    return folder


TRUNCATED = ("truncated.jpg", lambda jpeg: jpeg[:len(jpeg) // 2])
GARBAGE = ("garbage.jpg", lambda _: b"not an image")


@pytest.mark.slow
def test_bad_images_are_found_before_training_and_skipped_and_counted_and_the_trained_epoch_kept(tmp_path):
    """A bad training image used to end the run when drawn, mid-epoch (or never, if never drawn), and a truncated
    validation photo after the epoch trained and before its checkpoint was written (#30 cases 6 and 7). Now every
    training file is checked before the first step, bad ones named and left out; the epoch's checkpoint is written
    before validation, which skips and counts a bad photo as evaluation does."""
    need_shared_data()
    photo_folder(tmp_path / "train", IMAGENET_SAMPLE, 4, bad=[TRUNCATED, GARBAGE])
    photo_folder(tmp_path / "val", FOOLBOX, 3, bad=[TRUNCATED])
    res = train(tmp_path / "out", "--model", "deit_tiny_patch16_224", "--resume", DEIT_TINY, "--epochs", "1",
                "--batch_size", "2", "--mode", "pynative", "--num_workers", "0",
                "--train-path", tmp_path / "train", "--val-path", tmp_path / "val")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Exception ignored" not in res.stderr
    assert "warning: 2 unreadable training image(s) left out: " in res.stderr
    assert "0_garbage.jpg (UnidentifiedImageError" in res.stderr and "0_truncated.jpg (truncated JPEG" in res.stderr
    assert "warning: skipped" in res.stderr and "val/" in res.stderr
    row = json.loads((tmp_path / "out" / "log.txt").read_text())
    assert row["epoch"] == 0 and row["train_steps"] == 2 and row["test_images"] == 3 and row["test_skipped"] == 1
    assert any("2 unreadable training image(s)" in note for note in row["notes"])
    assert int(checkpoint(tmp_path / "out" / "checkpoint.ckpt")["epoch"]) == 0


def test_with_on_error_fail_bad_training_images_are_refused_before_any_work(tmp_path):
    need_shared_data()
    photo_folder(tmp_path / "train", IMAGENET_SAMPLE, 2, bad=[GARBAGE])
    out = tmp_path / "out"
    res = train(out, "--train-path", tmp_path / "train", "--on-error", "fail", "--batch_size", "2")
    assert res.returncode == 2 and "1 unreadable training image(s): " in res.stderr and "0_garbage.jpg" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_an_interruption_before_the_first_checkpoint_says_none_was_written(tmp_path):
    """#30 case 10: Ctrl-C before the first epoch ended used to claim 'the last checkpoint written is intact'."""
    import signal
    import time
    need_shared_data()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, SCRIPT, *DATA, "--output_dir", str(out), "--limit", "8",
                             "--batch_size", "4", "--resume", DEIT_TINY], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not out.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the output folder is made just before the model is built
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted: no checkpoint was written" in err, err[-2000:]
    assert os.listdir(out) == []
