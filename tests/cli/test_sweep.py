"""scripts/sweep.py as a user runs it: each row is eval_ms.py's report for that setting; a sweep resumes."""
import json
import shutil

import pytest

from conftest import run_script as run
from ppt_common.sweep import calibrate

FAST = ["--mode", "pynative", "--quiet"]


def rows_of(prefix):
    return json.loads((prefix.parent / (prefix.name + ".json")).read_text())["rows"]


@pytest.mark.slow
def test_rows_equal_eval_ms_and_a_resumed_sweep_evaluates_only_what_is_missing(tmp_path):
    prefix = tmp_path / "demo"
    res = run("sweep.py", "--r-values", 50, "--thresholds", 0, 7e-5, "--output", prefix, *FAST)
    assert res.returncode == 0, res.stderr
    rows = rows_of(prefix)
    assert [r["setting"] for r in rows] == ["dense", "r=50 pp=3 6 9 threshold=0", "r=50 pp=3 6 9 threshold=7e-05"]
    assert rows[1]["pooled_per_block"] == [0, 0, 0]  # threshold 0: every image prunes
    assert round(rows[2]["gmacs"], 4) == 0.8001 and rows[0]["threshold"] is None

    report = tmp_path / "eval.json"
    res = run("eval_ms.py", "--r_tokens", 50, "--threshold", 7e-5, "--throughput-runs", 0, "--output-json", report,
              *FAST)
    assert res.returncode == 0, res.stderr
    expected = json.loads(report.read_text())
    for key in ("top1", "top5", "num_images", "gmacs"):
        assert rows[2][key] == expected[key], key
    # PyNative CPU logits move by ~1e-7 run to run (docs/training.md); GRAPH_MODE rows are bit-equal (docs/sweeps.md)
    assert rows[2]["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert rows[2]["pooled_per_block"] == expected["pooled_per_block"]

    # extended with another grid: r=20 and a second method; the r=50 rows stay
    res = run("sweep.py", "--r-values", 20, "--thresholds", 0, 7e-5, "--methods", "ppt", "decouple_merge",
              "--output", prefix, "--resume-sweep", "--mode", "pynative", "--calibrate")
    assert res.returncode == 0, res.stderr
    assert "resuming: 1 of 4 settings" in res.stderr and "its 2 other rows are kept" in res.stderr
    assert res.stderr.count("] r=20") == 2 and "dense:" not in res.stderr and "r=50" not in res.stderr
    rows = rows_of(prefix)
    assert [(r["method"], r["r_tokens"]) for r in rows] == [(None, 0), ("ppt", 20), ("ppt", 20),
                                                            ("decouple_merge", 20), ("ppt", 50), ("ppt", 50)]
    assert rows[3]["setting"] == "decouple_merge r=20 pp=3 6 9" and rows[3]["threshold"] is None
    assert round(rows[3]["gmacs"], 4) == 1.0638 and rows[3]["pooled_per_block"] == [0, 0, 0]
    table = json.loads((tmp_path / "demo.json").read_text())
    assert [c["r_tokens"] for c in table["calibration"]] == [20, 50]  # PPT's thresholds only
    assert res.stdout.count("calibrated threshold for r=") == 2 and "next best" in res.stdout
    assert (tmp_path / "demo.csv").read_text().splitlines()[0].startswith("setting,method,r_tokens,pp_loc_list,threshold")
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--pp-loc-lists", "3 x"], "integers such as '3 6 9'"),
    (["--pp-loc-lists", "3 12"], "outside the model's blocks"),
    (["--r-values", "-5"], "--r-values must be >= 0"),
    (["--batch-size", "0"], "must be positive"),
])
def test_bad_grids_are_refused_before_any_work(tmp_path, args, message):
    res = run("sweep.py", "--output", tmp_path / "s", *args, *FAST)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # refusals to resume: the quick tier has test_a_resumed_sweep_is_keyed_by_the_weights_not_their_path
def test_an_existing_sweep_is_neither_overwritten_nor_resumed_unasked(tmp_path):
    (tmp_path / "s.json").write_text("{}")
    res = run("sweep.py", "--output", tmp_path / "s", *FAST)
    assert res.returncode == 2 and "--resume-sweep continues that sweep, --force replaces it" in res.stderr
    res = run("sweep.py", "--output", tmp_path / "s", "--resume-sweep", *FAST)
    assert res.returncode == 2 and "not a sweep table" in res.stderr
    assert (tmp_path / "s.json").read_text() == "{}"


def test_a_sweep_is_extended_only_with_the_same_model_images_and_options(tmp_path):
    table = {"rows": [], "config": {"model": "deit_small_patch16_224", "mode": "pynative"}}
    (tmp_path / "s.json").write_text(json.dumps(table))
    res = run("sweep.py", "--output", tmp_path / "s", "--resume-sweep", *FAST)
    assert res.returncode == 2, res.stderr
    assert "measured differently (model: 'deit_small_patch16_224' there, 'deit_tiny_patch16_224' now)" in res.stderr
    assert json.loads((tmp_path / "s.json").read_text()) == table


def test_calibration_takes_the_best_top1_then_the_lower_loss_and_states_its_margin():
    def row(threshold, top1, loss, r=50):
        return {"r_tokens": r, "pp_loc_list": [3, 6, 9], "threshold": threshold, "top1": top1, "loss": loss,
                "num_images": 200}
    rows = [{"r_tokens": 0, "pp_loc_list": [], "threshold": None, "top1": 90.0, "loss": 0.5, "num_images": 200},
            row(0.0, 80.0, 1.0), row(7e-5, 85.0, 0.90), row(1.0, 85.0, 0.95), row(3e-5, 84.0, 0.80),
            row(7e-5, 70.0, 1.0, r=60)]  # a single threshold for r=60: nothing to choose
    (choice,) = calibrate(rows)
    assert choice["threshold"] == 7e-5 and choice["next_threshold"] == 1.0  # equal top-1: the lower loss wins
    assert choice["margin_images"] == 0 and choice["margin_loss"] == pytest.approx(0.05)
    rows[3]["top1"] = 83.0
    (choice,) = calibrate(rows)
    assert choice["next_threshold"] == 3e-5 and choice["margin_images"] == 2  # 1 point of 200 images


def test_a_resumed_sweep_is_keyed_by_the_weights_not_their_path(tmp_path):
    """#30 case 3: replacing the checkpoint file at the same path used to mix two models' rows in one table. The
    table records the tensors' sha256: other weights at the same path are refused, the same weights moved are
    resumed, and the resumed rows are named."""
    import mindspore as ms
    import ms_ppt
    files = {}
    for seed in (1, 2):
        ms.set_seed(seed)
        files[seed] = str(tmp_path / f"w{seed}.ckpt")
        ms.save_checkpoint(ms_ppt.create_model("deit_tiny_patch16_224"), files[seed])
    weights = str(tmp_path / "w.ckpt")
    shutil.copy(files[1], weights)
    common = ["--output", tmp_path / "s", "--r-values", 16, "--limit", 2, "--batch-size", 2, *FAST]
    assert run("sweep.py", "--checkpoint", weights, *common).returncode == 0
    table = (tmp_path / "s.json").read_text()
    shutil.copy(files[2], weights)  # another model at the same path
    res = run("sweep.py", "--checkpoint", weights, "--resume-sweep", *common)
    assert res.returncode == 2 and "measured differently (weights_sha256:" in res.stderr, res.stderr
    assert (tmp_path / "s.json").read_text() == table
    res = run("sweep.py", "--checkpoint", files[1], "--resume-sweep", *common)  # the first model, moved
    assert res.returncode == 0, res.stderr
    assert "resuming: 2 of 2 settings" in res.stderr and "reused: dense; r=16 pp=3 6 9 threshold=7e-05" in res.stderr
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == json.loads(table)["rows"]


@pytest.mark.slow  # refusals to resume: the quick tier has test_a_resumed_sweep_is_keyed_by_the_weights_not_their_path
def test_a_table_without_the_weights_hash_is_not_resumed(tmp_path):
    assert run("sweep.py", "--output", tmp_path / "s", "--limit", 1, "--batch-size", 1, *FAST).returncode == 0
    table = json.loads((tmp_path / "s.json").read_text())
    del table["config"]["weights_sha256"]
    (tmp_path / "s.json").write_text(json.dumps(table))
    res = run("sweep.py", "--output", tmp_path / "s", "--limit", 1, "--batch-size", 1, "--resume-sweep", *FAST)
    assert res.returncode == 2 and "does not record which weights" in res.stderr


def test_output_names_a_prefix_and_its_errors_say_what_to_do(tmp_path):
    """#30 cases 10 and 11: a folder as --output used to write hidden .json/.csv/.png files in it, res.json became
    res.json.json, and a missing folder was answered with advice about --force."""
    res = run("sweep.py", "--output", str(tmp_path) + "/", *FAST)
    assert res.returncode == 2 and "is a path prefix such as" in res.stderr and list(tmp_path.iterdir()) == []
    res = run("sweep.py", "--output", tmp_path / "missing" / "s", *FAST)
    assert res.returncode == 2 and "output folder does not exist" in res.stderr and "--force" not in res.stderr
    res = run("sweep.py", "--output", tmp_path / "res.json", "--r-values", 16, "--limit", 1, "--batch-size", 1, *FAST)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.csv", "res.json", "res.png"]


@pytest.mark.slow
def test_schedule_files_are_settings_keyed_by_content_with_kl_from_dense(tmp_path):
    from ppt_common.schedule import make_schedule, save_schedule
    tiny = "deit_tiny_patch16_224"
    uniform, searched = str(tmp_path / "uniform.json"), str(tmp_path / "searched.json")
    save_schedule(uniform, make_schedule(tiny, [(3, 50, 7e-5), (6, 50, 7e-5), (9, 48, 7e-5)]))  # r=50 as it runs
    save_schedule(searched, make_schedule(tiny, [(2, 30, 1.0), (5, 20, 0.0), (8, 25, 7e-5)]))
    shutil.copy(searched, tmp_path / "again.json")  # the same schedule under another name: one row
    prefix = tmp_path / "s"
    res = run("sweep.py", "--r-values", 50, "--schedules", uniform, searched, tmp_path / "again.json",
              "--output", prefix, "--limit", 4, "--batch-size", 4, *FAST)
    assert res.returncode == 0, res.stderr
    dense, grid_row, as_file, other = rows_of(prefix)
    assert as_file["setting"] == "schedule 3:50@7e-05 6:50@7e-05 9:48@7e-05" and as_file["schedule"] == uniform
    assert other["setting"] == "schedule 2:30@1 5:20@0 8:25@7e-05" and other["schedule"] == searched
    assert other["r_tokens"] == [30, 20, 25] and other["threshold"] == [1.0, 0.0, 7e-5]
    assert other["gmacs"] == pytest.approx(0.968059, abs=1e-6)  # the file's own count
    assert dense["kl_dense"] == 0 and dense["agreement_dense"] == 100 and grid_row["schedule"] is None
    # the paper's setting written as a file is that setting: the same selections, predictions and MACs
    for key in ("top1", "gmacs", "pooled_per_block", "agreement_dense"):
        assert as_file[key] == grid_row[key], key
    assert as_file["kl_dense"] == pytest.approx(grid_row["kl_dense"], rel=1e-5, abs=1e-9)
    assert grid_row["kl_dense"] > 0 and other["kl_dense"] > 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert "kl_dense,agreement_dense" in header and header.endswith("schedule")
    # extended by another schedule: the dense logits are recomputed for its KL, the rows before are kept
    save_schedule(str(tmp_path / "late.json"), make_schedule(tiny, [(4, 40, 7e-5)]))
    res = run("sweep.py", "--r-values", 50, "--schedules", tmp_path / "late.json", "--output", prefix, "--limit", 4,
              "--batch-size", 4, "--resume-sweep", *FAST)
    assert res.returncode == 0, res.stderr
    rows = rows_of(prefix)
    assert rows[:2] == [dense, grid_row] and rows[2]["setting"] == "schedule 4:40@7e-05"
    assert rows[2]["kl_dense"] > 0 and len(rows) == 5
    res = run("sweep.py", "--model", "deit_small_patch16_224", "--schedules", uniform, "--output", tmp_path / "x",
              *FAST)
    assert res.returncode == 2 and "not for --model deit_small_patch16_224" in res.stderr
    assert not list(tmp_path.glob("x.*"))
