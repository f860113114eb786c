"""How every tool ends: its result, or one line on stderr and an exit code.

    exit 0   done
    exit 1   the run failed after it started (TrainingError: a non-finite loss; the last checkpoint is intact)
    exit 2   bad options or inputs, found before any work, or an unreadable checkpoint, image or output path
    exit 130 interrupted (Ctrl-C or SIGTERM): the tool says what was kept
"""
from __future__ import annotations

import sys
from typing import Callable, Union

from ppt_common.errors import PPTError, TrainingError
from ppt_common.files import interrupt_on_sigterm
from ppt_common.quiet import silence_mindspore_exit_noise

NOTHING_WRITTEN = "no output was written"


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_tool(body: Callable[[], object], interrupted: Union[str, Callable[[], str]] = NOTHING_WRITTEN) -> int:
    """Run a tool's body as a command: MindSpore's log chatter and exit noise quieted, SIGTERM treated as Ctrl-C,
    and each error reported as one line with its exit code. The body's result is its exit code if it is an int (0
    otherwise: a report it returns is for Python callers). `interrupted` says what an interruption keeps (or a
    function that says it, asked at the time)."""
    silence_mindspore_exit_noise()
    interrupt_on_sigterm()
    try:
        result = body()
        return result if isinstance(result, int) else 0
    except TrainingError as e:
        return fail(str(e), 1)
    except (PPTError, ValueError, OSError) as e:  # OSError: not found, exists, disk full, permission, ...
        return fail(str(e))
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted() if callable(interrupted) else interrupted}", file=sys.stderr)
        return 130
