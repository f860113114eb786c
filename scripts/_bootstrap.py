"""Lets the scripts run from a clone without installation, and keeps MindSpore's noise away."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ppt_common.files import interrupt_on_sigterm  # noqa: E402
from ppt_common.quiet import silence_mindspore_exit_noise  # noqa: E402

silence_mindspore_exit_noise()
interrupt_on_sigterm()
