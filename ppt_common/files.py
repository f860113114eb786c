"""Every file the project writes: checked before the work starts, written under a temporary name beside its
destination and renamed into place, several outputs as one set (all or none).

Existing outputs follow one policy in every tool: refused unless the user passes --force (force=True).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from ppt_common.errors import OutputError, OutputExistsError  # noqa: F401  (their old home)
from ppt_common.interrupts import raise_if_interrupted

Writer = Callable[[str], None]  # writes the complete file at the path it is given


def check_output(path, force: bool = False, suffix: Optional[str] = None, option: str = "output") -> str:
    """Refuse, before any work, an output that could not be written: returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    if suffix and not path.lower().endswith(suffix):
        raise OutputError(f"{option} must be a {suffix} file, got {path}")
    if os.path.isdir(path):
        raise OutputError(f"{option} {path} is a folder; name a file")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OutputError(f"output folder does not exist: {folder} ({option})")
    if os.path.lexists(path) and not force:
        raise OutputExistsError(f"{option} {path} exists; pass --force to overwrite it")
    try:  # os.access says yes to root on read-only mounts' parents and no to nothing: try it
        fd, probe = tempfile.mkstemp(prefix=".ms-ppt-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"output folder is not writable: {folder} ({option}: {e.strerror or e})") from None
    return path


def check_outputs(outputs: Iterable[Tuple[str, Optional[str]]], force: bool = False) -> List[str]:
    """check_output for each (option, path) given (None = not requested), and no two the same file."""
    seen = {}
    checked = []
    for option, path in outputs:
        if path is None:
            continue
        full = check_output(path, force, option=option)
        if full in seen:
            raise OutputError(f"{seen[full]} and {option} name the same file {full}")
        seen[full] = option
        checked.append(full)
    return checked


def _temp_beside(path: str) -> str:
    """A new hidden file in the destination's folder, with the destination's suffix (some writers, such as
    np.savez and mindspore.save_checkpoint, append their suffix to a name without it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=os.path.splitext(path)[1],
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    return tmp


def _readable_by_default(path: str) -> None:
    """mkstemp (and MindSpore's writers) create owner-only files: give the output the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_all(writers: Sequence[Tuple[str, Writer]]) -> None:
    """Write every (path, writer) to a temporary file beside it, then rename them all into place; if any write
    fails, no output is touched and no temporary file is left."""
    temps = []
    try:
        for path, write in writers:
            temps.append((_temp_beside(path), os.fspath(path)))
            write(temps[-1][0])
        raise_if_interrupted()  # a Ctrl-C that foreign code swallowed during the writes: still nothing written
        for tmp, path in temps:
            _readable_by_default(tmp)
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def atomic_write(path, write: Writer) -> None:
    write_all([(path, write)])


def json_writer(obj) -> Writer:
    """A writer of strict JSON: NaN and infinities (never valid JSON) are written as null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(clean(obj), f, indent=2, allow_nan=False)
    return write
