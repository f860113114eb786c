"""mindcv's own scripts run with the ppt_* models through `python -m ms_ppt.mindcv SCRIPT ARGS`, unedited. The
stand-in script does what mindcv's validate.py does: `from config import parse_args` (a file beside it), then
mindcv.create_model(model_name, num_classes, drop_rate, drop_path_rate, pretrained, checkpoint_path, ema)."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

CONFIG = '''
import argparse

def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--num_classes", type=int, default=None)
    p.add_argument("--ckpt_path", default="")
    p.add_argument("--ema", action="store_true")
    p.add_argument("--drop_rate", type=float, default=None)
    p.add_argument("--drop_path_rate", type=float, default=None)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--out")
    return p.parse_args()
'''
VALIDATE = '''
import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model

from config import parse_args  # isort: skip


def validate(args):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    network = create_model(model_name=args.model, num_classes=args.num_classes, drop_rate=args.drop_rate,
                           drop_path_rate=args.drop_path_rate, pretrained=args.pretrained,
                           checkpoint_path=args.ckpt_path, ema=args.ema)
    network.set_train(False)
    ms.amp.auto_mixed_precision(network, amp_level="O0")
    x = ms.Tensor(np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32))
    np.save(args.out, network(x).asnumpy())


if __name__ == "__main__":
    validate(parse_args())
'''


def run(tmp_path, *args, runner=True):
    (tmp_path / "mindcv").mkdir(exist_ok=True)
    (tmp_path / "mindcv" / "config.py").write_text(CONFIG)
    (tmp_path / "mindcv" / "validate.py").write_text(VALIDATE)
    cmd = [sys.executable] + (["-m", "ms_ppt.mindcv"] if runner else []) + [str(tmp_path / "mindcv" / "validate.py")]
    return subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mindcvs_validate_script_builds_a_ppt_model_from_a_training_checkpoint(tmp_path):
    import mindspore as ms
    import ms_ppt
    from ms_ppt.factory import load_checkpoint
    ms.set_seed(0)
    model = ms_ppt.create_model("deit_tiny_patch16_224", num_classes=3)
    entries = [{"name": p.name, "data": p} for p in model.get_parameters()]
    entries += [{"name": "ema." + p.name, "data": ms.Tensor(p.asnumpy() * 0.5)} for p in model.get_parameters()]
    ckpt = str(tmp_path / "run.ckpt")
    ms.save_checkpoint(entries, ckpt, append_dict={"epoch": 0})
    x = ms.Tensor(np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32))
    want = {False: model(x).asnumpy()}
    load_checkpoint(model, ckpt, ema=True)
    want[True] = model(x).asnumpy()
    common = ["--model", "ppt_deit_tiny_patch16_224", "--num_classes", 3, "--ckpt_path", ckpt]
    for ema in (False, True):
        out = tmp_path / f"logits_{ema}.npy"
        res = run(tmp_path, *common, *(["--ema"] if ema else []), "--out", out)
        assert res.returncode == 0, res.stderr[-3000:]
        np.testing.assert_allclose(np.load(out), want[ema], rtol=1e-5, atol=1e-5)
    assert np.abs(want[True] - want[False]).max() > 1e-3
    # a checkpoint path that does not exist: mindcv would build random weights; the runner's strict loading refuses
    res = run(tmp_path, "--model", "ppt_deit_tiny_patch16_224", "--ckpt_path", tmp_path / "missing.ckpt",
              "--out", tmp_path / "x.npy")
    assert res.returncode != 0 and "checkpoint not found" in res.stderr and not (tmp_path / "x.npy").exists()
    # without the runner mindcv does not know the ppt_* models: that is what the runner is for
    res = run(tmp_path, *common, "--out", tmp_path / "x.npy", runner=False)
    assert res.returncode != 0 and "Unknown model ppt_deit_tiny_patch16_224" in res.stderr


def test_the_runner_says_how_to_call_it():
    res = subprocess.run([sys.executable, "-m", "ms_ppt.mindcv"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "usage: python -m ms_ppt.mindcv" in res.stderr
    res = subprocess.run([sys.executable, "-m", "ms_ppt.mindcv", "nowhere/validate.py"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no such script: nowhere/validate.py" in res.stderr
