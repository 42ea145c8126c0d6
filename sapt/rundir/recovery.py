"""Crash safety of a stage in training: epoch checkpoints framed with their own checksum, the training
log trimmed back to what a resumed stage will not write again, and the kill hook the resume tests use."""
from __future__ import annotations

import hashlib
import io as _io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from sapt import io

KILL_ENV = "SAPT_TEST_KILL_AT"
KILL_SIGNAL_ENV = "SAPT_TEST_KILL_SIGNAL"


def kill_point(name: str, *flush: Any) -> None:
    """Test hook. If SAPT_TEST_KILL_AT (comma-separated) names this point, the process sends itself
    SIGKILL (or the signal named by SAPT_TEST_KILL_SIGNAL, e.g. SIGSTOP) right here, after flushing
    `flush` (open files). Points, with T the 0-based stage index (the NN of stages/NN_<task>) and E the
    1-based epoch:
        stageT:epochE:mid      in epoch E, after its first optimiser step (before its checkpoint)
        stageT:epochE          just after the checkpoint of epoch E is written
        stageT:router-fit      halfway through the stage's router fit (learn-then-route), before its files
        stageT:between-files   after adapter.safetensors, before router.safetensors and stage.json
        stageT:trained         after the stage's files, before manifest.json records them
        stageT:replay          after replay.jsonl, before replay_stats.json (reflection only)
        stageT:eval            during evaluation, after the first predictions file
        stageT:metrics         after the stage is recorded done, before metrics.json
    Unset (always, outside tests) it does nothing."""
    points = os.environ.get(KILL_ENV)
    if not points or name not in {p.strip() for p in points.split(",")}:
        return
    for f in flush:
        f.flush()
    sig = getattr(signal, os.environ.get(KILL_SIGNAL_ENV) or "SIGKILL")
    print(f"sapt: test hook {KILL_ENV}: {signal.Signals(sig).name} at {name}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


CHECKPOINT = "checkpoint.pt"
_CKPT_MAGIC = b"SAPT-CHECKPOINT-1\n"


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save of `state`, framed with its own sha256 (a damaged file is detected, not loaded), atomic."""
    buf = _io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    io.atomic_write_bytes(path, _CKPT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load_checkpoint(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    head = len(_CKPT_MAGIC) + 65
    if not data.startswith(_CKPT_MAGIC) or len(data) < head:
        raise CheckpointError("not a sapt checkpoint")
    digest, payload = data[len(_CKPT_MAGIC):head - 1].decode("ascii", "replace"), data[head:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError("it fails its checksum")
    try:
        return torch.load(_io.BytesIO(payload), weights_only=True)
    except Exception as e:  # a valid checksum of an unloadable file: written by something else
        raise CheckpointError(f"it cannot be loaded ({e})") from None


def trim_log(log_path: Path, t: int, epochs_done: int) -> None:
    """Drop the log lines that a resumed stage t will write again: those of later stages, of stage t
    from epoch `epochs_done` on, and any line cut short by a kill. The log then reads as if uninterrupted."""
    if not log_path.exists():
        return
    kept, dropped = [], False
    for line in log_path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            rec = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            rec = None
        if rec is None or rec.get("stage", -1) > t or (rec.get("stage") == t and rec.get("epoch", 0) >= epochs_done):
            dropped = True
        else:
            kept.append(line)
    if dropped:
        io.atomic_write_text(log_path, "".join(kept))


def as_random_state(state: Any) -> tuple:
    """`random.Random.getstate()` comes back from a checkpoint with lists where it had tuples."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
