"""The package builds quietly, ships its demo sample and its licence."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_builds_without_setuptools_warnings_and_ships_demo_and_licence(tmp_path):
    source = tmp_path / "src"  # a copy: pip builds in the source folder (build/, *.egg-info)
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                          "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    output = res.stdout + res.stderr
    assert "Package would be ignored" not in output and "SetuptoolsDeprecationWarning" not in output
    (wheel,) = glob.glob(os.path.join(tmp_path, "ms_ppt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert len([n for n in names if n.startswith("ms_ppt/demo-data/val/") and n.endswith(".jpg")]) == 12
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "Apache License" in open(os.path.join(ROOT, "LICENSE")).read()
