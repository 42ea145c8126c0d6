"""Names in a run directory (see `sapt.rundir` for the tree): its files, its stage folders
`stages/NN_<task>`, and the files each phase of a stage writes."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from sapt.distributed import get_dist
from sapt.rundir.manifest import NAME as MANIFEST

CONFIG = "config.yaml"  # the resolved config of the run
METRICS = "metrics.json"  # the score matrix and the CL metrics
TIMING = "timing.json"  # seconds spent so far (apart from metrics.json, which stays byte-identical on resume)
TRAIN_LOG = "train_log.jsonl"  # one line per optimiser step
# each task's definition, in training order: {"definitions": {task: definition}}. The router learned from
# prompts that hold them, so `predict` needs them back; kept apart from stage.json and metrics.json, whose
# bytes are part of what a resumed run must reproduce, and rewritten only when `sapt learn` adds a task.
TASKS = "tasks.json"
# `sapt eval --routing oracle`: each task scored by its own block alone after the last stage; write_metrics
# adds the routing loss to metrics.json while it matches the run's stages
ORACLE_ROUTING = "oracle_routing.json"
# `sapt eval --no-definitions`: the final model's scores and routing accuracy with every evaluation prompt
# stripped of its task's definition, as `predict` is asked without one; beside metrics.json, never in it
METRICS_NO_DEFINITIONS = "metrics_no_definitions.json"
STAGES = "stages"  # the folder of the stage folders NN_<task>
# --unseen: the scores (and unseen/<task>.jsonl predictions) of tasks never trained on, in each stage folder
# (phase "evaluated") and, for the base model before stage 1, in RUN_DIR/unseen_base/ (recorded in
# manifest.json as a stage named "unseen_base", phase "evaluated").
UNSEEN_SCORES = "unseen_scores.json"
UNSEEN_PREDICTIONS = "unseen"
UNSEEN_BASE = "unseen_base"
# The file that marks a folder as an export of a run (`sapt export`): what `sapt.load` and `predict` then
# read instead of stage files (sapt.rundir.source), and what a run refuses to write into (plan)
EXPORT_MARKER = "sapt_export.json"

# What each phase of a stage writes (inside its directory), in the order a run writes them.
PHASE_FILES = {"trained": ("adapter.safetensors", "router.safetensors", "memory.jsonl", "stage.json"),
               "replay": ("replay.jsonl", "replay_stats.json"),
               "evaluated": ("scores.json", "predictions", UNSEEN_SCORES, UNSEEN_PREDICTIONS)}

__all__ = ["CONFIG", "EXPORT_MARKER", "MANIFEST", "METRICS", "ORACLE_ROUTING", "PHASE_FILES", "RUN_LOG", "STAGES", "TASKS", "TIMING",
           "TRAIN_LOG", "UNSEEN_BASE", "UNSEEN_PREDICTIONS", "UNSEEN_SCORES", "is_quiet", "log", "open_run_log", "set_quiet",
           "stage_dir", "stage_folders", "stage_name", "stage_order", "stage_task"]


def stage_name(t: int, task: str) -> str:
    """The folder name of stage `t` (0-based), which learned `task`: "00_topic"."""
    return f"{t:02d}_{task}"


def stage_task(name: str) -> str:
    """The task of a stage folder name (what follows "NN_"); a name without "_" is returned whole."""
    return name.split("_", 1)[1] if "_" in name else name


def stage_order(name: str) -> tuple[int, str]:
    """The sort key of a stage folder name: its stage index as a number, then the name. The index is
    written with two digits at least, so from stage 100 on the names are longer: sorted as strings,
    "100_x" would come before "10_x" and a run of more than 100 stages would read as one with a gap.
    A name without a numeric "NN_" (not a stage folder sapt made) sorts after every stage."""
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (sys.maxsize, name)


def stage_dir(run_dir: Path, t: int, task: str) -> Path:
    return run_dir / STAGES / stage_name(t, task)


def stage_folders(run_dir: Path) -> list[Path]:
    """Everything in RUN_DIR/stages, in stage order (`stage_order`); [] if there is no such folder."""
    stages = run_dir / STAGES
    return sorted(stages.iterdir(), key=lambda p: stage_order(p.name)) if stages.is_dir() else []


RUN_LOG = "run.log"  # the log() lines of every command that ran the run (sapt run, learn), with their time


class _LogState:
    """Where log() writes besides stderr. `quiet` (sapt run --quiet): not on stderr; `run_log`: the file the
    lines are also appended to, RUN_DIR/run.log while the main process holds the run directory."""
    quiet = False
    run_log: Path | None = None


def set_quiet(quiet: bool) -> bool:
    """Keep log()'s lines (and the progress bars, `sapt.progress`) off stderr, or not; returns what it was."""
    was, _LogState.quiet = _LogState.quiet, bool(quiet)
    return was


def is_quiet() -> bool:
    return _LogState.quiet


def open_run_log(run_dir: Path | None) -> None:
    """Append log()'s lines to RUN_DIR/run.log from now on (None: stop). Called by the main process once it
    holds the run directory's lock, so one process appends, into the directory it locked."""
    _LogState.run_log = None if run_dir is None else Path(run_dir) / RUN_LOG


def log(msg: str) -> None:
    """Progress for people: from the main process only when several run (accelerate launch); on stderr
    unless quiet, and appended to RUN_DIR/run.log while a run holds its directory.

    A plain append per line, not an atomic write: a line cut short by a kill costs nothing, and rewriting
    the file per line would cost a copy of it. Only inside the held run directory (`sapt.io.check_held`):
    after it was deleted or replaced, nothing is appended (the run stops at its next write, saying why)."""
    if not get_dist().is_main:
        return
    if not _LogState.quiet:
        print(msg, file=sys.stderr, flush=True)
    path = _LogState.run_log
    if path is not None:
        from sapt import io  # here: sapt.io imports torch, and this module is read by light commands too

        try:
            io.check_held(path)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        except OSError:  # the directory is gone or replaced: the run's own next write says so
            _LogState.run_log = None
