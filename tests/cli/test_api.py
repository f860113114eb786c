"""The library called from Python, as the README shows it: evaluation and fine-tuning take the command line's
option names as keyword arguments, return their results, raise the library's own errors and write only what they
are asked to."""
import json
import os
import subprocess
import sys

import pytest

from conftest import DEIT_TINY, FOOLBOX, IMAGENET_SAMPLE, ROOT, need_shared_data
from ppt_common.errors import PPTError, UsageError
from ppt_common.options import EvalOptions
from ppt_common.training import TrainOptions

TIMING = ("throughput", "latency_ms_per_batch", "end_to_end_throughput")


def without_timing(report):
    return {k: v for k, v in report.items() if k not in TIMING}


def test_evaluate_returns_the_report_eval_ms_writes(tmp_path, monkeypatch):
    """Same options, same report: the Python call and the script are one implementation."""
    import ms_ppt
    monkeypatch.chdir(tmp_path)
    options = dict(limit=3, batch_size=2, mode="pynative", throughput_runs=0, quiet=True)
    report = ms_ppt.evaluate(**options)
    assert os.listdir(tmp_path) == []  # nothing written that was not asked for
    assert report["num_images"] == 3 and report["demo"] and report["framework"] == "mindspore"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval_ms.py"), "--limit", "3",
                          "--batch-size", "2", "--mode", "pynative", "--throughput-runs", "0", "--quiet",
                          "--output-json", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert without_timing(json.loads((tmp_path / "r.json").read_text())) == json.loads(
        json.dumps(without_timing(report)))


def test_options_are_checked_with_errors_that_name_them():
    import ms_ppt
    import pt_reference
    with pytest.raises(UsageError, match="unknown option.*batchsize"):
        ms_ppt.evaluate(batchsize=4)
    with pytest.raises(UsageError, match="--mode must be one of graph, pynative, got 'eager'"):
        ms_ppt.evaluate(mode="eager")
    with pytest.raises(UsageError, match="--dtype must be one of"):
        pt_reference.evaluate(dtype="bfloat16")
    with pytest.raises(UsageError, match="--model must be one of"):
        ms_ppt.evaluate(model="resnet50")
    with pytest.raises(UsageError, match="data_path is a list of folders"):
        ms_ppt.evaluate(data_path="/data/imagenet")
    with pytest.raises(UsageError, match="threshold must be a finite number"):
        ms_ppt.evaluate(threshold=float("nan"), limit=1)
    with pytest.raises(PPTError, match="--batch-size must be positive"):
        ms_ppt.train(batch_size=0, data_path="/nowhere")
    with pytest.raises(UsageError, match="--amp-level must be one of"):
        ms_ppt.train(amp_level="O4")


def test_options_dataclasses_copy_and_replace():
    base = EvalOptions(model="deit_small_patch16_224", r_tokens=[50])
    changed = EvalOptions.of(base, batch_size=8)
    assert (changed.model, changed.r_tokens, changed.batch_size, base.batch_size) == (
        "deit_small_patch16_224", [50], 8, 32)
    assert TrainOptions().threshold == 6e-5 and TrainOptions().lr == 1e-5  # the authors' fine-tuning values


@pytest.mark.slow
def test_train_from_python_writes_only_into_its_output_dir(tmp_path, monkeypatch):
    need_shared_data()
    import ms_ppt
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    row = ms_ppt.train(model="deit_tiny_patch16_224", resume=DEIT_TINY,
                       train_path=os.path.join(IMAGENET_SAMPLE, "val"), val_path=os.path.join(FOOLBOX, "val"),
                       output_dir=str(out), epochs=1, limit=4, batch_size=2, mode="pynative", num_workers=0,
                       quiet=True)
    assert row["epoch"] == 0 and row["train_steps"] == 2 and row["test_images"] == 4
    assert sorted(os.listdir(tmp_path)) == ["run"] and sorted(os.listdir(out)) == ["checkpoint.ckpt", "log.txt"]
    assert json.loads((out / "log.txt").read_text())["test_acc1"] == row["test_acc1"]


def test_a_sweep_from_python_returns_its_rows_and_writes_its_three_files(tmp_path, monkeypatch):
    import ms_ppt
    monkeypatch.chdir(tmp_path)
    done = ms_ppt.run_sweep(output=str(tmp_path / "s"), r_values=[16], pp_loc_lists=[(3, 6, 9)], limit=2,
                            batch_size=2, mode="pynative", quiet=True)
    assert [row["setting"] for row in done["rows"]] == ["dense", "r=16 pp=3 6 9 threshold=7e-05"]
    assert done["rows"][1]["gmacs"] < done["rows"][0]["gmacs"] and done["config"]["num_images"] == 2
    assert sorted(os.listdir(tmp_path)) == ["s.csv", "s.json", "s.png"]
    with pytest.raises(UsageError, match="--output names the sweep's files"):
        ms_ppt.run_sweep(limit=2)


@pytest.mark.slow
def test_export_from_python_reports_the_file_and_its_reload(tmp_path):
    import ms_ppt
    done = ms_ppt.export_mindir(output=str(tmp_path / "m.mindir"), batch_size=1, r_tokens=[16])
    assert done["input_shape"] == [1, 3, 224, 224] and done["mib"] > 1 and done["max_logit_diff"] < 1e-4
    assert os.listdir(tmp_path) == ["m.mindir"]
    with pytest.raises(UsageError, match="--batch-size must be positive"):
        ms_ppt.export_mindir(output=str(tmp_path / "n.mindir"))


@pytest.mark.parametrize("call, options, message", [
    ("train", dict(lr=float("nan")), "--lr must be a finite number, got nan"),
    ("train", dict(smoothing=1.5), "--smoothing must be in [0, 1), got 1.5"),
    ("train", dict(warmup_epochs=-1), "--warmup-epochs must be >= 0, got -1"),
    ("train", dict(limit=-24), "--limit must be positive, got -24"),
    ("train", dict(mixup_prob=2.0), "--mixup-prob must be in [0, 1], got 2.0"),
    ("train", dict(model_ema_decay=1.5), "--model-ema-decay must be in [0, 1], got 1.5"),
    ("train", dict(opt_betas=(0.9, 1.0)), r"--opt-betas must be in [0, 1), got [0.9, 1.0]"),
    ("train", dict(drop_path=float("inf")), "--drop-path must be a finite number, got inf"),
    ("train", dict(seed=-1), "--seed must be in [0, 4294967295], got -1"),
    ("evaluate", dict(throughput_runs=-1), "--throughput-runs must be >= 0, got -1"),
    ("evaluate", dict(target_gmacs=float("nan")), "--target-gmacs must be a finite number, got nan"),
    ("evaluate", dict(r_tokens=[16, -1, 16]), r"--r-tokens must be >= 0, got [16, -1, 16]"),
    ("run_sweep", dict(output="s", thresholds=[7e-5, float("nan")]), r"--thresholds must be a finite number, got nan"),
    ("export_mindir", dict(output="m.mindir", batch_size=1, threshold=-1.0), "--threshold must be >= 0, got -1.0"),
])
def test_every_number_is_checked_before_any_work(call, options, message, tmp_path, monkeypatch):
    """Values argparse accepts but no run can use are refused by the library, naming the option, before any image
    is read or any file written (#30: --lr nan used to write a NaN checkpoint and exit 0)."""
    import ms_ppt
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as err:
        getattr(ms_ppt, call)(**options)
    assert str(err.value) == message
    assert os.listdir(tmp_path) == []
