"""A run's results on disk, read and written here only: each evaluated stage's scores.json and predictions,
metrics.json and timing.json, and what `sapt eval` adds beside them (oracle_routing.json,
metrics_no_definitions.json).

Why one module. metrics.json was opened by hand in seven places (report, plots, the model card, diagnose,
the API, the stage loop, `sapt report`), each with its own idea of "missing" and "not one sapt wrote"; a
change of its name or of its checks had seven places to miss. Here there is one reader that checks
(`read_metrics`: what report, plots and compare need), one that does not (`read_metrics_as_written`: a
progress question such as "has this task's row been scored?"), and one that says why there is nothing to
read (`metrics_or_why`, for the model card). Every write is atomic (`sapt.io`), so a killed process leaves
the old file or the new one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sapt import io
from sapt.errors import RunDirError
from sapt.rundir.layout import (
    METRICS, METRICS_NO_DEFINITIONS, ORACLE_ROUTING, TIMING, UNSEEN_BASE, UNSEEN_PREDICTIONS, UNSEEN_SCORES,
)
from sapt.rundir.manifest import Manifest

__all__ = ["EVAL", "PREDICTIONS", "SCORES", "evaluation_names", "has_predictions", "metrics_or_why",
           "prediction_file", "read_metrics", "read_metrics_as_written", "read_oracle_routing", "read_predictions",
           "read_scores", "read_timing", "record_evaluation", "unseen_base_dir",
           "write_eval_predictions", "write_eval_scores", "write_metrics_file", "write_metrics_no_definitions",
           "write_oracle_routing", "write_predictions", "write_scores", "write_timing"]

SCORES = "scores.json"  # in a stage folder (and unseen_base/): {"scores", "routing_accuracy", "seconds"}
PREDICTIONS = "predictions"  # the folder of a stage's predictions/<task>.jsonl


# ---- metrics.json ----------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json, checked to be one sapt wrote (`sapt.evaluation.metrics.metrics_problems`); a missing or foreign
    one is a RunDirError whose line says which."""
    from sapt.evaluation.metrics import metrics_problems  # pure, and light: the CL metrics

    path = Path(run_dir) / METRICS
    if not path.exists():
        raise RunDirError(f"{run_dir}: no metrics.json (not a sapt run, or no stage evaluated yet)")
    metrics = io.read_json(path)
    problems = metrics_problems(metrics)
    if problems:
        raise RunDirError(f"{path}: not a sapt metrics file ({'; '.join(problems)})")
    return metrics


def read_metrics_as_written(run_dir: str | Path) -> dict[str, Any] | None:
    """metrics.json as it is, unchecked (None when the run has evaluated no stage). An unreadable file
    raises (OSError, ValueError): the caller decides whether that means "not yet" or an error."""
    path = Path(run_dir) / METRICS
    return io.read_json(path) if path.exists() else None


def metrics_or_why(run_dir: str | Path) -> tuple[dict[str, Any] | None, str]:
    """metrics.json if it is one sapt wrote, else None and why, in a sentence (the model card prints it
    where the scores would be; an export does not depend on them)."""
    from sapt.evaluation.metrics import metrics_problems

    path = Path(run_dir) / METRICS
    if not path.exists():
        return None, "the run has no metrics.json (no stage evaluated yet), so there are no scores to report"
    try:
        metrics = io.read_json(path)
    except (OSError, ValueError) as e:
        return None, f"the run's metrics.json cannot be read ({e}); `sapt report` says more"
    problems = metrics_problems(metrics)
    if problems:
        return None, f"the run's metrics.json is not one sapt wrote ({'; '.join(problems)}), so it is not reported"
    return metrics, ""


def write_metrics_file(run_dir: Path, metrics: dict[str, Any]) -> None:
    io.write_json(Path(run_dir) / METRICS, metrics)


def read_timing(run_dir: Path) -> dict[str, float] | None:
    """timing.json as written, or None before the run has evaluated a stage."""
    path = Path(run_dir) / TIMING
    return io.read_json(path) if path.exists() else None


def write_timing(run_dir: Path, timing: dict[str, float]) -> None:
    """timing.json: wall-clock seconds, kept apart so that metrics.json stays byte-identical across resumes."""
    io.write_json(Path(run_dir) / TIMING, timing)


# ---- what `sapt eval` writes beside metrics.json ------------------------------------------------------
def read_oracle_routing(run_dir: Path) -> dict[str, Any] | None:
    """oracle_routing.json (`sapt eval --routing oracle`), or None if the run was never scored so."""
    path = Path(run_dir) / ORACLE_ROUTING
    return io.read_json(path) if path.exists() else None


def write_oracle_routing(run_dir: Path, content: dict[str, Any]) -> Path:
    path = Path(run_dir) / ORACLE_ROUTING
    io.write_json(path, content)
    return path


def write_metrics_no_definitions(run_dir: Path, content: dict[str, Any]) -> Path:
    path = Path(run_dir) / METRICS_NO_DEFINITIONS
    io.write_json(path, content)
    return path


# ---- `sapt eval`: RUN_DIR/eval/ -------------------------------------------------------------------------
EVAL = "eval"  # what `sapt eval` scores after the last stage, apart from the stages' own files


def write_eval_predictions(run_dir: Path, task: str, records: list[dict], suffix: str = "") -> None:
    """RUN_DIR/eval/predictions<suffix>/<task>.jsonl (suffix "_no_definitions" for --no-definitions)."""
    io.write_jsonl(Path(run_dir) / EVAL / f"{PREDICTIONS}{suffix}" / f"{task}.jsonl", records)


def write_eval_scores(run_dir: Path, content: dict[str, Any], oracle: bool, suffix: str = "") -> Path:
    """RUN_DIR/eval/scores<suffix>.json, or oracle_scores<suffix>.json for --routing oracle; returns its path."""
    path = Path(run_dir) / EVAL / f"{'oracle_scores' if oracle else 'scores'}{suffix}.json"
    io.write_json(path, content)
    return path


# ---- a stage's evaluation ------------------------------------------------------------------------------
def evaluation_names(unseen: bool = False) -> tuple[str, str]:
    """(predictions folder, scores file) of an evaluation inside its folder: a stage's own tasks
    (predictions/, scores.json) or, with `unseen`, the unseen tasks scored after a stage (unseen/,
    unseen_scores.json). The base model's unseen scores have a folder of their own (`unseen_base_dir`) and
    the plain names."""
    return (UNSEEN_PREDICTIONS, UNSEEN_SCORES) if unseen else (PREDICTIONS, SCORES)


def unseen_base_dir(run_dir: Path) -> Path:
    """RUN_DIR/unseen_base/: the unseen tasks scored on the base model; the manifest knows it as a stage of
    that name (phase "evaluated")."""
    return Path(run_dir) / UNSEEN_BASE


def prediction_file(task: str, folder: str = PREDICTIONS) -> str:
    """The name, relative to its stage folder, of a task's predictions: predictions/<task>.jsonl."""
    return f"{folder}/{task}.jsonl"


def record_evaluation(folder: Path, summary: dict[str, Any], files: list[str], manifest: Manifest) -> None:
    """Phase "evaluated" of a stage: its scores.json, then the manifest's record of it with `files` (the
    predictions and unseen files already written)."""
    write_scores(folder, summary)
    manifest.record(Path(folder), "evaluated", [SCORES, *files])


def write_predictions(folder: Path, name: str, records: list[dict]) -> None:
    """`folder`/`name` (a relative path such as predictions/<task>.jsonl): one record per example."""
    io.write_jsonl(Path(folder) / name, records)


def write_scores(folder: Path, summary: dict[str, Any], name: str = SCORES) -> None:
    """A stage's (or unseen_base's) scores file: scores.json, or unseen_scores.json for --unseen."""
    io.write_json(Path(folder) / name, summary)


def read_scores(folder: Path, name: str = SCORES) -> dict[str, Any] | None:
    """A stage folder's scores file as written, or None when the stage was not evaluated."""
    path = Path(folder) / name
    return io.read_json(path) if path.exists() else None


def has_predictions(folder: Path, name: str = PREDICTIONS) -> bool:
    """Whether a stage folder holds a predictions folder (its evaluation began)."""
    return (Path(folder) / name).is_dir()


def read_predictions(folder: Path, task: str, name: str = PREDICTIONS) -> tuple[Path, list[dict] | None]:
    """The records of `folder`/predictions/<task>.jsonl (None: no such file), with the file's path for
    messages. Split on "\\n" alone: str.splitlines also splits on U+2028, U+0085 and the like, which JSON Lines
    leaves raw inside strings (IMDB reviews hold U+0085: the routing figure of a Long Sequence run failed)."""
    import json

    path = Path(folder) / name / f"{task}.jsonl"
    if not path.exists():
        return path, None
    return path, [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
