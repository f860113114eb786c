"""Keep MindSpore's log chatter and its interpreter-exit noise away from our users."""
import os
import sys


def silence_mindspore_exit_noise() -> None:
    """Call before importing mindspore: warnings-level C++ logs off, known exit-time AttributeError dropped."""
    os.environ.setdefault("GLOG_v", "3")  # 3 = ERROR; MindSpore warns about eliminated side-effect nodes etc.
    previous = sys.unraisablehook

    def hook(unraisable):
        if "total_instance_count" in repr(unraisable.exc_value):
            return
        previous(unraisable)

    if getattr(sys.unraisablehook, "__name__", "") != "hook":
        sys.unraisablehook = hook
