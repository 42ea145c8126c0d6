"""`sapt fetch-benchmark`: download the public CL_Benchmark (SuperNI and Long_Sequence task data).

The archive (by default the GitHub zip of circle-hit/SAPT at main) is streamed to a temporary file next
to DEST, only its `CL_Benchmark/` folder is extracted into a temporary directory next to DEST, the layout
is checked, and only then is the directory renamed to DEST. An interrupted or failed fetch leaves DEST as
it was (absent, empty, or the previous copy with --force); never half written.

DEST then holds `SuperNI/<task>/train.json`, `Long_Sequence/<task>/train.json`, ...: use it as
`sapt run --data-dir DEST --benchmark SuperNI ...`. `file://` URLs work too (a local copy of the zip).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sapt.config import ConfigError

DEFAULT_URL = "https://github.com/circle-hit/SAPT/archive/refs/heads/main.zip"
FOLDER = "CL_Benchmark"
BENCHMARKS = ("SuperNI", "Long_Sequence")
CHUNK = 1 << 20


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


def extract_benchmark(archive: Path, into: Path) -> tuple[int, int]:
    """Extract the archive's CL_Benchmark/ contents into `into` (which exists). Returns (files, bytes)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ConfigError("the download is not a zip archive") from None
    with zf:
        infos = zf.infolist()
        prefix = benchmark_prefix([i.filename for i in infos])
        files = n_bytes = 0
        root = into.resolve()
        for info in infos:
            parts = PurePosixPath(info.filename).parts
            if len(parts) <= len(prefix.parts) or PurePosixPath(*parts[: len(prefix.parts)]) != prefix:
                continue
            rel = parts[len(prefix.parts):]
            if any(p in ("", ".", "..") for p in rel) or PurePosixPath(*rel).is_absolute():
                raise ConfigError(f"unsafe path in the archive: {info.filename}")
            target = into.joinpath(*rel)
            if not target.resolve().is_relative_to(root):
                raise ConfigError(f"unsafe path in the archive: {info.filename}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            files += 1
            n_bytes += info.file_size
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


def fetch_benchmark(dest: str | Path, url: str = DEFAULT_URL, force: bool = False) -> BenchmarkSummary:
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
        files, n_bytes = extract_benchmark(archive, tree)
        archive.unlink()
        tasks, incomplete = verify_layout(tree)
        _check_dest(dest, force)  # again: something may have appeared meanwhile
        _install(tree, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BenchmarkSummary(dest, url, tasks, {b: m for b, m in incomplete.items() if m}, files, n_bytes)
