"""Compiling ms_ppt's kernel sources (kernels/*.cc) for this machine, on first use, into a cache.

They are compiled with the host's g++ for this CPU (-march=native) into a cache folder keyed by source, flags and
CPU model; without a compiler, or with MS_PPT_CUSTOM_KERNELS=0, `build` gives None and models fall back to
MindSpore's own kernels.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from functools import lru_cache
from typing import Optional

from ppt_common.files import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
# -fno-trapping-math lets the compiler if-convert and vectorise the loop; unlike -ffast-math it changes no
# process-wide floating-point state and keeps IEEE results for finite inputs.
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
# kernels whose results must equal MindSpore's graph ops bit for bit: g++ fuses a * b + c into one multiply-add
# (rounded once) unless told not to
BIT_EXACT = {"adamw_cpu": ["-ffp-contract=off"]}


def flags(name: str) -> list:
    return FLAGS + BIT_EXACT.get(name, [])


def enabled() -> bool:
    return os.environ.get("MS_PPT_CUSTOM_KERNELS", "1") not in ("0", "false", "no")


def cache_dir() -> str:
    return os.environ.get("MS_PPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ms_ppt"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def _sources_digest(source: str) -> bytes:
    """The kernel's source and the shared headers it may include: a changed header rebuilds every kernel."""
    parts = [source] + sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".h"))
    digest = hashlib.sha256()
    for path in parts:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.digest()


class _CompileError(Exception):
    pass


@lru_cache(maxsize=None)
def build(name: str) -> Optional[str]:
    """Path of the compiled kernels/<name>.cc for this machine, compiling it if needed; None if impossible."""
    if not enabled() or platform.system() != "Linux":
        return None
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        warnings.warn("ms_ppt: no C++ compiler found, using MindSpore's own kernels (slower); install g++ for speed")
        return None
    source = os.path.join(HERE, f"{name}.cc")
    key = hashlib.sha256(_sources_digest(source) + " ".join(flags(name)).encode()
                         + _cpu_model().encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), f"{name}-{key}.so")
    if os.path.exists(target):
        return target

    def compile_to(tmp):
        result = subprocess.run([compiler, *flags(name), "-o", tmp, source], capture_output=True, text=True)
        if result.returncode != 0:
            raise _CompileError(result.stderr[:300])

    try:
        os.makedirs(cache_dir(), exist_ok=True)
        atomic_write(target, compile_to)  # concurrent processes never load a half-written library
        return target
    except _CompileError as e:
        warnings.warn(f"ms_ppt: compiling {name}.cc failed, using MindSpore's kernels: {e}")
        return None
    except OSError as e:
        warnings.warn(f"ms_ppt: cannot build {name}.cc in {cache_dir()} ({e}), using MindSpore's kernels")
        return None
