import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ppt_common.quiet import silence_mindspore_exit_noise  # noqa: E402

silence_mindspore_exit_noise()

# no test reads or fills the user's weights cache (pretrained=True, and the demo's use of cached weights)
_WEIGHTS = tempfile.mkdtemp(prefix="ms-ppt-test-weights-")
atexit.register(shutil.rmtree, _WEIGHTS, ignore_errors=True)
os.environ["MS_PPT_WEIGHTS_DIR"] = os.path.join(_WEIGHTS, "cache")

SHARED_DATA = os.environ.get("PPT_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
DEIT_TINY = os.path.join(SHARED_DATA, "deit_tiny_patch16_224.pth")
IMAGENET_SAMPLE = os.path.join(SHARED_DATA, "imagenet-sample")
FOOLBOX = os.path.join(SHARED_DATA, "foolbox-imagenet")


LAST_GREEN = os.path.join(ROOT, ".ci", "last-green.txt")
WATCHED = ("mindspore", "mindcv", "numpy", "torch", "torchvision", "timm", "safetensors", "pillow", "matplotlib",
           "transformers")


def pytest_report_header(config):
    """The versions under test, beside those of the last run known green (.ci/last-green.txt): drift shows in
    every run's header, CI's included, before a test fails because of it."""
    from importlib.metadata import PackageNotFoundError, version
    green = {}
    if os.path.isfile(LAST_GREEN):
        with open(LAST_GREEN) as f:
            green = dict(line.strip().lower().split("==", 1) for line in f if "==" in line and line[0] != "#")
    lines = []
    for name in WATCHED:
        try:
            now = version(name)
        except PackageNotFoundError:
            now = "absent"
        was = green.get(name)
        lines.append(f"{name} {now}" + (f" (last green: {was})" if was is not None and was != now else ""))
    return "versions: " + ", ".join(lines)


def run_script(script, *args, cwd=ROOT, timeout=900, env=None):
    """A tool run as a user runs it: scripts/SCRIPT (or tools/NAME given as "tools/NAME"), arguments str()-ed."""
    path = os.path.join(ROOT, script if "/" in script else os.path.join("scripts", script))
    return subprocess.run([sys.executable, path, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_shared_data():
    if not os.path.isfile(DEIT_TINY):
        pytest.skip(f"shared data not found at {SHARED_DATA} (set PPT_SHARED_DATA to the folder with "
                    "deit_tiny_patch16_224.pth and the ImageNet samples)")


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture(scope="session")
def real_images():
    """The 270 shared ImageNet photos, preprocessed once (float32 [N,3,224,224]) with labels."""
    need_shared_data()
    from ppt_common.datasets import find_images
    from ppt_common.imagenet import preprocess_pil
    items = find_images(IMAGENET_SAMPLE, split="val")[0] + find_images(FOOLBOX, split="val")[0]
    x = np.stack([preprocess_pil(p) for p, _ in items])
    return x, np.array([lbl for _, lbl in items]), [p for p, _ in items]
