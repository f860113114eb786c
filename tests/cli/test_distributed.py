"""Data-parallel evaluation: shards count every image once, gathering keeps dataset order, and msrun / torchrun
runs give exactly the one-process report and predictions."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import DEIT_TINY, FOOLBOX, IMAGENET_SAMPLE, ROOT, free_port, need_shared_data
from ppt_common.distributed import World, gather_objects, shard
from ppt_common.evaluation import UsageError, evaluate_items
from ppt_common.imagenet import ImageError


@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_shards_are_runs_of_whole_batches_that_count_every_item_once(size, batch_size):
    """Every batch of the one-process batching lies wholly in one rank's shard, and is cut the same there."""
    for n in (0, 1, 5, 7, 46, 270):
        items = list(range(n))
        parts = [shard(items, World(rank, size), batch_size) for rank in range(size)]
        assert sum(parts, []) == items
        one_process = [items[i:i + batch_size] for i in range(0, n, batch_size)]
        per_rank = [part[i:i + batch_size] for part in parts for i in range(0, len(part), batch_size)]
        assert per_rank == one_process
        batches = [-(-len(part) // batch_size) for part in parts]
        assert max(batches) - min(batches) <= 1


def thread_worlds(size):
    """`size` Worlds whose AllGather meets in threads: a collective without processes."""
    barrier, slots = threading.Barrier(size), [None] * size

    def make(rank):
        def all_gather(words):
            slots[rank] = np.array(words, dtype=np.float32)
            barrier.wait()
            out = np.concatenate(slots)
            barrier.wait()
            return out
        return World(rank, size, all_gather)
    return [make(rank) for rank in range(size)]


def test_objects_of_every_size_and_dtype_are_gathered_exactly_in_rank_order():
    worlds = thread_worlds(3)
    payloads = [{"rank": 0, "x": np.array([-0.0, np.nan, 1e-310])},
                {"rank": 1, "paths": ["a" * 1000, "é"], "empty": np.zeros((0, 1000), np.float32)},
                {"rank": 2}]
    results = [None] * 3
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(r, gather_objects(worlds[r], payloads[r])))
               for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        assert [g["rank"] for g in got] == [0, 1, 2] and got[1]["paths"] == payloads[1]["paths"]
        np.testing.assert_array_equal(got[0]["x"].view(np.int64), payloads[0]["x"].view(np.int64))  # bit-exact
        assert got[1]["empty"].shape == (0, 1000)


LOOP = dict(batch_size=4, num_workers=1, on_error="skip", quiet=True, desc="test")


def fake_preprocess(path):
    if path.startswith("bad"):
        raise ImageError(f"cannot read image {path}")
    return np.full((3, 2, 2), float(path.split("_")[1]), np.float32)


def test_the_loop_pads_short_batches_to_one_shape_and_counts_each_image_once():
    """Batches of 4 over 11 images, one unreadable: every call sees 4 images (no recompilation in GRAPH_MODE), the
    padding is discarded, each readable image is scored once, in order, and the bad one is counted as skipped."""
    items = [(f"img_{i}", i % 3) for i in range(11)]
    items[5] = ("bad_5", 0)
    shapes = []

    def run_batch(images):
        shapes.append(images.shape[0])
        logits = np.zeros((len(images), 3))
        logits[np.arange(len(images)), images[:, 0, 0, 0].astype(int) % 3] = 1.0  # predicts its own label
        return logits, []
    result = evaluate_items(items, run_batch, fake_preprocess, **LOOP, fixed_batch=True)
    assert shapes == [4, 4, 4] and result.skipped == ["bad_5"]
    assert result.metrics.paths == [p for p, _ in items if p != "bad_5"]
    assert result.metrics.result()["top1"] == 100.0 and result.metrics.num_images == 10
    shapes.clear()
    evaluate_items(items[:3], run_batch, fake_preprocess, **LOOP, fixed_batch=True)
    assert shapes == [3]  # fewer images than --batch-size: the batch shape is the run's size, no padding


def test_ranks_evaluate_the_one_process_batches_whatever_their_number():
    """11 images in batches of 4 (4, 4, 3): over 2 or 3 ranks every call sees exactly the images, in the same
    order, that a one-process call sees; the gathered result is the one-process result."""
    items = [(f"img_{i}", i % 3) for i in range(11)]

    def run(size):
        calls, results = [], [None] * size

        def run_batch(images):
            calls.append(tuple(images[:, 0, 0, 0].tolist()))
            return np.eye(3)[images[:, 0, 0, 0].astype(int) % 3], []
        worlds = thread_worlds(size) if size > 1 else [World()]
        threads = [threading.Thread(target=lambda r=r: results.__setitem__(
            r, evaluate_items(items, run_batch, fake_preprocess, **LOOP, world=worlds[r]))) for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return sorted(calls), results[0]
    one_calls, one = run(1)
    assert one_calls == [(0.0, 1.0, 2.0, 3.0), (4.0, 5.0, 6.0, 7.0), (8.0, 9.0, 10.0)]
    for size in (2, 3):
        calls, result = run(size)
        assert calls == one_calls
        assert result.metrics.paths == one.metrics.paths
        np.testing.assert_array_equal(np.concatenate(result.metrics.logits), np.concatenate(one.metrics.logits))


def test_an_error_on_one_rank_stops_every_rank_with_its_message():
    worlds = thread_worlds(2)
    items = [("img_0", 0), ("img_1", 1), ("img_2", 2), ("bad_3", 0)]
    errors = [None, None]

    def rank(r):
        try:
            evaluate_items(items, lambda x: (np.zeros((len(x), 3)), []), fake_preprocess,
                           **{**LOOP, "on_error": "fail"}, world=worlds[r])
        except UsageError as e:
            errors[r] = str(e)
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors[0] == errors[1] and "bad_3" in errors[0]  # rank 1 read the bad image; rank 0 stops too


def eval_args(out):
    return ["--checkpoint", DEIT_TINY, "--data-path", IMAGENET_SAMPLE, FOOLBOX, "--limit", "46", "--batch-size", "12",
            "--throughput-runs", "0", "--quiet", "--output-json", out / "report.json",
            "--save-predictions", out / "predictions.npz"]


def launch(launcher, script, out, cwd):
    out.mkdir()
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": ROOT}
    if script == "eval_pt.py":
        # torchrun gives each rank one thread, and PyTorch's CPU matmul may round differently with the thread
        # count (measured: the head on a batch of 10, 1 against 2 threads): the one process gets one thread too
        env["OMP_NUM_THREADS"] = "1"
    script_path = os.path.join(ROOT, "scripts", script)
    if launcher == "msrun":
        cmd = [os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2", "--local_worker_num=2",
               f"--master_port={free_port()}", f"--log_dir={out / 'logs'}", "--join=True", script_path]
    elif launcher == "torchrun":
        cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
               f"--master_port={free_port()}", script_path]
    else:
        cmd = [sys.executable, script_path]
    res = subprocess.run(cmd + [str(a) for a in eval_args(out)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=900)
    logs = "".join(open(os.path.join(out, "logs", f)).read()[-3000:] for f in sorted(os.listdir(out / "logs"))) \
        if (out / "logs").is_dir() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + logs
    return res, json.loads((out / "report.json").read_text()), np.load(out / "predictions.npz")


@pytest.mark.parametrize("launcher, script", [("msrun", "eval_ms.py"), ("torchrun", "eval_pt.py")])
@pytest.mark.slow
def test_two_workers_give_exactly_the_one_process_evaluation(launcher, script, tmp_path):
    """46 real photos in batches of 12 (12, 12, 12 and a short 10, padded in GRAPH_MODE) over 2 ranks: top-1,
    top-5, loss, policy counts and every image's logits, bit for bit and in the same order, as one process; only
    rank 0 writes, and nothing is left in the working folder. Splitting the images evenly (23 a rank) would give
    batches of 12 and 11, which PyTorch's CPU matmul rounds differently from the one-process batches; and batch 12
    with 147 tokens is where MindSpore's CPU Log varied from call to call before sizes were looked up. PyTorch's
    processes all run one thread, as torchrun's ranks do (see launch)."""
    need_shared_data()
    if launcher == "msrun" and shutil.which("msrun", path=os.path.dirname(sys.executable)) is None:
        pytest.fail("msrun is not installed beside this Python (it comes with mindspore)")
    work = tmp_path / "work"
    work.mkdir()
    _, single, single_pred = launch("single", script, tmp_path / "single", work)
    res, parallel, parallel_pred = launch(launcher, script, tmp_path / "parallel", work)
    for key in ("top1", "top5", "loss", "num_images", "pooled_per_block", "pruned_per_block", "skipped_images"):
        assert parallel[key] == single[key], key
    assert single["num_images"] == 46 and parallel["config"]["world_size"] == 2
    for key in ("paths", "labels", "policies"):
        np.testing.assert_array_equal(parallel_pred[key], single_pred[key])
    np.testing.assert_array_equal(parallel_pred["logits"], single_pred["logits"])
    assert sorted(os.listdir(tmp_path / "parallel")) in (["logs", "predictions.npz", "report.json"],
                                                          ["predictions.npz", "report.json"])
    assert os.listdir(work) == []
