"""Progress and logs (issue 26, point 7): no progress bars when stderr is not a terminal or TQDM_DISABLE is
set, `sapt run --quiet`, the log saved in RUN_DIR/run.log, and stage lines that say what their time is
and give an ETA for the whole run."""
import io as _io
import re

import pytest

from sapt.cli import main
from sapt.progress import bars_wanted, progress_bar
from sapt.rundir.layout import RUN_LOG, log, set_quiet
from sapt.train import duration, progress_note

ARGS = ["run", "--model", "tiny-llama", "--tasks", "topic,sentiment", "--max-train-per-task", "8",
        "--max-eval-per-task", "4", "--epochs", "1", "--max-new-tokens", "3", "--reflection-source", "real"]


class Terminal(_io.StringIO):
    def isatty(self):
        return True


def test_bars_only_on_a_terminal_without_tqdm_disable_or_quiet(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert bars_wanted()
    list(progress_bar(range(3), desc="on a terminal"))
    import sys

    assert "\r" in sys.stderr.getvalue()  # drawn
    for value in ("1", "true", "True"):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert not bars_wanted()
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert bars_wanted()
    was = set_quiet(True)
    try:
        assert not bars_wanted()
    finally:
        set_quiet(was)
    monkeypatch.setattr("sys.stderr", _io.StringIO())  # redirected to a file or a pipe
    assert not bars_wanted()
    list(progress_bar(range(3), desc="redirected"))
    assert sys.stderr.getvalue() == ""


def test_stage_times_say_they_are_since_the_start_and_give_an_eta():
    assert [duration(s) for s in (4.4, 265, 3725)] == ["4s", "4m25s", "1h02m"]
    assert progress_note(265, [120.0, 145.0], 2) == "4m25s since the start, about 4m25s left"
    assert progress_note(265, [], 2) == "4m25s since the start"  # nothing trained here yet: no guess
    assert progress_note(265, [120.0, 145.0], 0) == "4m25s since the start"  # the last stage


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "run"
    capture = pytest.MonkeyPatch()
    stdout, stderr = _io.StringIO(), _io.StringIO()
    capture.setattr("sys.stdout", stdout)
    capture.setattr("sys.stderr", stderr)
    try:
        code = main([*ARGS, "--output", str(out), "--quiet"])
    finally:
        capture.undo()
    assert code == 0
    return out, stdout.getvalue(), stderr.getvalue()


def test_quiet_prints_the_table_and_no_progress(quiet_run):
    out, stdout, stderr = quiet_run
    assert "AP" in stdout and "topic" in stdout  # the final table
    assert "stage 1/2 done" not in stderr and "epoch 1: train loss" not in stderr and "loaded" not in stderr


def test_the_log_is_saved_in_the_run_directory(quiet_run):
    out, _, _ = quiet_run
    lines = (out / RUN_LOG).read_text(encoding="utf-8").splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines)
    text = "\n".join(lines)
    assert "model tiny-llama loaded" in text and "epoch 1: train loss" in text
    first = next(line for line in lines if "stage 1/2 done" in line)
    assert re.search(r"\(\d+s since the start, about \d+s left\)", first)
    assert re.search(r"stage 2/2 done \(\d+s since the start\)", text)
    before = (out / RUN_LOG).read_bytes()
    log("sapt: a line after the run let go of its directory")
    assert (out / RUN_LOG).read_bytes() == before  # appended only while the run holds the directory


def test_a_redirected_run_draws_no_bars(quiet_run, tmp_path, capsys):
    assert "\r" not in quiet_run[2]  # --quiet
    assert main([*ARGS, "--output", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "stage 2/2 done" in err  # the progress lines stay
    assert "\r" not in err
