"""The layers point one way, and importing the library changes nothing global.

ppt_common (framework-free core) <- convert <- ms_ppt, pt_reference <- ppt_cli, scripts/, tools/ and the packages'
__main__.py files (the command line). Every import statement counts, those inside functions too.
"""
import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

FRAMEWORKS = {"mindspore", "mindcv", "torch", "torchvision", "timm", "safetensors"}
# package: the project packages and frameworks it may import
ALLOWED = {
    "ppt_common": set(),
    "convert": {"ppt_common", "mindspore", "torch", "safetensors"},  # reading and writing each framework's files
    "ms_ppt": {"ppt_common", "convert", "mindspore", "mindcv"},
    "pt_reference": {"ppt_common", "convert", "torch", "torchvision", "timm"},
    "ppt_cli": {"ppt_common"},  # options and the error wrapper; the tools themselves import the rest
}
PROJECT = set(ALLOWED) | {"scripts", "tools"}
COMMAND_LINE = {"ppt_cli", "scripts", "tools"}


def entry_point(path):
    """A package's __main__.py is a command-line tool, on top of every layer."""
    return os.path.basename(path) == "__main__.py"


def imported_tops(package):
    """{(top-level name, file)} of every absolute import in the folder's files."""
    found = set()
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                    if isinstance(node, ast.Import):
                        found |= {(alias.name.split(".")[0], path) for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        found.add((node.module.split(".")[0], path))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = sorted(f"{os.path.relpath(path, ROOT)} imports {top}" for top, path in imported_tops(package)
                   if top in (PROJECT | FRAMEWORKS) - {package} - ALLOWED[package] and not entry_point(path))
    assert not wrong, wrong


def test_argparse_lives_only_on_the_command_line():
    """The library takes parameters, not an argparse namespace: only the command-line layer parses options."""
    wrong = sorted(os.path.relpath(path, ROOT) for package in sorted(set(ALLOWED) - COMMAND_LINE)
                   for top, path in imported_tops(package) if top == "argparse" and not entry_point(path))
    assert not wrong, wrong


def test_importing_the_library_changes_no_global_state():
    """No environment variable, interpreter hook, signal handler or function of another package is changed by
    `import ms_ppt, pt_reference, convert` (mindcv's registry gains the ppt_* entries: it only adds)."""
    script = """
import os, signal, sys
import mindspore, mindcv, torch, timm
from mindcv.models import model_factory, registry
before = (dict(os.environ), sys.unraisablehook, sys.excepthook, signal.getsignal(signal.SIGINT),
          signal.getsignal(signal.SIGTERM), model_factory.load_model_checkpoint, model_factory.create_model)
entries = set(registry.list_models())
import ms_ppt, pt_reference, convert, convert.hub
after = (dict(os.environ), sys.unraisablehook, sys.excepthook, signal.getsignal(signal.SIGINT),
         signal.getsignal(signal.SIGTERM), model_factory.load_model_checkpoint, model_factory.create_model)
names = ("environment", "unraisablehook", "excepthook", "SIGINT", "SIGTERM", "mindcv loader", "mindcv create_model")
print([n for n, b, a in zip(names, before, after) if b != a])
print(sorted(set(registry.list_models()) - entries) == sorted("ppt_" + m for m in ms_ppt.list_models()))
"""
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split("\n")[:2] == ["[]", "True"], res.stdout
