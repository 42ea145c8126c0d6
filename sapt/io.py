"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch


class WriteRefused(OSError):
    """A write that cannot or must not happen, with a message of its own (one line, naming the path)."""

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(WriteRefused):
    """A write found no space left: the message names the file and the space it needed. The file is
    left as it was (old or absent), so the same command resumes once space is freed."""


class FileContentError(ValueError):
    """A file sapt wrote (JSON) that cannot be read back: the message names the file."""


class RunDirGoneError(WriteRefused):
    """The run directory this process holds was deleted, moved or replaced while the run was writing it."""


# The run directories this process holds (`sapt.rundir.lock.RunLock`), innermost last: (absolute path, (st_dev,
# st_ino) when it was locked). A write below one of them makes its missing folders below it only, after
# checking that it is still the directory that was locked. Why: a write that made every missing parent
# would, after the run directory was deleted (or moved) mid-run, re-create it half-way (no config.yaml,
# so every later command refuses it) and let the run "finish" with exit 0; and a second run that had
# meanwhile made a new directory at that path (with a lock of its own: ours is on the deleted file)
# would get this run's files mixed into its own. The run stops instead, naming the directory.
_HELD: list[tuple[str, tuple[int, int]]] = []


def hold_run_dir(run_dir: str | Path) -> None:
    """Guard the writes below `run_dir` (an existing directory) until `release_run_dir`."""
    st = os.stat(run_dir)
    _HELD.append((os.path.abspath(run_dir), (st.st_dev, st.st_ino)))


def release_run_dir(run_dir: str | Path) -> None:
    root = os.path.abspath(run_dir)
    for i in range(len(_HELD) - 1, -1, -1):
        if _HELD[i][0] == root:
            del _HELD[i]
            return


def check_held(path: str | Path) -> str | None:
    """The held run directory that `path` lies in (or is), checked to be still the one that was locked
    (RunDirGoneError if it is gone or replaced); None if `path` is in no held run directory."""
    target = os.path.abspath(path)
    held = next(((root, ident) for root, ident in reversed(_HELD)
                 if target == root or target.startswith(root.rstrip(os.sep) + os.sep)), None)
    if held is None:
        return None
    root, ident = held
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise RunDirGoneError(errno.ENOENT, _gone(root)) from None
    if (st.st_dev, st.st_ino) != ident:
        raise RunDirGoneError(errno.ESTALE, f"{root}: the run directory was replaced while the run was writing "
                                            "it (deleted and made again, perhaps by another run); the run stops "
                                            "without writing into the new one")
    return root


def _gone(root: str) -> str:
    return (f"{root}: the run directory is gone (deleted or moved while the run was writing it); the run "
            "stops without making it again: run the same command to start afresh, or with --output at its "
            "new place to resume it there")


def _make_parents(path: Path) -> None:
    """`path`'s missing parent folders; below a held run directory, only those below it, and only while
    that directory is still the one that was locked (else RunDirGoneError)."""
    root = check_held(path.parent)
    if root is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    folder = Path(root)
    for part in Path(os.path.abspath(path.parent)).relative_to(root).parts:
        folder = folder / part
        try:
            folder.mkdir(exist_ok=True)  # never parents=True: a folder that vanished is not made again
        except FileNotFoundError:
            raise RunDirGoneError(errno.ENOENT, _gone(root)) from None


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Read per call, not once at import: a caller (a test, a service) may set it after sapt is imported.
    Linux reports it in /proc/self/status (kernel 4.7+), which leaves it untouched; elsewhere it is read by
    setting it and putting it back at once, os.umask(0) then os.umask(old). That swap is not atomic: a file
    another thread creates in between would get mode 0666, so it is only the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a new file gets from open(): 0666 less the umask. mkstemp makes its file 0600 (a temporary
    file must not be readable by others while it is written); the finished file, renamed into place, is a
    result teammates on shared storage are meant to read as the umask says (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        _make_parents(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(e, path, len(data)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # before the rename: the file appears whole, with its final mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(e, path, len(data)) from None
        raise


def _write_error(e: OSError, path: Path, size: int) -> OSError:
    """What a failed write of `path` raises: a DiskFullError (`_disk_full`), or the error naming `path`, the
    file the caller asked for, not the temporary file it was being written to (`.NAME.xxxx.tmp`, which the
    user never named and which is gone): "compare --out DIR" said ".DIR.xxxx.tmp: Is a directory"."""
    e = _disk_full(e, path, size)
    if not isinstance(e, WriteRefused) and e.filename is not None:
        e.filename, e.filename2 = str(path), None
    return e


def _disk_full(e: OSError, path: Path, size: int) -> OSError:
    """A DiskFullError for ENOSPC / EDQUOT (the path, the bytes to write, the bytes free); else `e`."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return e
    try:
        free_bytes = shutil.disk_usage(path.parent).free
        free = f"{free_bytes:,} bytes free"
        # ENOSPC also means the file system ran out of inodes, with bytes to spare: say which it is
        out_of_inodes = e.errno == errno.ENOSPC and os.statvfs(path.parent).f_favail == 0
    except OSError:
        free_bytes, free, out_of_inodes = None, "free space unknown", False
    if out_of_inodes:
        return DiskFullError(e.errno, f"{path}: no free inodes left on the device ({free}, but no room for another "
                                      "file); delete some files and run the same command again to resume")
    if e.errno == errno.ENOSPC and free_bytes is not None and free_bytes > size:
        # neither bytes nor inodes look exhausted, yet the file system refused (space reserved for root,
        # a file system's own metadata full, a quota): say what it said, not a cause sapt cannot see
        return DiskFullError(e.errno, f"{path}: no space left on the device, the file system says (writing "
                                      f"{size:,} bytes, although it counts {free} and inodes free: space reserved "
                                      "for root, its metadata full, or a quota); free some space and run the same "
                                      "command again to resume")
    return DiskFullError(e.errno, f"{path}: no space left on the device (writing {size:,} bytes, {free}); "
                                  "free some space and run the same command again to resume")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FileContentError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise FileContentError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
