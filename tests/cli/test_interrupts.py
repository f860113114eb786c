"""Ctrl-C in a tool (ppt_cli.run_tool): acted on wherever it lands, even where C code swallows the
KeyboardInterrupt (MindSpore's compiler does, through PyObject_HasAttr), but never inside MindSpore's import or a
clean-up. Each tool here is a small script, the signal raised at a chosen moment: no MindSpore, no timing."""
import os
import subprocess
import sys

from conftest import ROOT

PRELUDE = '''
import ctypes, os, signal, sys, time
from ppt_cli import run_tool
from ppt_common.files import atomic_write


class Probe:
    def __getattr__(self, name):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C lands while C code is calling Python...
        raise AttributeError(name)


def swallowed_ctrl_c():
    """...and the C code clears the KeyboardInterrupt, as PyObject_HasAttr does."""
    has_attr = ctypes.pythonapi.PyObject_HasAttrString
    has_attr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    assert has_attr(Probe(), b"x") == 0


def busy(seconds):
    end = time.time() + seconds
    while time.time() < end:
        sum(range(1000))


def write_text(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return write
'''


def run(tmp_path, body):
    script = tmp_path / "tool.py"
    script.write_text(PRELUDE + body)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=120)


def test_a_ctrl_c_that_c_code_swallowed_still_stops_the_tool(tmp_path):
    """The flaky export and training tests: the signal consumed inside the compiler, the run went on to write its
    outputs and exit 0."""
    res = run(tmp_path, '''
def body():
    swallowed_ctrl_c()
    busy(5)
    atomic_write("out.txt", write_text("done"))
    print("finished")
sys.exit(run_tool(body))
''')
    assert res.returncode == 130 and "interrupted: no output was written" in res.stderr, res.stderr
    assert "finished" not in res.stdout and os.listdir(tmp_path) == ["tool.py"]


def test_a_ctrl_c_swallowed_while_an_output_is_written_leaves_nothing(tmp_path):
    res = run(tmp_path, '''
def write(tmp):
    with open(tmp, "w") as f:
        f.write("complete")
    swallowed_ctrl_c()
sys.exit(run_tool(lambda: atomic_write("out.txt", write)))
''')
    assert res.returncode == 130 and "interrupted" in res.stderr, res.stderr
    assert os.listdir(tmp_path) == ["tool.py"]


def test_a_ctrl_c_while_mindspore_is_imported_lets_the_import_finish(tmp_path):
    """A MindSpore cut short by KeyboardInterrupt is half-imported, and aborted the interpreter at exit (here a
    stand-in package of that name: the rule goes by the name)."""
    (tmp_path / "mindspore").mkdir()
    (tmp_path / "mindspore" / "__init__.py").write_text(
        'import signal\nsignal.raise_signal(signal.SIGINT)\nprint("imported")\n')
    res = run(tmp_path, '''
def body():
    sys.path.insert(0, os.getcwd())
    import mindspore  # noqa: F401
    busy(5)
    print("finished")
sys.exit(run_tool(body))
''')
    assert res.returncode == 130 and "interrupted" in res.stderr, res.stderr
    assert res.stdout.split() == ["imported"]


def test_the_clean_up_after_an_interruption_is_not_cut_short(tmp_path):
    """C++ may hand the interruption back as another error; its `finally` blocks run to the end (the temporary file
    removed), and the run still counts as interrupted."""
    res = run(tmp_path, '''
def body():
    open("temporary", "w").close()
    try:
        swallowed_ctrl_c()
        raise RuntimeError("compilation failed")
    finally:
        busy(1)  # long enough for the interruption to be raised again, were it allowed here
        os.remove("temporary")
sys.exit(run_tool(body))
''')
    assert res.returncode == 130 and "interrupted" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert os.listdir(tmp_path) == ["tool.py"]


def test_a_tool_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A shell starts its background jobs with SIGINT ignored, so that Ctrl-C at the terminal leaves them running."""
    res = run(tmp_path, '''
signal.signal(signal.SIGINT, signal.SIG_IGN)
def body():
    signal.raise_signal(signal.SIGINT)
    busy(0.5)
    print("finished")
sys.exit(run_tool(body))
''')
    assert res.returncode == 0 and res.stdout.split() == ["finished"], res.stderr
