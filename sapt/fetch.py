"""`sapt fetch-benchmark`: download the public CL_Benchmark (SuperNI and Long_Sequence task data).

The archive (by default the GitHub zip of circle-hit/SAPT at main) is streamed to a temporary file next
to DEST, only its `CL_Benchmark/` folder is extracted into a temporary directory next to DEST, the layout
is checked, and only then is the directory renamed to DEST. An interrupted or failed fetch leaves DEST as
it was (absent, empty, or the previous copy with --force); never half written. The members are checked
before anything is extracted: unsafe paths, symbolic links, names used twice or both as a file and a
folder, and a total size over the cap (--max-bytes, 2 GiB by default; counted again while writing) are
refused.

DEST then holds `SuperNI/<task>/train.json`, `Long_Sequence/<task>/train.json`, ...: use it as
`sapt run --data-dir DEST --benchmark SuperNI ...`. `file://` URLs work too (a local copy of the zip).
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sapt.config import ConfigError

DEFAULT_URL = "https://github.com/circle-hit/SAPT/archive/refs/heads/main.zip"
FOLDER = "CL_Benchmark"
BENCHMARKS = ("SuperNI", "Long_Sequence")
CHUNK = 1 << 20
# The CL_Benchmark/ folder of the SAPT zip unpacks to well under this; the cap only stops an archive
# that would fill the disk (a zip of a few hundred KB can unpack to gigabytes). --max-bytes raises it.
DEFAULT_MAX_BYTES = 2 << 30


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BenchmarkSummary:
    dest: Path
    url: str
    tasks: dict[str, list[str]]  # benchmark -> tasks with a train.json
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # benchmark -> task folders without train.json
    files: int = 0
    bytes: int = 0

    def render(self) -> str:
        lines = [f"CL_Benchmark from {self.url}", f"  into {self.dest} ({self.files} files, {self.bytes / 1e6:.1f} MB)"]
        for bench, tasks in self.tasks.items():
            lines.append(f"  {bench}: {len(tasks)} tasks with train.json")
            missing = self.incomplete.get(bench)
            if missing:
                lines.append(f"    without train.json (skipped by the loader): {', '.join(missing)}")
        lines.append(f"use: sapt run --data-dir {self.dest} --benchmark {'|'.join(self.tasks)} ...")
        return "\n".join(lines)


# ---- steps ---------------------------------------------------------------------------------------
def download(url: str, path: Path, timeout: float = 60.0) -> int:
    """Stream `url` into `path` (fsynced). Returns the number of bytes."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(path, "wb") as f:
            total = resp.headers.get("Content-Length")
            n, last = 0, time.time()
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                n += len(chunk)
                if time.time() - last > 5:
                    last = time.time()
                    log(f"  {n / 1e6:.0f} MB" + (f" of {int(total) / 1e6:.0f} MB" if total else ""))
            f.flush()
            os.fsync(f.fileno())
    except urllib.error.HTTPError as e:
        raise ConfigError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ConfigError(f"cannot download {url}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, bad URLs
        raise ConfigError(f"cannot download {url}: {e}") from None
    return n


def benchmark_prefix(names: list[str]) -> PurePosixPath:
    """The path of the CL_Benchmark folder inside the archive (e.g. 'SAPT-main/CL_Benchmark')."""
    best = None
    for name in names:
        parts = PurePosixPath(name).parts
        if FOLDER in parts:
            prefix = PurePosixPath(*parts[: parts.index(FOLDER) + 1])
            if best is None or len(prefix.parts) < len(best.parts):
                best = prefix
    if best is None:
        raise ConfigError(f"the archive has no {FOLDER}/ folder (is it the SAPT repository zip?)")
    return best


def _member_path(info: zipfile.ZipInfo, prefix: PurePosixPath, into: Path) -> tuple[str, ...] | None:
    """The path of a member relative to CL_Benchmark/ (None if outside it); refuses paths and entry
    types that could write outside `into` or write something else than what the archive shows."""
    parts = PurePosixPath(info.filename).parts
    if len(parts) <= len(prefix.parts) or PurePosixPath(*parts[: len(prefix.parts)]) != prefix:
        return None
    rel = parts[len(prefix.parts):]
    if any(p in ("", ".", "..") for p in rel) or PurePosixPath(*rel).is_absolute():
        raise ConfigError(f"unsafe path in the archive: {info.filename}")
    if not into.joinpath(*rel).resolve().is_relative_to(into.resolve()):
        raise ConfigError(f"unsafe path in the archive: {info.filename}")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:  # extracted as a plain file holding the link target: never what was meant
        raise ConfigError(f"the archive member {info.filename} is a symbolic link; refusing the archive")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ConfigError(f"the archive member {info.filename} is not a file or a folder; refusing the archive")
    return rel


def benchmark_members(infos: list[zipfile.ZipInfo], prefix: PurePosixPath,
                      into: Path) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The members under CL_Benchmark/ with their relative paths, checked as a whole before anything is
    written: a name used twice, or both as a file and as a folder, would make the result depend on the
    member order (one silently overwrites or breaks the other), so such an archive is refused."""
    members = [(info, rel) for info in infos if (rel := _member_path(info, prefix, into)) is not None]
    files: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    for info, rel in members:
        for i in range(1, len(rel) if not info.is_dir() else len(rel) + 1):
            folders.setdefault(rel[:i], info.filename)
        if info.is_dir():
            continue
        if rel in files:
            raise ConfigError(f"the archive member {info.filename} appears twice; refusing the archive")
        files[rel] = info.filename
    for rel, name in files.items():
        if rel in folders:
            raise ConfigError(f"the archive member {name} is both a file and a folder "
                              f"(see {folders[rel]}); refusing the archive")
    return members


def declared_bytes(members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]) -> int:
    """The uncompressed size the archive claims for the members (trusted only to refuse early)."""
    return sum(info.file_size for info, _ in members)


def _too_big(max_bytes: int) -> ConfigError:
    return ConfigError(f"the archive's {FOLDER}/ unpacks to more than {max_bytes} bytes (the cap); "
                       f"if that is expected, raise it with --max-bytes N")


def _copy_capped(src: BinaryIO, dst: BinaryIO, budget: int, max_bytes: int) -> int:
    """Copy src to dst; returns the bytes copied. Counts what is really written, since the sizes an
    archive declares can lie, and stops as soon as the cap is passed."""
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        if n > budget:
            raise _too_big(max_bytes)
        dst.write(chunk)
    return n


def extract_benchmark(archive: Path, into: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """Extract the archive's CL_Benchmark/ contents into `into` (which exists), at most `max_bytes`
    uncompressed (a small zip can unpack to a disk-filling size). Returns (files, bytes)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ConfigError("the download is not a zip archive") from None
    with zf:
        infos = zf.infolist()
        members = benchmark_members(infos, benchmark_prefix([i.filename for i in infos]), into)
        if declared_bytes(members) > max_bytes:  # refuse early, before writing anything
            raise _too_big(max_bytes)
        files = n_bytes = 0
        for info, rel in members:
            target = into.joinpath(*rel)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    n_bytes += _copy_capped(src, dst, max_bytes - n_bytes, max_bytes)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                raise ConfigError(f"the archive member {info.filename} is damaged: {e}") from None
            files += 1
    return files, n_bytes


def verify_layout(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Tasks with a train.json per benchmark, and task folders without one. Raises if a benchmark
    folder is missing or has no usable task."""
    tasks, incomplete = {}, {}
    for bench in BENCHMARKS:
        d = root / bench
        if not d.is_dir():
            raise ConfigError(f"the archive's {FOLDER}/ has no {bench}/ folder")
        folders = sorted(p for p in d.iterdir() if p.is_dir())
        tasks[bench] = [p.name for p in folders if (p / "train.json").is_file()]
        incomplete[bench] = [p.name for p in folders if not (p / "train.json").is_file()]
        if not tasks[bench]:
            raise ConfigError(f"the archive's {FOLDER}/{bench}/ has no task folder with a train.json")
    return tasks, incomplete


def _check_dest(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ConfigError(f"{dest} exists and is not empty; use --force to replace it")


def _install(tmp: Path, dest: Path) -> None:
    """Move the finished directory to dest by a rename; a previous dest is renamed aside first and
    removed only once the new one is in place (put back if the rename fails)."""
    aside = None
    if dest.exists():
        if any(dest.iterdir()):
            aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
            os.replace(dest, aside / "previous")
        else:
            dest.rmdir()
    try:
        os.replace(tmp, dest)
    except BaseException:
        if aside is not None:
            os.replace(aside / "previous", dest)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def fetch_benchmark(dest: str | Path, url: str = DEFAULT_URL, force: bool = False,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> BenchmarkSummary:
    if max_bytes <= 0:
        raise ConfigError(f"--max-bytes must be a positive number of bytes, not {max_bytes}")
    dest = Path(dest).absolute()
    _check_dest(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.fetch."))
    try:
        archive = work / "archive.zip"
        log(f"sapt: downloading {url}")
        t0 = time.time()
        size = download(url, archive)
        log(f"sapt: {size / 1e6:.1f} MB in {time.time() - t0:.0f}s; extracting {FOLDER}/")
        tree = work / "tree"
        tree.mkdir()
        files, n_bytes = extract_benchmark(archive, tree, max_bytes)
        archive.unlink()
        tasks, incomplete = verify_layout(tree)
        _check_dest(dest, force)  # again: something may have appeared meanwhile
        _install(tree, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BenchmarkSummary(dest, url, tasks, {b: m for b, m in incomplete.items() if m}, files, n_bytes)
