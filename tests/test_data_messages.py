"""A task that cannot be found says what stands in the way (issue 27's minor cases): a broken link, a link
loop, a folder where a file should be, or plain absence."""
import os

import pytest

from sapt.data import DataError
from sapt.data.benchmark import resolve_task_names


def make(bench, name, how):
    task = bench / name
    task.mkdir(parents=True)
    if how == "broken":
        os.symlink(bench / "nowhere.jsonl", task / "train.jsonl")
    elif how == "loop":
        os.symlink(task / "b", task / "train.jsonl")
        os.symlink(task / "train.jsonl", task / "b")
    elif how == "folder":
        (task / "train.jsonl").mkdir()
    elif how == "good":
        (task / "train.jsonl").write_text('{"input": "a", "output": "b"}\n')


@pytest.mark.parametrize("how, says", [
    ("broken", "a (train.jsonl is a broken symbolic link to "),
    ("loop", "a (train.jsonl is a symbolic link loop)"),
    ("folder", "a (train.jsonl is a folder, not a file)"),
    ("absent", "train/): a"),
])
def test_a_missing_task_names_its_cause(tmp_path, how, says):
    bench = tmp_path / "B"
    make(bench, "present", "good")
    if how != "absent":
        make(bench, "a", how)
    with pytest.raises(DataError) as e:
        resolve_task_names(tmp_path, "B", ["present", "a"], None)
    message = str(e.value)
    assert says in message and "\n" not in message
    assert "present" not in message.split("train/): ")[1]  # only the missing task is listed


def test_a_broken_link_for_the_whole_task_folder_is_named(tmp_path):
    bench = tmp_path / "B"
    make(bench, "present", "good")
    os.symlink(tmp_path / "gone", bench / "a")
    with pytest.raises(DataError, match=r"a \(a broken symbolic link\)"):
        resolve_task_names(tmp_path, "B", ["a"], None)
