"""Where a trained model is read from: a run directory, or an export of one.

A run directory (see `sapt.rundir`) holds each stage's block and router in stages/NN_<task>/, verified
against manifest.json (`trained_stages`). An export (`sapt export`, marked by EXPORT_MARKER) holds the same
tensors in another form: each task's block as a PEFT adapter, the router's keys stacked in
router.safetensors beside the query MLP and centre of the last stage (sapt.export, `read_export`). Both
have the run's config.yaml and tasks.json (the task definitions) at their root, so `load_run_config` and
`task_definitions` read either; `stage_tensors` gives the one thing that differs, each stage's tensors,
as a run's stage files hold them, so that `sapt.train.load_trained` builds the same model from both.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sapt import io
from sapt.rundir.layout import EXPORT_MARKER
from sapt.rundir.verify import trained_stages

if TYPE_CHECKING:
    import torch

__all__ = ["is_export", "stage_tensors"]


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder `sapt export` wrote (it holds EXPORT_MARKER)."""
    return (Path(path) / EXPORT_MARKER).is_file()


def stage_tensors(path: str | Path) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(task, block tensors, router tensors) of every trained stage, in training order, under the names of
    a run's stage files (adapter.safetensors, router.safetensors: "key", "centre", "query_mlp.*"), from a
    run directory (each stage verified against the manifest first) or from an export. Raises ConfigError
    for a damaged stage or export, or a folder that is neither."""
    path = Path(path)
    if is_export(path):
        from sapt.export import read_export  # the inverse of what it writes, kept beside it

        return read_export(path)
    return [(name, io.load_tensors(sdir / "adapter.safetensors"), io.load_tensors(sdir / "router.safetensors"))
            for name, sdir in trained_stages(path)]
