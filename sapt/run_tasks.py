"""A run's tasks, read as the run reads them: its benchmark's (or the built-in suite's) by name or order, then
`extra_tasks`, each checked first and split by the run's settings.

Its own module, below both the recipe (sapt.train) and unseen scoring (sapt.unseen), which both read tasks
this way: in train.py it made train -> unseen -> train a cycle of imports (issue 25). The tasks of --unseen
are read here too (`load_unseen_tasks`), so that unseen scoring takes the tasks, not the run config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sapt.config import ConfigError, RunConfig
from sapt.data import Task, builtin_suite, load_benchmark, load_task, resolve_task_names
from sapt.data.validate import validate_or_raise

__all__ = ["builtin_tasks", "configured_tasks", "load_run_tasks", "load_unseen_tasks", "split_settings"]


def load_run_tasks(cfg: RunConfig) -> list[Task]:
    """The run's tasks in training order: its benchmark's (or the built-in suite's), then `extra_tasks`."""
    tasks = configured_tasks(cfg, cfg.tasks, cfg.order)
    split = split_settings(cfg)
    for folder in map(Path, cfg.extra_tasks):
        if folder.name in {t.name for t in tasks}:
            raise ConfigError(f"{folder}: the run already has a task named {folder.name!r}")
        validate_or_raise(folder.parent.parent, folder.parent.name, [folder.name], **split)
        tasks.append(load_task(folder.parent.parent, folder.parent.name, folder.name, **split))
    return tasks


def load_unseen_tasks(cfg: RunConfig, tasks: list[Task]) -> list[Task]:
    """The tasks of `--unseen`: of the same benchmark (or the built-in suite), never trained on; refused if
    the run trains on one of them. Only their evaluation split is scored; their training answers decide, as
    for any task, whether an answer ends at its first line break (`sapt.evaluation.generation.one_line_answers`)."""
    if not cfg.unseen:
        return []
    trained = sorted(set(cfg.unseen) & {t.name for t in tasks})
    if trained:
        raise ConfigError(f"unseen: task(s) {', '.join(trained)} are trained on by this run; an unseen task never is")
    from sapt.data import DataError

    what = "unseen (--unseen): "
    try:  # eval_only: an unseen task is never trained or validated on, so it needs only what its evaluation uses
        return configured_tasks(cfg, list(cfg.unseen), what=what, eval_only=True)
    except DataError as e:  # own data: "tasks not found" alone did not say that --unseen named them
        raise DataError(f"{what}{e}") from None


def configured_tasks(cfg: RunConfig, names: list[str] | None, order: int | None = None, what: str = "",
                     eval_only: bool = False) -> list[Task]:
    """Tasks of the run's benchmark by name (or order; all when neither), or of the built-in suite when
    it has no data_dir, checked first and split as the run splits them. `what` prefixes a built-in error.
    `eval_only`: tasks only evaluated (--unseen), which need only their evaluation examples (`load_task`)."""
    if cfg.data_dir is None:
        if order is not None:  # the orders are the benchmarks' (O-LoRA's numbering): never silently dropped
            raise ConfigError(f"order {order}: the task orders are the benchmark's (SuperNI 1-2, Long_Sequence 1-6) "
                              "and need --data-dir DIR; the built-in suite takes --tasks a,b,c")
        return builtin_tasks(cfg, names, what)
    names = resolve_task_names(cfg.data_dir, cfg.benchmark, names, order)
    split = {**split_settings(cfg), **({"eval_only": True} if eval_only else {})}
    validate_or_raise(cfg.data_dir, cfg.benchmark, names, **split)  # every file, all problems at once
    return load_benchmark(cfg.data_dir, cfg.benchmark, tasks=names, **split)


def builtin_tasks(cfg: RunConfig, names: list[str] | None, what: str = "") -> list[Task]:
    """Tasks of the built-in suite (all when `names` is None), with the run's subsets applied: they apply
    to the built-in suite too, so a quick run can be made quicker. `what` prefixes the error (a config key)."""
    tasks = builtin_suite(seed=cfg.seed)
    if names:
        by_name = {t.name: t for t in tasks}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"{what}unknown built-in task(s): {', '.join(unknown)} (have: {', '.join(by_name)})")
        tasks = [by_name[n] for n in names]
    for t in tasks:
        if cfg.max_train_per_task:
            t.train = t.train[: cfg.max_train_per_task]
        if cfg.max_eval_per_task:
            t.eval = t.eval[: cfg.max_eval_per_task]
    return tasks


def split_settings(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of `sapt.data.load_task` that the run config sets."""
    return dict(val_size=cfg.val_size, max_train=cfg.max_train_per_task, max_eval=cfg.max_eval_per_task, seed=cfg.seed,
                input_field=cfg.input_field, output_field=cfg.output_field)
