"""MindIR export for deployment: reload equality, real-weight top-1, and bad arguments."""
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import DEIT_TINY, ROOT, need_shared_data, run_script


def run(*args):
    return run_script("export_mindir.py", *args)


@pytest.mark.slow
def test_export_reloads_and_reproduces_the_live_cell(tmp_path):
    out = tmp_path / "ppt.mindir"
    res = run("--batch-size", "1", "--output", out)
    assert res.returncode == 0, res.stderr
    assert "max |logit difference| vs the live cell 0" in res.stdout
    assert out.stat().st_size > 10 * 2**20 and os.listdir(tmp_path) == ["ppt.mindir"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # MindSpore itself writes 0400


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50", "--batch-size", "1"], "invalid choice"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--batch-size", "2", "--output-dir-missing"], "unrecognized arguments"),
])
def test_bad_arguments_are_refused(tmp_path, args, message):
    res = run(*args, "--output", tmp_path / "x.mindir")
    assert res.returncode == 2 and message in res.stderr and not (tmp_path / "x.mindir").exists()


def test_unwritable_or_missing_output_folder_and_existing_file(tmp_path):
    res = run("--batch-size", "1", "--output", tmp_path / "missing" / "x.mindir")
    assert res.returncode == 2 and "output folder does not exist" in res.stderr
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            res = run("--batch-size", "1", "--output", locked / "x.mindir")
            assert res.returncode == 2 and "not writable" in res.stderr
    finally:
        locked.chmod(0o700)
    (tmp_path / "exists.mindir").write_bytes(b"keep")
    res = run("--batch-size", "1", "--output", tmp_path / "exists.mindir")
    assert res.returncode == 2 and "--force" in res.stderr
    assert (tmp_path / "exists.mindir").read_bytes() == b"keep"
    res = run("--batch-size", "1", "--output", tmp_path / "x.onnx")
    assert res.returncode == 2 and "must be a .mindir file" in res.stderr


@pytest.mark.slow
def test_float16_mindir_of_real_deit_tiny_keeps_top1_on_the_shared_photos(tmp_path, real_images):
    need_shared_data()
    import mindspore as ms
    import ms_ppt
    ms.set_context(mode=ms.GRAPH_MODE)
    x, labels, _ = real_images
    x, labels = x[::3], labels[::3]  # 90 photos
    out = tmp_path / "tiny_fp16.mindir"
    assert run("--checkpoint", DEIT_TINY, "--batch-size", "30", "--dtype", "float16", "--output", out,
               "--verify", "false").returncode == 0
    graph = ms.nn.GraphCell(ms.load(str(out)))
    fp16 = np.concatenate([graph(ms.Tensor(x[i:i + 30], ms.float16)).asnumpy() for i in range(0, 90, 30)])
    live = ms_ppt.create_model("deit_tiny_patch16_224", checkpoint=DEIT_TINY)
    fp32 = np.concatenate([live(ms.Tensor(x[i:i + 30])).asnumpy() for i in range(0, 90, 30)])
    top1_16, top1_32 = (100 * np.mean(lg.argmax(1) == labels) for lg in (fp16, fp32))
    assert abs(top1_16 - top1_32) <= 100 * 3 / 90  # at most 3 of 90 photos change (measured: see docs/deploy.md)
    assert np.mean(fp16.argmax(1) == fp32.argmax(1)) >= 0.95


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_export_exits_130_and_leaves_nothing(tmp_path, sig):
    """Ctrl-C used to be swallowed by MindSpore (the export finished and exited 0) and a kill left a temp folder."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "export_mindir.py"), "--batch-size", "1",
                             "--output", str(tmp_path / "x.mindir")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.listdir(tmp_path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the temporary file appears when the export itself starts
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    assert os.listdir(tmp_path) == []

