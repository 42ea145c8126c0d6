"""The files of one stage folder `stages/NN_<task>/`, written and read here only: its block and router
tensors and stage.json (phase "trained"), its reflection inputs (phase "replay"), the checkpoint of a stage
in training, and the run's training log.

Why here. The stage loop (sapt.train) decides *when* a phase is written and what it holds; the names, the
order of the files within a phase (the kill points of the resume tests sit between them) and the manifest
record after the last file are the run directory's business, as `sapt.rundir` describes it. Every file is
written atomically (`sapt.io`) and only counts once the manifest records it with its checksum.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError

from sapt import io
from sapt.errors import RunDirError
from sapt.rundir.layout import METRICS, PHASE_FILES, TRAIN_LOG, stage_folders
from sapt.rundir.lock import LOCK_NAME
from sapt.rundir.manifest import Manifest
from sapt.rundir.recovery import CHECKPOINT, kill_point

__all__ = ["checkpoint_path", "copy_trained_stages", "drop_checkpoint", "load_stage", "load_tensor_file",
           "read_replay_inputs", "read_stage_summary", "read_stage_tensors", "read_train_log", "save_trained_stage",
           "stage_summary_path", "train_log_path", "write_replay"]

ADAPTER, ROUTER, SUMMARY = PHASE_FILES["trained"][0], PHASE_FILES["trained"][1], PHASE_FILES["trained"][3]
REPLAY, REPLAY_STATS = PHASE_FILES["replay"]


def checkpoint_path(sdir: Path) -> Path:
    """Where a stage in training keeps its state after its last finished epoch (sapt.rundir.recovery)."""
    return Path(sdir) / CHECKPOINT


def drop_checkpoint(sdir: Path) -> None:
    """Delete the stage's checkpoint: its recorded files supersede it (left if killed right after them)."""
    checkpoint_path(sdir).unlink(missing_ok=True)


def stage_summary_path(sdir: Path) -> Path:
    return Path(sdir) / SUMMARY


def read_stage_summary(sdir: Path) -> dict[str, Any]:
    """stage.json of a trained stage; {} when the stage has none (not trained yet)."""
    path = stage_summary_path(sdir)
    return io.read_json(path) if path.exists() else {}


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a stage's (or an export's) safetensors file; an unreadable one is a damaged run, said in
    one line, not a crash."""
    try:
        return io.load_tensors(path)
    except (OSError, SafetensorError) as e:
        raise RunDirError(f"{path} cannot be read ({e}); run the same `sapt run` command again to redo "
                          "its stage") from None


def read_stage_tensors(sdir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The block and router tensors of a trained stage, for an export (`load_tensor_file`'s errors)."""
    return load_tensor_file(Path(sdir) / ADAPTER), load_tensor_file(Path(sdir) / ROUTER)


def load_stage(sdir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """The block tensors, router tensors and stage.json of a trained stage, as `save_trained_stage` wrote them."""
    sdir = Path(sdir)
    return io.load_tensors(sdir / ADAPTER), io.load_tensors(sdir / ROUTER), io.read_json(sdir / SUMMARY)


def save_trained_stage(sdir: Path, t: int, task: str, block: dict[str, torch.Tensor], router: dict[str, torch.Tensor],
                       summary: dict[str, Any], manifest: Manifest, method_files: Callable[[], list[str]]) -> None:
    """Phase "trained" of stage t: the block, the router, the method's own files (`method_files()` writes
    them and returns their names in the folder), then stage.json, recorded in the manifest last; the
    checkpoint is then dropped. The kill points of the resume tests sit between the files."""
    sdir = Path(sdir)
    io.save_tensors(sdir / ADAPTER, block, {"task": task})
    kill_point(f"stage{t}:between-files")
    io.save_tensors(sdir / ROUTER, router, {"task": task})
    files = [ADAPTER, ROUTER, *method_files()]
    io.write_json(sdir / SUMMARY, summary)
    kill_point(f"stage{t}:trained")
    manifest.record(sdir, "trained", [*files, SUMMARY])
    drop_checkpoint(sdir)


def write_replay(sdir: Path, t: int, rows: list[dict[str, Any]], stats: dict[str, Any], manifest: Manifest) -> None:
    """Phase "replay" of stage t: its reflection inputs (one row each) and their statistics, recorded."""
    io.write_jsonl(Path(sdir) / REPLAY, rows)
    kill_point(f"stage{t}:replay")
    io.write_json(Path(sdir) / REPLAY_STATS, stats)
    manifest.record(Path(sdir), "replay", PHASE_FILES["replay"])


def read_replay_inputs(sdir: Path) -> list[str]:
    """The reflection inputs of a stage, in the order they were written."""
    text = (Path(sdir) / REPLAY).read_text(encoding="utf-8")
    return [json.loads(line)["input"] for line in text.splitlines() if line]


def train_log_path(run_dir: Path) -> Path:
    """RUN_DIR/train_log.jsonl, which the stage trainer appends one line per optimiser step to."""
    return Path(run_dir) / TRAIN_LOG


def read_train_log(run_dir: Path) -> list[dict[str, Any]]:
    """The training log's records ([] when there is none); a blank line is skipped."""
    path = train_log_path(run_dir)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def copy_trained_stages(src: Path, dst: Path, method: str, output: str, also_ignore: tuple[str, ...] = ()) -> None:
    """Make `dst` (new) a run of `method` writing to `output` that has `src`'s trained and replay phases and
    nothing evaluated: what a benchmark seeds a method whose training is another's, bit for bit, with
    (bench/quality.py), so that running it only evaluates. The lock, the checkpoints, the results and
    `also_ignore` (the caller's own files) are not copied; config.yaml and each stage.json name `method`, and
    the manifest re-records each trained phase with the new stage.json and forgets each evaluation."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(METRICS, LOCK_NAME, "checkpoint*", *PHASE_FILES["evaluated"],
                                                            *also_ignore))
    # here, not at the top: read.py imports sapt.config, and the block types read this module's tensors
    from sapt.rundir.read import saved_config_values, write_run_config

    write_run_config(dst, {**(saved_config_values(dst) or {}), "method": method, "output": output})
    manifest = Manifest(dst)
    for sdir in stage_folders(dst):
        io.write_json(sdir / SUMMARY, {**read_stage_summary(sdir), "method": method})
        manifest.record(sdir, "trained", list(manifest.phase(sdir.name, "trained")))
        manifest.forget(sdir.name, ["evaluated"])
