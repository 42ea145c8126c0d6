"""RUN_DIR/manifest.json: which parts of which stages are done, with a sha256 of every file they wrote.

A stage is done in three phases, each recorded here (atomically, after its files are written) with the
checksums of its files, relative to the stage directory:

    trained    adapter.safetensors, router.safetensors, stage.json
    replay     replay.jsonl, replay_stats.json           (only with reflection)
    evaluated  scores.json, predictions/<task>.jsonl ...

On resume a phase counts as done only if it is recorded here *and* every one of its files is present
with the recorded checksum. Files on disk that the manifest does not vouch for are never trusted: they
are rewritten. `sapt.train` decides what a failure means (a damaged trained/replay phase invalidates
its stage and every later one; a damaged evaluation is only redone).

    {"format": 1,
     "stages": {"00_topic": {"trained": {"adapter.safetensors": "<sha256>", ...}, "replay": {...}, ...}},
     "config_changes": [{"stage": 1, "epoch": 1, "changes": {"lr": [0.01, 0.001]}}]}
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

from sapt import io

FORMAT = 1
NAME = "manifest.json"
PHASES = ("trained", "replay", "evaluated")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ManifestError(ValueError):
    pass


class Manifest:
    """The manifest of one run directory. Every change is written at once (atomically)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / NAME
        self.data: dict[str, Any] = {"format": FORMAT, "stages": {}, "config_changes": []}
        self.damaged = False  # the file existed but could not be read: nothing in it is trusted
        if self.path.exists():
            try:
                data = io.read_json(self.path)
                if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("stages"), dict):
                    raise ManifestError("unexpected content")
            except (ValueError, OSError):
                self.damaged = True
            else:
                self.data = {"config_changes": [], **data}

    def reset(self) -> None:
        """Forget everything (an unreadable manifest vouches for nothing); written at once."""
        self.data = {"format": FORMAT, "stages": {}, "config_changes": []}
        self.damaged = False
        self.save()

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        io.write_json(self.path, self.data)

    # ---- phases --------------------------------------------------------------------------------------
    def phase(self, stage: str, phase: str) -> dict[str, str] | None:
        return self.data["stages"].get(stage, {}).get(phase)

    def record(self, stage_dir: Path, phase: str, files: Iterable[str | Path]) -> None:
        """Record `phase` of the stage in `stage_dir` as done, with the checksums of `files` (in it)."""
        assert phase in PHASES, phase
        sums = {}
        for f in files:
            rel = Path(f).relative_to(stage_dir) if Path(f).is_absolute() else Path(f)
            sums[rel.as_posix()] = sha256_file(stage_dir / rel)
        self.data["stages"].setdefault(stage_dir.name, {})[phase] = sums
        self.save()

    def problems(self, stage_dir: Path, phase: str) -> list[str] | None:
        """None if the phase is not recorded; else the files that are missing or fail their checksum
        (an empty list: the phase is done and intact)."""
        sums = self.phase(stage_dir.name, phase)
        if sums is None:
            return None
        bad = []
        for rel, digest in sums.items():
            path = stage_dir / rel
            if not path.is_file():
                bad.append(f"{rel} is missing")
            elif sha256_file(path) != digest:
                bad.append(f"{rel} fails its checksum")
        return bad

    def forget(self, stage: str, phases: Iterable[str] = PHASES) -> None:
        entry = self.data["stages"].get(stage)
        if entry is None:
            return
        for p in phases:
            entry.pop(p, None)
        if not entry:
            del self.data["stages"][stage]
        self.save()

    # ---- config changes ------------------------------------------------------------------------------
    def record_change(self, stage: int, changes: dict[str, list]) -> None:
        self.data.setdefault("config_changes", []).append({"stage": stage, "changes": changes})
        self.save()

    @property
    def config_changes(self) -> list[dict[str, Any]]:
        return list(self.data.get("config_changes", []))
