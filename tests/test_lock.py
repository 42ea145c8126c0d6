"""Tests for sapt.rundir.lock.RunLock: one sapt process per run directory, never a stale lock."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sapt.config import ConfigError
from sapt.rundir.lock import RunLock

MESSAGE = "is in use by another sapt process (pid {pid}); wait for it or use another --output"


def test_lock_creates_dir_writes_pid_and_releases(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    with RunLock(run_dir) as lock:
        assert lock.held
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    assert not lock.held
    with RunLock(run_dir):  # released on exit: can be taken again
        pass


def test_second_lock_in_same_process_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(ConfigError) as e:
            with RunLock(tmp_path):
                pytest.fail("second lock acquired")
        assert str(e.value) == f"{tmp_path} " + MESSAGE.format(pid=os.getpid())
    with RunLock(tmp_path):  # the refused attempt did not disturb the released lock
        pass


def test_a_held_lock_is_a_run_dir_error_and_still_a_config_error(tmp_path, monkeypatch, capsys):
    """RunDirError names the run-directory problem; programs that caught ConfigError for it still do, and the
    command line catches every user error by their base class (exit 2, one line)."""
    from sapt.cli import main
    from sapt.errors import RunDirError, SaptError

    assert issubclass(RunDirError, ConfigError) and issubclass(ConfigError, SaptError)
    assert issubclass(ConfigError, ValueError)
    with RunLock(tmp_path):
        with pytest.raises(RunDirError):
            RunLock(tmp_path).acquire()
    # a user error raised by no particular subclass still exits 2 with its one line
    from sapt import cli

    def refuse(args):
        raise SaptError("refused,\n in one line")

    monkeypatch.setitem(cli.COMMANDS, "diagnose", refuse)
    capsys.readouterr()
    assert main(["diagnose", "--run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "sapt: error: refused, in one line\n"


def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            raise KeyError("boom")
    with RunLock(tmp_path):
        pass


def test_acquire_twice_on_one_object_is_a_bug(tmp_path):
    lock = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RuntimeError):
            lock.acquire()
    finally:
        lock.release()


def test_unwritable_place_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the run lock"):
        RunLock(tmp_path / "file" / "run").acquire()


HOLDER = """
import sys, time
from sapt.rundir.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_held_by_another_process_then_freed_by_its_death(tmp_path):
    run_dir = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"  # blocks until the child holds the lock
        with pytest.raises(ConfigError) as e:
            RunLock(run_dir).acquire()
        assert str(e.value) == f"{run_dir} " + MESSAGE.format(pid=proc.pid)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel releases the flock
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    with RunLock(run_dir):  # the process is reaped, so its files are closed and the flock gone
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
