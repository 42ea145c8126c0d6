"""One sapt process per run directory.

Two processes writing the same run directory would interleave stages, logs and metrics. `RunLock`
takes an exclusive `fcntl.flock` on RUN_DIR/.lock without waiting: a second holder, in another
process or in the same one, is refused at once with a `RunDirError` (sapt.errors) naming the holder's pid (written
into the lock file). The kernel releases a flock when its file is closed, including when the process
dies however it dies, so there is never a stale lock to clean up; the .lock file itself is left in
place on purpose (removing it would let two processes lock two different files of the same name). A
.lock that is a symbolic link is refused, not followed (O_NOFOLLOW): the pid would overwrite its target.
While the lock is held, `sapt.io` makes folders only below the directory and only while it is the one that
was locked, so a run directory deleted or moved mid-run stops the run instead of coming back half-way.

    with RunLock(cfg.output):
        ...  # train, write stages, metrics

Note: a forked child shares the open lock file, so the lock lasts until the child exits too.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from sapt.errors import RunDirError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".lock"


class RunLock:
    """Exclusive, non-blocking lock on a run directory; use as a context manager (or acquire/release)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.run_dir}: this RunLock is already held")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a .lock that is a symbolic link (a run directory copied with `cp -rs`, checked out
            # by DVC or git-annex) is refused, not followed: the pid written below would overwrite its target.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            if self.path.is_symlink():
                raise RunDirError(f"{self.path} is a symbolic link; sapt does not follow it (its target would be "
                                  "overwritten): remove it and run the same command again") from None
            raise RunDirError(f"{self.run_dir}: cannot create the run lock {self.path} "
                              f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"{self.run_dir} is in use by another sapt process (pid {holder}); "
                                  "wait for it or use another --output") from None
            raise RunDirError(f"{self.run_dir}: cannot lock {self.path} ({e.strerror or e})") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only informative; the flock is what guards the directory
        from sapt import io

        try:
            io.hold_run_dir(self.run_dir)  # from now on a write never makes the directory again (sapt.io)
        except OSError as e:  # it vanished in the instant since it was locked
            os.close(fd)
            raise RunDirError(f"{self.run_dir}: cannot lock it ({e.strerror or e})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            from sapt import io

            io.release_run_dir(self.run_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lock dropped without release() still frees the directory
        try:
            self.release()
        except Exception:
            pass


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
