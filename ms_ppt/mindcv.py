"""Run one of mindcv's own scripts (validate.py, train.py from the mindcv repository) with the `ppt_*` models:

    python -m ms_ppt.mindcv path/to/mindcv/validate.py --model ppt_deit_tiny_patch16_224 --data_dir ... --ckpt_path X

imports ms_ppt (which adds the `ppt_*` entries to mindcv's registry), makes mindcv's checkpoint_path loading as strict
for those models as ms_ppt.create_model (mindcv_strict_loading; --mindcv-loading keeps mindcv's own, which skips a
missing file or tensor), then runs the script as `python SCRIPT ARGS...` would: as __main__, its folder first on
sys.path (mindcv's scripts import their config.py from there), sys.argv as the script expects. Nothing of mindcv's is
edited.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import List, Optional

USAGE = "usage: python -m ms_ppt.mindcv [--mindcv-loading] SCRIPT.py [SCRIPT ARGS...]"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    strict = True
    if argv[:1] == ["--mindcv-loading"]:
        strict, argv = False, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"error: no such script: {script}\n{USAGE}", file=sys.stderr)
        return 2
    import ms_ppt  # registers the ppt_* models with mindcv
    if strict:
        ms_ppt.mindcv_strict_loading()
    sys.argv = [script] + argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
