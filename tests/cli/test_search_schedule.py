"""The schedule search on a handful of images (a plain folder: labels are not read): a schedule within its budget
that loads and evaluates, resumed by running the same command again, and refused for another search's file."""
import json
import glob
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from ppt_common.config import DEMO_DATA
from ppt_common.errors import UsageError
from ppt_common.schedule import load_schedule, make_schedule, save_schedule

SCRIPT = os.path.join(ROOT, "scripts", "search_schedule.py")
ARGS = ["--limit", "4", "--steps", "8", "4", "--thresholds", "0", "1", "--target-gmacs", "1.2", "--quiet"]


@pytest.mark.slow
def test_search_gives_a_schedule_within_budget_that_loads_evaluates_and_resumes(tmp_path):
    from pt_reference.evaluation import evaluate
    from pt_reference.search import search_schedule
    out = str(tmp_path / "schedule.json")
    photos = tmp_path / "photos"  # no class folders
    photos.mkdir()
    for path in sorted(glob.glob(os.path.join(DEMO_DATA, "val", "*", "*.jpg")))[:4]:
        shutil.copy(path, photos / (os.path.basename(os.path.dirname(path)) + os.path.basename(path)))
    done = subprocess.run([sys.executable, SCRIPT, "--output", out, "--data-path", str(photos), *ARGS],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    schedule = load_schedule(out, "deit_tiny_patch16_224")
    assert schedule["gmacs"] <= schedule["target_gmacs"] == 1.2 and schedule["blocks"]
    assert schedule["search"]["complete"] and 0 <= schedule["scores"]["agreement"] <= 1
    assert schedule["scores"]["kl"] >= 0 and schedule["scores"]["num_images"] == 4
    report = evaluate(schedule=out, limit=4, throughput_runs=0, quiet=True)
    assert report["gmacs"] == pytest.approx(schedule["gmacs"], abs=1e-6)
    assert report["pp_blocks"] == [b["block"] for b in schedule["blocks"]]
    # the same command again: the finished search is reported, not redone
    again = subprocess.run([sys.executable, SCRIPT, "--output", out, "--data-path", str(photos), *ARGS],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "the search is complete" in again.stdout
    # an unfinished file (the seed, saved at step 4 of the exchanges) is continued from its blocks, not re-seeded
    seed = schedule["search"]["seeds"][0]
    assert seed["blocks"] == [3, 6, 9] and len(schedule["search"]["seeds"]) > 10
    save_schedule(out, make_schedule("deit_tiny_patch16_224", [(b, r, 7e-5) for b, r in zip(seed["blocks"], seed["r"])],
                                     search=dict(schedule["search"], complete=False, step=4)))
    resumed = search_schedule(output=out, data_path=[str(photos)], limit=4, steps=(8, 4), thresholds=(0.0, 1.0),
                              target_gmacs=1.2, quiet=True)
    assert resumed["search"]["complete"] and resumed["search"]["resumed"] and resumed["gmacs"] <= 1.2
    assert resumed["search"]["evaluations"] < schedule["search"]["evaluations"]  # no seeds scored again
    assert resumed["search"]["seeds"] == schedule["search"]["seeds"]
    assert resumed["scores"]["kl"] <= seed["kl"] + 1e-9
    with pytest.raises(UsageError, match="holds a search with other target_gmacs"):
        search_schedule(output=out, data_path=[str(photos)], limit=4, steps=(8, 4), thresholds=(0.0, 1.0),
                        target_gmacs=1.1, quiet=True)
    assert json.load(open(out))["target_gmacs"] == 1.2  # the refused run left the file alone
