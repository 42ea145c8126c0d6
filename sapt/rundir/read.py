"""What a run directory holds, read back: its config, and the scores, timing and replay statistics
its stage files record (metrics.json and timing.json are made from these)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sapt import io
from sapt.config import RunConfig, from_saved
from sapt.errors import RunDirError
from sapt.rundir.layout import (
    CONFIG, EXPORT_MARKER, TASKS, UNSEEN_BASE, UNSEEN_SCORES, log, stage_dir, stage_folders, stage_task,
)

if TYPE_CHECKING:
    from sapt.data import Task

__all__ = ["absolute_data_dir", "collect_matrices", "collect_unseen", "has_run_config", "load_run_config", "replay_stats", "run_timing",
           "saved_config_values", "task_definitions", "write_run_config", "write_task_definitions"]


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config of a run directory, or of an export of one (`sapt export` copies config.yaml).

    A relative `data_dir` (config.yaml of a run made before sapt stored it absolute, `absolute_data_dir`)
    is read against the current directory, with a warning once per run directory: that is where every
    older sapt read it, so an older run keeps working from where it always worked. Against the run
    directory's parent instead would guess where the user stood when the run started, and a wrong guess
    scores other data in silence; the warning names the folder that is read and how to read another."""
    if (Path(run_dir) / "router.json").is_file() and not (Path(run_dir) / CONFIG).exists():
        raise RunDirError(f"{run_dir} is an export written by an older sapt (no {CONFIG}, no {EXPORT_MARKER}): "
                          "it cannot be loaded as a model; run `sapt export` again from its run directory")
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a sapt run directory (no config.yaml)")
    cfg = from_saved(path)
    if cfg.data_dir is not None and not os.path.isabs(cfg.data_dir):
        absolute = os.path.abspath(cfg.data_dir)
        if os.path.abspath(run_dir) not in _WARNED_RELATIVE:
            _WARNED_RELATIVE.add(os.path.abspath(run_dir))
            log(f"sapt: warning: {Path(run_dir) / CONFIG}: data_dir {cfg.data_dir!r} is relative (written by an "
                f"older sapt); it is read against the current directory, as {absolute}; give `sapt eval` "
                "--data-dir DIR to read another")
        cfg.data_dir = absolute
    return cfg


# The run directories whose relative data_dir was warned about in this process (`load_run_config`): one
# command loads a run's config several times (eval: the tasks, then the model), and says it once.
_WARNED_RELATIVE: set[str] = set()


def absolute_data_dir(cfg: RunConfig) -> RunConfig:
    """`cfg` with its data_dir made absolute against the current directory, as a new run stores it in
    config.yaml: a relative one named other data for every later command started from another folder
    (`sapt eval --run RUN` read it against its own current directory). os.path.abspath, not
    Path.resolve: a symbolic link in the path the user gave stays the name it is stored under."""
    if cfg.data_dir is None or os.path.isabs(cfg.data_dir):
        return cfg
    return dataclasses.replace(cfg, data_dir=os.path.abspath(cfg.data_dir))


def write_run_config(run_dir: Path, values: dict[str, Any]) -> None:
    """RUN_DIR/config.yaml: the resolved config (`sapt.config.to_dict`), keys in field order."""
    io.atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(values, sort_keys=False))


def has_run_config(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CONFIG).is_file()


def saved_config_values(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/config.yaml as plain values, unchecked ({} for an empty file), or None when it is missing or
    cannot be read as a mapping: for comparing a run's settings, where a bad file is a refusal, not a crash."""
    try:
        saved = yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None
    return saved if isinstance(saved, dict) else None


def write_task_definitions(run_dir: Path, tasks: list[Task]) -> None:
    """RUN_DIR/tasks.json: each task's definition in training order; left as it is when it already says so
    (a resumed run does not rewrite it)."""
    content = {"definitions": {t.name: t.definition for t in tasks}}
    path = Path(run_dir) / TASKS
    try:
        if io.read_json(path) == content:
            return
    except (OSError, ValueError):
        pass
    io.write_json(path, content)


def task_definitions(run_dir: str | Path) -> dict[str, str]:
    """Each trained task's definition ({} when none is known), from RUN_DIR/tasks.json; for a run made
    before that file existed, from the first row of each stage's replay.jsonl, which records it."""
    run_dir = Path(run_dir)
    try:
        definitions = io.read_json(run_dir / TASKS)["definitions"]
        if isinstance(definitions, dict) and all(isinstance(v, str) for v in definitions.values()):
            return dict(definitions)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = {}
    for sdir in stage_folders(run_dir):
        try:
            with open(sdir / "replay.jsonl", encoding="utf-8") as f:
                row = json.loads(f.readline() or "{}")
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and isinstance(row.get("definition"), str):
            found[row.get("task") or stage_task(sdir.name)] = row["definition"]
    return found


def collect_matrices(run_dir: Path, tasks: list[Task], stages: list[Task] | None = None,
                     stages_done: int | None = None) -> tuple[list[list], list[list]]:
    """Score and routing-accuracy matrices of the first `stages_done` stages (None: all of them), ending at
    the last one evaluated. Row i holds the tasks that stage i scored (0..i, or all of them for mtl's single
    stage), None elsewhere; a stage before that last one with no scores.json is a row of None: its
    evaluation was skipped (--eval-every), and the stage loop evaluates every stage it does not skip before
    it reports, so a row within `stages_done` is missing for no other reason."""
    matrix, routing, rows = [], [], 0
    for i, stage in enumerate((stages or tasks)[:stages_done]):
        path = stage_dir(run_dir, i, stage.name) / "scores.json"
        if not path.exists():
            matrix.append([None] * len(tasks))
            routing.append([None] * len(tasks))
            continue
        data = io.read_json(path)
        matrix.append([data["scores"].get(t.name) for t in tasks])
        routing.append([data["routing_accuracy"].get(t.name) for t in tasks])
        rows = i + 1  # up to here, the matrix ends at an evaluated row
    return matrix[:rows], routing[:rows]


def collect_unseen(run_dir: Path, stages: list[Task], names: list[str],
                   rows: int | None = None) -> tuple[list | None, list[list]]:
    """The scores of the unseen tasks `names` (--unseen): on the base model (None until scored) and one row
    per stage evaluated so far (a task a method cannot score is None). `rows`: the stages of the score
    matrix (`collect_matrices`), whose skipped ones (--eval-every) are rows of None here too; None: the
    rows stop at the first gap."""
    base_path = run_dir / UNSEEN_BASE / "scores.json"
    base = None
    if base_path.exists():
        scores = io.read_json(base_path)["scores"]
        base = [scores.get(n) for n in names]
    matrix = []
    for i, stage in enumerate(stages if rows is None else stages[:rows]):
        path = stage_dir(run_dir, i, stage.name) / UNSEEN_SCORES
        if not path.exists():
            if rows is None:
                break
            matrix.append([None] * len(names))  # a skipped row of the score matrix
            continue
        scores = io.read_json(path)["scores"]
        matrix.append([scores.get(n) for n in names])
    return base, matrix


def run_timing(run_dir: Path, stages: list[Task]) -> dict[str, float]:
    """Seconds spent so far training the blocks, making the reflection inputs and evaluating, summed over
    the stages from their files (a resumed run counts what each phase took when it ran), and their total."""
    parts = {"train_s": ("stage.json", "seconds"), "reflection_s": ("replay_stats.json", "seconds"),
             "eval_s": ("scores.json", "seconds")}
    timing = {key: 0.0 for key in parts}
    for i, stage in enumerate(stages):
        sdir = stage_dir(run_dir, i, stage.name)
        for key, (name, field) in parts.items():
            if (sdir / name).exists():
                timing[key] += float(io.read_json(sdir / name).get(field) or 0.0)
    timing = {k: round(v, 1) for k, v in timing.items()}
    timing["total_s"] = round(sum(timing.values()), 1)
    return timing


def replay_stats(run_dir: Path, tasks: list[Task]) -> dict[str, Any]:
    """Per task: how many replay inputs, and how well-formed / distinct / novel the generated ones are."""
    out = {}
    for i, task in enumerate(tasks):
        path = stage_dir(run_dir, i, task.name) / "replay_stats.json"
        if path.exists():
            stats = io.read_json(path)
            out[task.name] = {k: stats[k] for k in ("source", "wanted", "count", "well_formed_fraction",
                                                     "distinct_fraction", "novel_fraction") if k in stats}
    return out
