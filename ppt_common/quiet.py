"""Keep MindSpore's log chatter and its interpreter-exit noise away from our users."""
import os
import sys


def is_exit_noise(unraisable) -> bool:
    """MindSpore's Cell.__del__ running at interpreter exit, after the module globals it uses were cleared
    (AttributeError "'NoneType' object has no attribute 'del_net_res'", or on Cell.total_instance_count)."""
    where = getattr(unraisable.object, "__qualname__", "")
    return where == "Cell.__del__" and isinstance(unraisable.exc_value, AttributeError)


def _hook(unraisable, previous):
    if not is_exit_noise(unraisable):
        previous(unraisable)


def silence_mindspore_exit_noise() -> None:
    """Warnings-level C++ logs off (effective when called before importing mindspore); exit-time noise dropped."""
    os.environ.setdefault("GLOG_v", "3")  # 3 = ERROR; MindSpore warns about eliminated side-effect nodes etc.
    if getattr(sys.unraisablehook, "__name__", "") != "ms_ppt_unraisablehook":
        previous = sys.unraisablehook

        def ms_ppt_unraisablehook(unraisable):
            _hook(unraisable, previous)
        sys.unraisablehook = ms_ppt_unraisablehook
