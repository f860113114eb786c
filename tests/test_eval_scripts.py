"""scripts/eval_ms.py and scripts/eval_pt.py end to end: outputs, agreement, and every bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEIT_TINY, FOOLBOX, ROOT, need_shared_data

FAST = ["--mode", "pynative", "--throughput-runs", "0", "--quiet"]


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_demo_default_runs_and_writes_every_output(tmp_path):
    out, npz = tmp_path / "r.json", tmp_path / "p.npz"
    res = run("eval_ms.py", "--output-json", out, "--save-predictions", npz, "--throughput-runs", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "DEMO" in res.stdout and "RANDOM weights" in res.stdout
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
    (["--output-json", "/nonexistent/dir/r.json"], "output folder does not exist"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--pp_loc_list", "3", "12"], "outside the model's blocks"),
])
def test_bad_arguments_fail_with_a_clear_message(args, message):
    res = run("eval_ms.py", *args, *FAST)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_and_empty_folders_are_errors(tmp_path):
    (tmp_path / "cats").mkdir()
    res = run("eval_ms.py", "--data-path", tmp_path, *FAST)
    assert res.returncode == 2 and "not ImageNet WordNet ids" in res.stderr
    (tmp_path / "cats").rmdir()
    (tmp_path / "n01440764").mkdir()
    res = run("eval_ms.py", "--data-path", tmp_path, *FAST)
    assert res.returncode == 2 and "hold no images" in res.stderr


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
