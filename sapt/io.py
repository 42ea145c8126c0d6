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


class DiskFullError(OSError):
    """A write found no space left: the message names the file and the space it needed. The file is
    left as it was (old or absent), so the same command resumes once space is freed."""

    def __str__(self) -> str:
        return str(self.strerror)


class FileContentError(ValueError):
    """A file sapt wrote (JSON) that cannot be read back: the message names the file."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _disk_full(e, path, len(data)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _disk_full(e, path, len(data)) from None
        raise


def _disk_full(e: OSError, path: Path, size: int) -> OSError:
    """A DiskFullError for ENOSPC / EDQUOT (the path, the bytes to write, the bytes free); else `e`."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return e
    try:
        free = f"{shutil.disk_usage(path.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
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
