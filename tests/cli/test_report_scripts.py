"""benchmark.py, parity.py and tools/float16_report.py as a user runs them: outputs and bad arguments."""
import json
import os

import pytest

from conftest import DEIT_TINY, FOOLBOX, ROOT, need_shared_data
from conftest import run_script as run


@pytest.mark.slow
def test_benchmark_writes_rows_for_both_frameworks_and_variants(tmp_path):
    out = tmp_path / "bench.json"
    res = run("benchmark.py", "--models", "deit_tiny_patch16_224", "--batch-sizes", "1", "--runs", "1",
              "--warmup", "0", "--token-ops", "--unfused", "--mode", "pynative",
              "--output-json", out)  # no graph compilations
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["framework"], r["variant"]) for r in rows} == {
        ("mindspore", "dense"), ("mindspore", "ppt"), ("mindspore", "ppt_graph_reduction"),
        ("mindspore", "ppt_without_token_ops"), ("mindspore", "dense_unfused"), ("mindspore", "ppt_unfused"),
        ("pytorch", "dense"), ("pytorch", "ppt")}
    for r in rows:
        assert r["batch_size"] == 1 and r["images_per_s"] > 0 and r["latency_ms"] > 0
        if r["variant"] in ("dense", "ppt"):  # a child process per variant: the libraries alone take >100 MB
            assert 100 < r["peak_rss_mb"] < 20000
        else:  # the token-ops and unfused diagnostics are timed only
            assert r["peak_rss_mb"] is None
    assert "PPT speed-up" in res.stdout and "MindSpore / PyTorch" in res.stdout and "peak RSS" in res.stdout
    assert "graph-op reduction" in res.stdout and "token ops" in res.stdout and "fused kernels:" in res.stdout


@pytest.mark.slow
def test_benchmark_times_training_steps_dense_and_ppt_in_both_frameworks(tmp_path):
    out = tmp_path / "train.json"
    res = run("benchmark.py", "--task", "train", "--models", "deit_tiny_patch16_224", "--batch-sizes", "2", "--runs",
              "1", "--warmup", "0", "--mode", "pynative", "--no-memory", "--output-json", out)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["framework"], r["variant"], r["task"]) for r in rows} == {
        (fw, v, "train") for fw in ("mindspore", "pytorch") for v in ("dense", "ppt")}
    assert all(r["images_per_s"] > 0 and r["peak_rss_mb"] is None for r in rows) and "training steps" in res.stdout


def test_benchmark_measures_training_memory_past_the_first_step(monkeypatch, capsys):
    """PyTorch's AdamW creates its moments in its first step, after that step's backward: a child that ran one
    step would leave them out of PyTorch's peak (176 MB of DeiT-S's), though every later step of a run holds them."""
    import importlib.util
    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))  # its _bootstrap
    spec = importlib.util.spec_from_file_location("benchmark_script", os.path.join(ROOT, "scripts", "benchmark.py"))
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    calls = []
    monkeypatch.setattr(benchmark, "make_runner", lambda *args: lambda: calls.append(args[:4]))
    assert benchmark.main(["--task", "train", "--memory-child", "pytorch", "deit_tiny_patch16_224", "2", "dense"]) == 0
    assert len(calls) >= 2 and set(calls) == {("pytorch", "deit_tiny_patch16_224", 2, "dense")}
    assert float(capsys.readouterr().out.split()[-1]) > 0  # the peak RSS, in MB


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet50"], "unknown model"),
    (["--task", "train", "--token-ops"], "--task train"),
    (["--task", "train", "--unfused"], "--task train"),
    (["--batch-sizes", "0"], "must be positive"),
    (["--output-json", "/nonexistent/dir/b.json"], "output folder does not exist"),
])
def test_benchmark_bad_arguments(args, message):
    res = run("benchmark.py", *args)
    assert res.returncode == 2 and message in res.stderr


@pytest.mark.slow
def test_parity_script_reports_the_promised_keys(tmp_path):
    need_shared_data()
    out = tmp_path / "parity.json"
    res = run("parity.py", "--checkpoint", DEIT_TINY, "--data-path", FOOLBOX, "--limit", "6", "--batch-size", "3",
              "--mode", "pynative", "--quiet", "--output-json", out)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    for key in ("num_images", "policy_disagreements", "selection_disagreements", "unexplained_disagreements",
                "max_abs_logit_diff", "top1_pt", "top1_ms", "prediction_differences"):
        assert key in report
    assert report["num_images"] == 6 and report["unexplained_disagreements"] == 0
    assert report["max_abs_logit_diff"] < 1e-9  # float64 by default
    assert "identical traces: 6" in res.stdout


@pytest.mark.slow
def test_train_parity_script_reports_equal_steps_in_float64(tmp_path):
    """An AdamW step of the real DeiT-Tiny on 4 photos whose batch mixes both policies at the first PP block (more
    steps: tests/test_training.py)."""
    need_shared_data()
    out = tmp_path / "train_parity.json"
    res = run("train_parity.py", "--checkpoint", DEIT_TINY, "--data-path", FOOLBOX, "--limit", "4", "--batch-size",
              "4", "--mode", "pynative", "--mixed-threshold", "--lrs", "1e-4", "--quiet", "--output-json", out)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [s["step"] for s in report["steps"]] == [0] and report["all_traces_identical"]
    assert report["worst_grad_gap"] < 1e-9 and report["worst_weight_gap"] < 1e-9
    assert 0 < report["steps"][0]["pooled_per_block"][0] < 4  # some pool, some prune
    assert all(abs(s["loss_pt"] - s["loss_ms"]) < 1e-10 for s in report["steps"])
    assert "worst gradient gap" in res.stdout


def test_parity_and_float16_scripts_refuse_bad_input(tmp_path):
    res = run("parity.py", "--data-path", tmp_path / "missing", "--quiet")
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run("tools/float16_report.py", "--checkpoint", tmp_path / "missing.pth", "--quiet")
    assert res.returncode == 2 and "checkpoint not found" in res.stderr
