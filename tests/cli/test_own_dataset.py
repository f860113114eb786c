"""Your own dataset and EMA weights, as a user runs them: a fine-tune on three plainly named class folders
(cat/dog/fox, generated JPEGs) whose checkpoint stores the class names and the EMA weights; eval_ms.py names the
classes, --ema evaluates the EMA weights, ms2pt --ema converts them; a checkpoint whose classes are not the data's
is refused with both lists."""
import json
import sys

import numpy as np
import pytest

from conftest import DEIT_TINY, ROOT, run_script, need_shared_data
from ppt_common.errors import UsageError

COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "fox": (60, 60, 200)}


def class_folders(root, per_class, names=tuple(COLOURS), seed=0):
    """root/<name>/*.jpg: noisy images of one colour per class."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.array(COLOURS[name])[None, None] + rng.normal(0, 30, (80, 96, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """One epoch of 3 steps (batch 2) from an ImageNet-1k checkpoint (timm's file of a random-weight DeiT-Tiny), so
    the run puts a new 3-class head on its backbone; EMA decay 0.5 so the EMA visibly lags the weights."""
    import torch
    from ppt_common.config import get_arch
    from pt_reference.factory import build_timm_model
    tmp = tmp_path_factory.mktemp("own")
    class_folders(tmp / "data" / "train", 2)
    class_folders(tmp / "data" / "val", 1, seed=1)
    torch.manual_seed(0)
    torch.save(build_timm_model(get_arch("deit_tiny_patch16_224")).state_dict(), tmp / "imagenet.pth")
    res = run_script("train_ms.py", "--resume", tmp / "imagenet.pth", "--data-path", tmp / "data",
                     "--output_dir", tmp / "out", "--epochs", "1",
                     "--batch_size", "2", "--lr", "0.2", "--warmup-epochs", "0", "--mode", "pynative",
                     "--num_workers", "0", "--mixup", "0", "--cutmix", "0", "--no-repeated-aug", "--drop-path", "0",
                     "--model-ema-decay", "0.5", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, res


@pytest.mark.slow
def test_fine_tune_on_own_class_folders_stores_their_names_and_reports_both_accuracies(fine_tuned):
    tmp, res = fine_tuned
    assert "classes (3): cat, dog, fox, head 3" in res.stderr
    assert "the checkpoint's 1000-class head was left out; a new 3-class head is initialised" in res.stderr
    row = json.loads((tmp / "out" / "log.txt").read_text())
    assert row["train_steps"] == 3 and row["test_images"] == 3 and np.isfinite(row["train_loss"])
    for key in ("test_acc1", "test_acc1_ema", "test_loss", "test_loss_ema"):
        assert key in row, key
    assert row["test_loss"] != row["test_loss_ema"]
    assert f"Accuracy of the model EMA on 3 test images: {row['test_acc1_ema']:.1f}%" in res.stderr
    assert f"Accuracy of the network on 3 test images: {row['test_acc1']:.1f}%" in res.stderr
    import mindspore as ms
    from convert import read_class_names, read_state_dict
    ckpt = str(tmp / "out" / "checkpoint.ckpt")
    raw = ms.load_checkpoint(ckpt)
    assert json.loads(raw["class_names"]) == ["cat", "dog", "fox"] and read_class_names(ckpt) == ["cat", "dog", "fox"]
    weights, ema = read_state_dict(ckpt), read_state_dict(ckpt, ema=True)  # the names are skipped as weights
    assert weights["head.weight"].shape == (3, 192) and sorted(weights) == sorted(ema)
    assert all(np.array_equal(ema[k], raw["ema." + k].asnumpy()) for k in ema)
    assert not np.array_equal(ema["head.weight"], weights["head.weight"])  # 3 steps at decay 0.5: it lags


@pytest.mark.slow
def test_eval_names_the_classes_and_ema_evaluates_the_ema_weights(fine_tuned, tmp_path):
    tmp, _ = fine_tuned
    ckpt = tmp / "out" / "checkpoint.ckpt"
    common = ["--checkpoint", ckpt, "--data-path", tmp / "data", "--mode", "pynative", "--throughput-runs", "0",
              "--quiet"]
    plain = run_script("eval_ms.py", *common, "--save-predictions", tmp_path / "plain.npz",
                       "--output-json", tmp_path / "plain.json")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "classes (3): cat, dog, fox" in plain.stdout
    for name in COLOURS:
        assert f"    {name}  top-1 " in plain.stdout and " % of 1 images" in plain.stdout
    report = json.loads((tmp_path / "plain.json").read_text())
    assert report["classes"] == ["cat", "dog", "fox"] and [r["class"] for r in report["per_class"]] == report["classes"]
    ema = run_script("eval_ms.py", *common, "--ema", "--save-predictions", tmp_path / "ema.npz")
    assert ema.returncode == 0, ema.stderr[-3000:]
    assert "| EMA weights" in ema.stdout
    a, b = np.load(tmp_path / "plain.npz"), np.load(tmp_path / "ema.npz")
    assert a["logits"].shape == (3, 3) and list(a["labels"]) == [0, 1, 2]
    assert np.abs(a["logits"] - b["logits"]).max() > 1e-3  # other weights, other logits


@pytest.mark.slow
def test_a_checkpoint_of_other_classes_is_refused_with_both_lists(fine_tuned, tmp_path):
    tmp, _ = fine_tuned
    two = class_folders(tmp_path / "two", 1, names=("cat", "dog"))
    res = run_script("eval_ms.py", "--checkpoint", tmp / "out" / "checkpoint.ckpt", "--data-path", two,
                     "--mode", "pynative", "--quiet")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == ("error: the checkpoint's classes are not the data's: checkpoint "
                                                   "classes (3): cat, dog, fox; data classes (2): cat, dog")
    res = run_script("eval_ms.py", "--checkpoint", tmp / "out" / "checkpoint.ckpt", "--mode", "pynative", "--quiet")
    assert res.returncode == 2 and "data classes: ImageNet-1k" in res.stderr  # the demo's ImageNet folders


@pytest.mark.slow
def test_ms2pt_ema_writes_the_ema_weights_and_a_file_without_them_is_refused(fine_tuned, tmp_path):
    tmp, _ = fine_tuned
    import convert
    from convert import read_state_dict
    ckpt = str(tmp / "out" / "checkpoint.ckpt")
    import subprocess
    done = subprocess.run([sys.executable, "-m", "convert", "ms2pt", ckpt, str(tmp_path / "ema.pth"), "--ema"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ema, written = read_state_dict(ckpt, ema=True), read_state_dict(str(tmp_path / "ema.pth"))
    assert sorted(written) == sorted(ema) and all(np.array_equal(written[k], ema[k]) for k in ema)
    plain = tmp_path / "plain.ckpt"
    convert.ms2pt(ckpt, str(tmp_path / "w.pth"))
    convert.pt2ms(str(tmp_path / "w.pth"), str(plain))
    with pytest.raises(convert.CheckpointError, match="holds no EMA weights"):
        convert.ms2pt(str(plain), str(tmp_path / "x.pth"), ema=True)
    with pytest.raises(convert.CheckpointError, match="holds no EMA weights"):
        convert.ms2pt(str(tmp_path / "w.pth"), str(tmp_path / "x.pth"), ema=True)
    assert not (tmp_path / "x.pth").exists()


def test_eval_and_export_refuse_ema_without_a_training_checkpoint(tmp_path):
    import ms_ppt
    with pytest.raises(UsageError, match="--ema evaluates the EMA weights of a train_ms.py checkpoint: name it"):
        ms_ppt.evaluate(ema=True)
    with pytest.raises(UsageError, match="--ema exports the EMA weights of a train_ms.py checkpoint: name it"):
        ms_ppt.export_mindir(ema=True, batch_size=1, output=str(tmp_path / "m.mindir"))


def test_an_imagenet_checkpoint_on_own_folders_is_refused(tmp_path):
    need_shared_data()
    class_folders(tmp_path / "data", 1)
    res = run_script("eval_ms.py", "--checkpoint", DEIT_TINY, "--data-path", tmp_path / "data", "--mode",
                     "pynative", "--quiet")
    assert res.returncode == 2 and "an ImageNet-1k model (a head of 1000 classes, no class names) cannot score " \
        "folders that are not ImageNet WordNet ids (data classes (3): cat, dog, fox)" in res.stderr


def test_training_refuses_data_whose_classes_it_cannot_label(tmp_path):
    import ms_ppt
    class_folders(tmp_path / "train", 1)
    class_folders(tmp_path / "val", 1, names=("cat", "dog"))
    with pytest.raises(UsageError, match=r"training and validation folders name different classes: .*train: "
                                         r"classes \(3\): cat, dog, fox; .*val: classes \(2\): cat, dog"):
        ms_ppt.train(train_path=str(tmp_path / "train"), val_path=str(tmp_path / "val"))
    with pytest.raises(UsageError, match=r"--num-classes 2 is fewer than the data's classes \(3\)"):
        ms_ppt.train(train_path=str(tmp_path / "train"), val_path=str(tmp_path / "train"), num_classes=2)
