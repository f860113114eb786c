"""scripts/eval_ms.py and scripts/eval_pt.py end to end: outputs, agreement, and every bad input."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from conftest import DEIT_TINY, FOOLBOX, ROOT, need_shared_data, run_script
from ppt_common.config import DEMO_DATA

FAST = ["--mode", "pynative", "--throughput-runs", "0", "--quiet"]


def run(script, *args, cwd=ROOT):
    return run_script(script, *args, cwd=cwd)


@pytest.mark.slow
def test_demo_default_runs_and_writes_every_output(tmp_path):
    out, npz = tmp_path / "r.json", tmp_path / "p.npz"
    res = run("eval_ms.py", "--output-json", out, "--save-predictions", npz, "--throughput-runs", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "DEMO" in res.stdout and "RANDOM weights" in res.stdout and "--pretrained" in res.stdout
    assert "Traceback" not in res.stderr and "total_instance_count" not in res.stderr
    report = json.loads(out.read_text())
    for key in ("top1", "top5", "num_images", "gmacs", "throughput", "pooled_per_block", "config"):
        assert key in report
    assert report["num_images"] == 12 and report["throughput"] > 0 and len(report["pooled_per_block"]) == 3
    assert report["gmacs"] == pytest.approx(0.80, abs=0.005) and report["config"]["mode"] == "graph"
    pred = np.load(npz)
    assert pred["logits"].shape == (12, 1000) and pred["policies"].shape == (12, 3)
    assert list(pred["labels"][:2]) == [0, 0] and str(pred["paths"][0]).endswith(".jpg")


@pytest.mark.parametrize("args, message", [
    (["--data-path", "/nonexistent/imagenet"], "does not exist"),
    (["--checkpoint", "/nonexistent/w.pth"], "checkpoint not found"),
    (["--checkpoint", "/nonexistent/w.pth", "--pretrained"], "two sources of weights"),
    (["--output-json", "/nonexistent/dir/r.json"], "output folder does not exist"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--pp_loc_list", "3", "12"], "outside the model's blocks"),
    (["--threshold", "nan"], "threshold must be a finite number"),
    (["--r_tokens", "50", "40"], "2 values for 3 PP blocks"),
    (["--target-gmacs", "0.8", "--r_tokens", "40"], "--target-gmacs chooses r"),
    (["--target-gmacs", "0.8", "--dense"], "--target-gmacs chooses r"),
    (["--target-gmacs", "-1"], "must be positive"),
    (["--output-json", "/proc/ms_ppt_report.json"], "not writable"),
    (["--output-json", "/tmp"], "is a folder"),
    (["--output-json", "/tmp/ms_ppt_same.npz", "--save-predictions", "/tmp/ms_ppt_same"], "name the same file"),
    (["--device", "GPU"], "--device GPU: this MindSpore build"),  # not MindSpore's traceback and loader log
])
def test_bad_arguments_fail_with_a_clear_message(args, message):
    res = run("eval_ms.py", *args, *FAST)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize("method, r, gmacs", [("ppt", 50, 0.8001), ("prune_fuse", 51, 0.8002)])
def test_target_gmacs_chooses_r_and_says_how(tmp_path, method, r, gmacs):
    """prune_fuse keeps one fused token per PP block, so it needs one more r for the same budget."""
    out = tmp_path / "r.json"
    res = run("eval_ms.py", "--target-gmacs", "0.8", "--method", method, "--limit", "4", "--output-json", out,
              *FAST)
    assert res.returncode == 0, res.stderr
    named = "" if method == "ppt" else f" ({method})"
    assert f"--target-gmacs 0.8: r={r}{named} at blocks [3, 6, 9] gives {gmacs:.4f} GMACs" in res.stderr
    assert "ties to the smaller r" in res.stderr and res.stderr.count("--target-gmacs 0.8:") == 1
    report = json.loads(out.read_text())
    assert report["config"]["r_tokens"] == r and round(report["gmacs"], 4) == gmacs
    assert report["method"] == report["config"]["method"] == method
    if method == "prune_fuse":
        assert "every image prune_fuse" in res.stdout and report["pooled_per_block"] == [0, 0, 0]
        assert "method=prune_fuse" in res.stdout and "threshold=" not in res.stdout


def test_wrong_and_empty_folders_are_errors(tmp_path):
    (tmp_path / "cats").mkdir()
    res = run("eval_ms.py", "--data-path", tmp_path, *FAST)
    assert res.returncode == 2 and "class folder cats/ holds no images" in res.stderr  # a class of its own, empty
    (tmp_path / "cats").rmdir()
    (tmp_path / "n01440764").mkdir()
    res = run("eval_ms.py", "--data-path", tmp_path, *FAST)
    assert res.returncode == 2 and "hold no images" in res.stderr


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_counted_or_fails_by_option(tmp_path):
    from PIL import Image
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    Image.new("L", (300, 200), 128).save(folder / "grey.png")
    (folder / "zz_broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "r.json"
    res = run("eval_ms.py", "--data-path", tmp_path, "--output-json", out, *FAST)
    assert res.returncode == 0, res.stderr
    assert "zz_broken.JPEG" in res.stderr and "1 unreadable, skipped" in res.stdout
    assert json.loads(out.read_text())["num_images"] == 1
    out.unlink()
    res = run("eval_ms.py", "--data-path", tmp_path, "--on-error", "fail", "--output-json", out, *FAST)
    assert res.returncode == 2 and "zz_broken.JPEG" in res.stderr and not out.exists()


@pytest.mark.slow
def test_ms_and_pt_report_the_same_accuracy_on_real_weights_with_pil_preprocessing(tmp_path):
    need_shared_data()
    common = ["--checkpoint", DEIT_TINY, "--data-path", FOOLBOX, "--preprocess", "pil", "--batch-size", "10",
              "--throughput-runs", "0", "--quiet"]
    r_ms = run("eval_ms.py", *common, "--output-json", tmp_path / "ms.json")
    r_pt = run("eval_pt.py", *common, "--output-json", tmp_path / "pt.json")
    assert r_ms.returncode == 0 and r_pt.returncode == 0, r_ms.stderr + r_pt.stderr
    ms_rep, pt_rep = (json.loads((tmp_path / f).read_text()) for f in ("ms.json", "pt.json"))
    assert ms_rep["num_images"] == pt_rep["num_images"] == 20
    assert (ms_rep["top1"], ms_rep["top5"]) == (pt_rep["top1"], pt_rep["top5"])
    assert ms_rep["pooled_per_block"] == pt_rep["pooled_per_block"]
    assert ms_rep["top1"] >= 60  # real ImageNet weights on real photos


def test_bad_files_are_skipped_and_counted_and_nothing_lands_in_the_working_folder(tmp_path):
    """MindSpore's own decoder copies bad files into the working folder (abnormal_image.jpg, unsupported_image.gif)
    and dies with SIGFPE on some truncated JPEGs; the default pipeline must do neither."""
    from PIL import Image
    folder = tmp_path / "data" / "n01440764"
    folder.mkdir(parents=True)
    good = sorted(glob.glob(os.path.join(DEMO_DATA, "val", "*", "*.jpg")))[:2]
    for i, path in enumerate(good):
        shutil.copy(path, folder / f"good_{i}.JPEG")
    raw = open(good[0], "rb").read()
    lengths = [2, 3, 10, 50, 100, 200, 400, 620, 1000, 2000, len(raw) // 2, len(raw) - 10]
    for n in lengths:
        (folder / f"cut_{n:06d}.JPEG").write_bytes(raw[:n])
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "image.gif")
    Image.new("RGBA", (300, 260), (10, 200, 10, 128)).save(folder / "alpha.png")
    (folder / "notes.JPEG").write_text("not an image\n")
    work = tmp_path / "work"
    work.mkdir()
    res = run("eval_ms.py", "--data-path", tmp_path / "data", "--output-json", tmp_path / "r.json", *FAST, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    unreadable = len(lengths) + 1
    assert f"({unreadable} unreadable, skipped)" in res.stdout and "top-1" in res.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_images"] == 4 and len(report["skipped_images"]) == unreadable
    assert os.listdir(work) == []


def test_outputs_are_checked_before_the_work_and_never_overwritten_without_force(tmp_path):
    (tmp_path / "r.json").write_text("keep")
    res = run("eval_ms.py", "--output-json", tmp_path / "r.json", "--save-predictions", tmp_path / "p", *FAST)
    assert res.returncode == 2 and "--force" in res.stderr and "top-1" not in res.stdout
    assert sorted(os.listdir(tmp_path)) == ["r.json"] and (tmp_path / "r.json").read_text() == "keep"
    res = run("eval_ms.py", "--output-json", tmp_path / "q.json", "--save-predictions", "/proc/p.npz", *FAST)
    assert res.returncode == 2 and "not writable" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["r.json"]  # the writable one was not written alone
    res = run("eval_ms.py", "--output-json", tmp_path / "r.json", "--force", "--limit", "2", *FAST)
    assert res.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["num_images"] == 2


def test_a_late_write_failure_keeps_the_summary_and_writes_nothing(tmp_path, capsys):
    from ppt_cli import options
    from ppt_common import evaluation as ev
    args = options.to_options(options.build_parser("test").parse_args([
        "--output-json", str(tmp_path / "out" / "r.json"), "--save-predictions", str(tmp_path / "out" / "p.npz")]),
        ev.EvalOptions)
    (tmp_path / "out").mkdir()
    ev.check_args(args)
    metrics = ev.Metrics()
    metrics.add(np.eye(3, 1000), np.array([0, 1, 5]), ["a", "b", "c"], np.ones((3, 3)))
    os.rmdir(tmp_path / "out")  # the folder goes away during the evaluation
    with pytest.raises(ev.UsageError, match="summary above.*none was"):
        ev.finish(args, "test", metrics, [3, 6, 9], float("nan"), [], {})
    assert "top-1       66.67 %" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_what_was_adjusted_is_said_and_float64_is_saved_in_float64(tmp_path):
    out, npz = tmp_path / "r.json", tmp_path / "p.npz"
    res = run("eval_ms.py", "--data-path", DEMO_DATA, DEMO_DATA, "--r_tokens", "200", "--dtype", "float64",
              "--output-json", out, "--save-predictions", npz, *FAST)
    assert res.returncode == 0, res.stderr
    assert "12 images reached through more than one --data-path are counted once" in res.stderr
    report = json.loads(out.read_text())
    assert report["num_images"] == 12
    assert report["r_requested_per_pp_block"] == [200, 200, 200] and report["r_applied_per_pp_block"] == [98, 49, 24]
    assert "r=200 at [3, 6, 9] (capped at half the patches: [98, 49, 24])" in res.stdout
    assert np.load(npz)["logits"].dtype == np.float64


def test_a_head_that_is_not_imagenet_1k_is_refused_before_the_evaluation(tmp_path):
    import dataclasses
    import convert
    from ppt_common.config import get_arch
    arch = dataclasses.replace(get_arch("deit_tiny_patch16_224"), num_classes=10)
    rng = np.random.RandomState(0)
    state = {k: rng.randn(*shape).astype(np.float32) * 0.02 for k, shape in convert.expected_shapes(arch).items()}
    convert.write_state_dict(state, tmp_path / "ten.ckpt")
    res = run("eval_ms.py", "--checkpoint", tmp_path / "ten.ckpt", *FAST)
    assert res.returncode == 2 and "head has 10 classes" in res.stderr and "ImageNet-1k" in res.stderr
    assert "top-1" not in res.stdout


def test_evaluation_at_another_resolution_preprocesses_and_counts_the_new_tokens(tmp_path):
    from ppt_common.config import PPTConfig, model_arch
    from ppt_common.macs import gmacs
    out = tmp_path / "report.json"
    res = run("eval_ms.py", "--img-size", "256", "--limit", "2", "--output-json", out, *FAST)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["gmacs"] == pytest.approx(gmacs(model_arch("deit_tiny_patch16_224", 256), PPTConfig()), abs=1e-4)
    assert report["config"]["img_size"] == 256


@pytest.mark.parametrize("script", ["eval_ms.py", "eval_pt.py"])
def test_an_image_size_off_the_patch_grid_is_refused_in_one_line(script):
    res = run(script, "--img-size", "300", *(FAST if script == "eval_ms.py" else FAST[2:]))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith(
        "img_size 300 is not a multiple of deit_tiny_patch16_224's patch size 16")
