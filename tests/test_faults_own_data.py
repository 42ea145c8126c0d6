"""The fault probe of issue 27, the own-data group: a data folder (`--data-dir DIR --benchmark B`) whose
task cannot be used is refused in one line that says why and names the user's file, exit 2, no
traceback, before the run directory is made; and a write that fails names the path the user gave, never
sapt's temporary file (`.NAME.xxxx.tmp`), which the user never named.

Each table row is one case, run through `sapt.cli.main` as a user would, with the helpers of
tests/test_faults.py. The format-by-format cases of broken files are tests/test_formats.py's table.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from test_faults import TINY, one_line_error, snapshot

from sapt import io
from sapt.cli import main


def jsonl_task(bench: Path, name: str, n: int = 12) -> Path:
    folder = bench / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"input": f"{name} question {i}", "output": f"a{i % 2}"})
                                                + "\n" for i in range(n)))
    return folder


def _broken_link(bench: Path) -> None:
    (bench / "t").mkdir()
    os.symlink(bench / "nowhere.jsonl", bench / "t" / "train.jsonl")


def _link_loop(bench: Path) -> None:
    (bench / "t").mkdir()
    os.symlink(bench / "t" / "other", bench / "t" / "train.jsonl")
    os.symlink(bench / "t" / "train.jsonl", bench / "t" / "other")


def _folder_named_train_jsonl(bench: Path) -> None:
    (bench / "t" / "train.jsonl").mkdir(parents=True)


def _task_folder_broken_link(bench: Path) -> None:
    os.symlink(bench.parent / "gone", bench / "t")


def _empty_train_folder(bench: Path) -> None:
    (bench / "t" / "train").mkdir(parents=True)


def _dataset_without_rows(columns: bool):
    def make(bench: Path) -> None:
        import datasets

        rows = datasets.Dataset.from_dict({"input": [], "output": []}) if columns else datasets.Dataset.from_list([])
        rows.save_to_disk(str(bench / "t" / "train"))
    return make


def _nothing(bench: Path) -> None:
    pass


# (how the benchmark folder B, which holds tasks a and b, is spoiled; the options; what the line must say).
# Before: "tasks not found" alone for the three links and the folder; "cannot be loaded ... (IndexError: list
# index out of range)" for a dataset saved without rows; an unknown --unseen name not named as --unseen's.
OWN_DATA = {
    "train.jsonl a broken symbolic link": (_broken_link, ["--tasks", "a,t"],
                                           "t (train.jsonl is a broken symbolic link to "),
    "train.jsonl a symbolic link loop": (_link_loop, ["--tasks", "a,t"], "t (train.jsonl is a symbolic link loop)"),
    "train.jsonl a folder": (_folder_named_train_jsonl, ["--tasks", "a,t"], "t (train.jsonl is a folder, not a file)"),
    "the task folder a broken symbolic link": (_task_folder_broken_link, ["--tasks", "a,t"],
                                               "t (a broken symbolic link)"),
    "train/ an empty folder": (_empty_train_folder, ["--tasks", "a,t"], "t/train: an empty folder"),
    "train/ a dataset saved without rows": (_dataset_without_rows(True), ["--tasks", "a,t"],
                                            "t/train: no examples (the dataset was saved with no rows)"),
    "train/ a dataset of no columns": (_dataset_without_rows(False), ["--tasks", "a,t"],
                                       "t/train: no examples (the dataset was saved with no rows)"),
    "--unseen names no task": (_nothing, ["--tasks", "a,b", "--unseen", "nope"],
                               "unseen (--unseen): ", ),
    "--unseen names a broken task": (_dataset_without_rows(True), ["--tasks", "a,b", "--unseen", "t"],
                                     "unseen (--unseen): 1 problem in the task data"),
    "--tasks names a task twice": (_nothing, ["--tasks", "a,b,a"], "duplicate task"),
    "--tasks and --order together": (_nothing, ["--tasks", "a,b", "--order", "1"], "--order"),
}


@pytest.mark.parametrize("case", OWN_DATA)
def test_own_data_that_cannot_be_used_is_one_line_before_the_run_directory_is_made(case, tmp_path, capsys):
    spoil, options, needle = OWN_DATA[case]
    bench = tmp_path / "data" / "B"
    jsonl_task(bench, "a")
    jsonl_task(bench, "b")
    spoil(bench)
    out = tmp_path / "run"
    line = one_line_error(capsys, main(["run", *TINY, "--data-dir", str(tmp_path / "data"), "--benchmark", "B",
                                        *options, "--output", str(out)]), needle)
    assert ".tmp" not in line
    assert not out.exists()


# ---- a write names the user's path, not sapt's temporary file ------------------------------------------------
@pytest.fixture(scope="module")
def named_like_export_files(tmp_path_factory) -> Path:
    """A finished run of own data whose tasks are named like files of an export (they train well)."""
    root = tmp_path_factory.mktemp("names")
    for name in ("README.md", "router.json"):
        jsonl_task(root / "data" / "B", name)
    run = root / "run"
    assert main(["run", *TINY, "--data-dir", str(root / "data"), "--benchmark", "B", "--tasks", "README.md,router.json",
                 "--output", str(run)]) == 0
    return run


def _folder_at(out: Path) -> Path:
    out.mkdir()
    return out


# (the command, given the run and a scratch folder; what the line must say). Before: each named a file like
# ".OUT.export.xxxx/export/.README.md.xxxx.tmp" or ".DIR.xxxx.tmp", and said nothing of the real cause.
WRITES = {
    "export of tasks named README.md and router.json": (
        lambda r, tmp: ["export", "--run", str(r), "--out", str(tmp / "ex")],
        "task(s) 'README.md', 'router.json' cannot be exported"),
    "compare --out a folder": (lambda r, tmp: ["compare", str(r), "--out", str(_folder_at(tmp / "charts"))],
                               "charts is a folder; give the chart's file name"),
    "compare --out a folder, with --format": (
        lambda r, tmp: ["compare", str(r), "--format", "svg", "--out", str(_folder_at(tmp / "c.svg"))],
        "c.svg is a folder"),
}


@pytest.mark.parametrize("case", WRITES)
def test_a_write_that_cannot_happen_names_the_users_path(case, named_like_export_files, tmp_path, capsys):
    run = named_like_export_files
    argv, needle = WRITES[case]
    before = snapshot(run)
    capsys.readouterr()
    line = one_line_error(capsys, main(argv(run, tmp_path)), needle)
    assert ".tmp" not in line and ".export." not in line and str(tmp_path) in line
    assert snapshot(run) == before
    assert not (tmp_path / "ex").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file or folder left


def test_an_atomic_write_refused_by_the_file_system_names_the_file_not_its_temporary_name(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the file goes: the rename fails
    with pytest.raises(IsADirectoryError) as e:
        io.atomic_write_text(tmp_path / "taken", "x")
    assert e.value.filename == str(tmp_path / "taken") and e.value.filename2 is None
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.access(tmp_path / "ro", os.W_OK):  # root writes anywhere: no refusal to check
        return
    with pytest.raises(PermissionError) as e:  # the temporary file cannot be made
        io.atomic_write_text(tmp_path / "ro" / "f.json", "x")
    assert e.value.filename == str(tmp_path / "ro" / "f.json") and e.value.errno == errno.EACCES
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
