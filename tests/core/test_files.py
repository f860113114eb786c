"""Outputs: checked before the work, written all or none, never half-written, strict JSON."""
import json
import os

import pytest

from ppt_common.files import OutputError, OutputExistsError, check_output, check_outputs, json_writer, write_all


def write_text(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return write


def failing(tmp):
    with open(tmp, "w") as f:
        f.write("half")
    raise OSError("disk full")


def test_a_set_of_outputs_is_written_completely_or_not_at_all(tmp_path):
    (tmp_path / "b.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        write_all([(tmp_path / "a.txt", write_text("new a")), (tmp_path / "b.txt", failing)])
    assert sorted(os.listdir(tmp_path)) == ["b.txt"] and (tmp_path / "b.txt").read_text() == "old"
    write_all([(tmp_path / "a.txt", write_text("new a")), (tmp_path / "b.txt", write_text("new b"))])
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"] and (tmp_path / "b.txt").read_text() == "new b"


def test_writers_get_a_temporary_name_with_the_destination_suffix(tmp_path):
    seen = []
    write_all([(tmp_path / "p.npz", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))])
    assert seen[0].endswith(".npz") and os.path.dirname(seen[0]) == str(tmp_path)  # np.savez adds .npz otherwise
    assert os.listdir(tmp_path) == ["p.npz"]


def test_outputs_that_cannot_be_written_are_refused_up_front(tmp_path):
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(OutputError, match="output folder does not exist"):
        check_output(tmp_path / "no" / "r.json")
    with pytest.raises(OutputError, match="not writable"):
        check_output("/proc/r.json")  # refused even for root
    with pytest.raises(OutputError, match="must be a .png file"):
        check_output(tmp_path / "r.jpg", suffix=".png")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--force"):
        check_output(tmp_path / "r.json")
    assert check_output(tmp_path / "r.json", force=True) == str(tmp_path / "r.json")
    with pytest.raises(OutputError, match="name the same file"):
        check_outputs([("--a", str(tmp_path / "x")), ("--b", str(tmp_path / "." / "x"))])
    assert os.listdir(tmp_path) == ["r.json"]  # the checks leave nothing behind


def test_json_is_strict_json(tmp_path):
    write_all([(tmp_path / "r.json", json_writer({"a": float("nan"), "b": [1.5, float("inf")], "c": "x"}))])
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.5, None], "c": "x"}
