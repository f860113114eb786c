"""Ctrl-C and SIGTERM in the command-line tools: an interruption, once received, is acted on.

Python runs a signal's handler in the main thread at its next bytecode, and that can be inside Python code called
from C: MindSpore's graph compiler calls Primitive.__getattr__ through PyObject_HasAttr, parser helpers and the
like, and clears whatever exception they raise, KeyboardInterrupt included. The signal was consumed, so nothing
raised it again and the tool ran to the end (exit 0, outputs written). Here the handler records the interruption
and, until the tool has acted on it (take_interrupt), raises it again every REDELIVERY_SECONDS.

Two more rules: an interruption that lands while MindSpore is being imported waits until that import is done
(`import mindspore` cut short turns the KeyboardInterrupt into an ImportError or ValueError, and the half-imported
MindSpore aborts the interpreter at exit: "Fatal Python error", exit -6), and a repeat waits while an exception is
being handled (a `finally` or `except` block runs: the interruption on its way up, perhaps turned into another
error, must not cut its clean-up short); a second Ctrl-C from the user is raised at once, in either case.

While MindSpore runs a graph its own SIGINT handler only sends the process SIGTERM, hence the same handler for
both. Installed by the command line only (ppt_cli.run_tool); the library never changes a signal handler.
"""
from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from typing import Optional

REDELIVERY_SECONDS = 0.2
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_lock = threading.Lock()
_pending: Optional[int] = None  # the signal received and not yet taken
_redelivered = False  # the next run of the handler is a repeat made here, not a signal from outside
_repeater: Optional[threading.Thread] = None


def _importing_mindspore(frame) -> bool:
    """Inside the top-level code of a MindSpore module, i.e. while it is being imported."""
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__", "").split(".")[0] == "mindspore":
            return True
        frame = frame.f_back
    return False


def _handling_an_exception() -> bool:
    """A `finally` or `except` block is running for an exception: the KeyboardInterrupt on its way to run_tool,
    or what foreign code turned it into (an ImportError, a ValueError: MindSpore's C++ does)."""
    return sys.exc_info()[1] is not None


def _raise_again(signum: int) -> None:
    """Our handler runs again in the main thread."""
    if sys.version_info >= (3, 10):
        _thread.interrupt_main(signum)  # sends no signal: nothing else is woken or interrupted
    else:
        signal.pthread_kill(threading.main_thread().ident, signum)


def _repeat_while_pending() -> None:
    global _redelivered
    while _pending is not None:
        time.sleep(REDELIVERY_SECONDS)
        signum = _pending
        if signum is not None:
            _redelivered = True
            _raise_again(signum)


def _start_repeating() -> None:
    global _repeater
    with _lock:
        if _repeater is None or not _repeater.is_alive():
            _repeater = threading.Thread(target=_repeat_while_pending, name="ms-ppt-interrupt", daemon=True)
            _repeater.start()


def _on_signal(signum, frame) -> None:
    global _pending, _redelivered
    repeat, _redelivered = _redelivered, False
    if repeat and _pending is None:  # taken meanwhile
        return
    from_user_again = not repeat and _pending is not None
    if _pending is None:
        _pending = signum
    _start_repeating()
    if not from_user_again and (_importing_mindspore(frame) or (repeat and _handling_an_exception())):
        return
    raise KeyboardInterrupt(f"signal {_pending}")


def handle_interrupts() -> dict:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt until taken (so `finally` blocks remove temporary files);
    returns the handlers replaced, for restore_handlers. A signal ignored when the tool started stays ignored (a
    shell starts its background jobs with SIGINT ignored, so that Ctrl-C leaves them running)."""
    take_interrupt()
    return {sig: signal.signal(sig, _on_signal) for sig in SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        if handler is not None:  # None: installed from C, and not Python's to put back
            signal.signal(sig, handler)


def take_interrupt() -> bool:
    """Whether an interruption was received; it is acted on by the caller, and no longer raised again."""
    global _pending
    received, _pending = _pending is not None, None
    return received


def raise_if_interrupted() -> None:
    """Before a step that cannot be undone (renaming outputs into place): an interruption received and not yet
    taken stops it, even one that foreign code swallowed since."""
    if _pending is not None:
        raise KeyboardInterrupt(f"signal {_pending}")
