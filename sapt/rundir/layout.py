"""Names in a run directory (see `sapt.rundir` for the tree): its files, its stage folders
`stages/NN_<task>`, and the files each phase of a stage writes."""
from __future__ import annotations

import sys
from pathlib import Path

from sapt.distributed import get_dist
from sapt.manifest import NAME as MANIFEST

CONFIG = "config.yaml"  # the resolved config of the run
METRICS = "metrics.json"  # the score matrix and the CL metrics
TIMING = "timing.json"  # seconds spent so far (apart from metrics.json, which stays byte-identical on resume)
TRAIN_LOG = "train_log.jsonl"  # one line per optimiser step
# `sapt eval --routing oracle`: each task scored by its own block alone after the last stage; write_metrics
# adds the routing loss to metrics.json while it matches the run's stages
ORACLE_ROUTING = "oracle_routing.json"
STAGES = "stages"  # the folder of the stage folders NN_<task>
# --unseen: the scores (and unseen/<task>.jsonl predictions) of tasks never trained on, in each stage folder
# (phase "evaluated") and, for the base model before stage 1, in RUN_DIR/unseen_base/ (recorded in
# manifest.json as a stage named "unseen_base", phase "evaluated").
UNSEEN_SCORES = "unseen_scores.json"
UNSEEN_PREDICTIONS = "unseen"
UNSEEN_BASE = "unseen_base"

# What each phase of a stage writes (inside its directory), in the order a run writes them.
PHASE_FILES = {"trained": ("adapter.safetensors", "router.safetensors", "memory.jsonl", "stage.json"),
               "replay": ("replay.jsonl", "replay_stats.json"),
               "evaluated": ("scores.json", "predictions", UNSEEN_SCORES, UNSEEN_PREDICTIONS)}

__all__ = ["CONFIG", "MANIFEST", "METRICS", "ORACLE_ROUTING", "PHASE_FILES", "STAGES", "TIMING", "TRAIN_LOG", "UNSEEN_BASE",
           "UNSEEN_PREDICTIONS", "UNSEEN_SCORES", "log",
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


def log(msg: str) -> None:
    """Progress for people: from the main process only when several run (accelerate launch)."""
    if get_dist().is_main:
        print(msg, file=sys.stderr, flush=True)
