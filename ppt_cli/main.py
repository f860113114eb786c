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
from ppt_common.interrupts import handle_interrupts, restore_handlers, take_interrupt
from ppt_common.quiet import silence_mindspore_exit_noise

NOTHING_WRITTEN = "no output was written"


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_tool(body: Callable[[], object], interrupted: Union[str, Callable[[], str]] = NOTHING_WRITTEN) -> int:
    """Run a tool's body as a command: MindSpore's log chatter and exit noise quieted, Ctrl-C and SIGTERM acted
    on wherever they land (ppt_common.interrupts), and each error reported as one line with its exit code. The
    body's result is its exit code if it is an int (0 otherwise: a report it returns is for Python callers).
    `interrupted` says what an interruption keeps (or a function that says it, asked at the time)."""
    silence_mindspore_exit_noise()
    previous_handlers = handle_interrupts()
    try:
        return _exit_code(body, interrupted)
    finally:
        restore_handlers(previous_handlers)


def _exit_code(body, interrupted) -> int:
    try:
        result = body()
    except BaseException as error:  # noqa: B036  (an interruption can come back as any error: see below)
        # code between the signal and us may turn the KeyboardInterrupt into another error (MindSpore's C++ made
        # an ImportError or a ValueError of it): an interruption received decides, whatever the body raised after
        if take_interrupt() or isinstance(error, KeyboardInterrupt):
            return _report_interruption(interrupted)
        return _report_error(error)
    if take_interrupt():  # received, and swallowed by foreign code until the end: still an interrupted run
        return _report_interruption(interrupted)
    return result if isinstance(result, int) else 0


def _report_interruption(interrupted) -> int:
    print(f"interrupted: {interrupted() if callable(interrupted) else interrupted}", file=sys.stderr)
    return 130


def _report_error(error: BaseException) -> int:
    if isinstance(error, TrainingError):
        return fail(str(error), 1)
    if isinstance(error, (PPTError, ValueError, OSError)):  # OSError: not found, exists, disk full, permission, ...
        return fail(str(error))
    raise error
