"""Where a trained model is read from: a run directory, or an export of one.

A run directory (see `sapt.rundir`) holds each stage's block and router in stages/NN_<task>/, verified
against manifest.json (`trained_stages`). An export (`sapt export`, marked by EXPORT_MARKER) holds the same
tensors in another form: each task's block as a PEFT adapter, the router's keys stacked in
router.safetensors beside the query MLP and centre of the last stage (sapt.export, `read_export`). Both
have the run's config.yaml and tasks.json (the task definitions) at their root, so `load_run_config` and
`task_definitions` read either. The one thing that differs, each stage's tensors, is read here for a run
directory (`run_stage_tensors`) and by sapt.export for an export; `sapt.export.stage_tensors` takes either,
so that `sapt.train.load_trained` builds the same model from both. (The export's reader lives with its
writer, above this package: reading it from here made sapt.export -> sapt.rundir -> sapt.export a cycle.)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sapt import io
from sapt.rundir.layout import CONFIG, EXPORT_MARKER, METRICS, TASKS
from sapt.rundir.verify import trained_stages

if TYPE_CHECKING:
    import torch

__all__ = ["EXPORT_COPIES", "is_export", "run_stage_tensors", "write_export_copies"]

# The run's own files an export carries, under the same names: what makes it a model on its own (the config
# and the task definitions, which `sapt.load` reads) and, when the run has them, its scores.
EXPORT_COPIES = (CONFIG, TASKS, METRICS)


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder `sapt export` wrote (it holds EXPORT_MARKER)."""
    return (Path(path) / EXPORT_MARKER).is_file()


def run_stage_tensors(path: str | Path) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(task, block tensors, router tensors) of every trained stage of a run directory, in training order, as
    its stage files hold them (adapter.safetensors, router.safetensors: "key", "centre", "query_mlp.*"), each
    stage verified against the manifest first. Raises RunDirError for a damaged stage or a folder that is no
    run directory."""
    return [(name, io.load_tensors(sdir / "adapter.safetensors"), io.load_tensors(sdir / "router.safetensors"))
            for name, sdir in trained_stages(Path(path))]


def write_export_copies(run_dir: Path, out: Path, definitions: dict[str, str], with_metrics: bool) -> list[str]:
    """Into the export folder `out`: the run's config.yaml as it is, tasks.json with `definitions`, and (with
    `with_metrics`) its metrics.json as it is. Returns the names `sapt.load` reads back (config.yaml, tasks.json),
    which the export's marker checksums."""
    io.atomic_write_bytes(Path(out) / CONFIG, (Path(run_dir) / CONFIG).read_bytes())
    io.write_json(Path(out) / TASKS, {"definitions": definitions})
    if with_metrics:
        io.atomic_write_bytes(Path(out) / METRICS, (Path(run_dir) / METRICS).read_bytes())
    return [CONFIG, TASKS]
