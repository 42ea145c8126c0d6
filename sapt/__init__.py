"""Continual learning of language models with SAPT.

    import sapt
    result = sapt.run(model="tiny-llama", tasks=["topic", "sentiment"], output="runs/x")  # -> sapt.api.RunResult
    trained = sapt.load(result.run_dir)                                                     # -> sapt.api.TrainedRun
    trained.predict(["some input"])                                                         # -> [sapt.api.Answer]

`import sapt` is light: torch and transformers load when `run` or `load` is called (sapt.api).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sapt.version import __version__

if TYPE_CHECKING:
    from sapt.api import Answer, RunResult, TrainedRun

__all__ = ["Answer", "RunResult", "TrainedRun", "__version__", "load", "run"]


def run(config_file: Any = None, **kwargs: Any) -> RunResult:
    """Learn a task sequence, as `sapt run` does: the keys of a YAML config as keywords (see sapt.api.run)."""
    from sapt.api import run as _run

    return _run(config_file, **kwargs)


def load(run_dir: Any) -> TrainedRun:
    """A trained run directory, ready to answer (see sapt.api.load)."""
    from sapt.api import load as _load

    return _load(run_dir)


def __getattr__(name: str) -> Any:  # sapt.Answer, sapt.RunResult, sapt.TrainedRun without importing them up front
    if name in ("Answer", "RunResult", "TrainedRun"):
        from sapt import api

        return getattr(api, name)
    raise AttributeError(f"module 'sapt' has no attribute {name!r}")
