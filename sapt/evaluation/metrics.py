"""Continual-learning metrics from the score matrix, and a plain-text view of it.

Convention (0-based): matrix[i][j] is the score (0-100) on task j after training through task i;
entries with j > i are None (task j not seen yet). A run still in progress has fewer rows than
columns; the metrics then treat the last available row as final and cover tasks 0..T-1 only.

With T rows and a = matrix:
  AP   = mean_{j<T}   a[T-1][j]                                     average performance at the end
  F.Ra = mean_{j<T-1} max_{j<=i<=T-2} a[i][j] - a[T-1][j]           forgetting from each task's best
  BWT  = mean_{j<T-1} a[T-1][j] - a[j][j]                           backward transfer
  FWT  = mean_{j<T}   a[j][j] - s_j                                 forward transfer vs single-task LoRA
A row of None is a stage whose evaluation was skipped (`--eval-every K`, see `evaluated_rows`). AP needs the
last row, which is always evaluated. BWT and F.Ra need a[j][j], task j's score right after it was learned:
they are means over the tasks j < T-1 whose own row j was evaluated (the max of F.Ra over the evaluated rows
j..T-2, a[j][j] among them), and None when there is none; FWT likewise over the tasks j < T whose row j was
evaluated. Not interpolated from neighbouring rows: a[j][j] is the one score the definitions compare against,
and a later row has already forgotten some of it; fewer tasks, each measured, is the honest reading. With
every row evaluated these are the definitions above, computed in the same order (the same float bits).

The public SAPT scorer divides BWT by T (counting the last task, which cannot be forgotten) and
subtracts a leftover constant from FWT; here BWT is a mean over the T-1 tasks it is defined on and
FWT has no constant. Nothing is rounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float | None]]


def _cell(matrix: Matrix, i: int, j: int) -> float:
    row = matrix[i]
    if j >= len(row) or row[j] is None:
        raise ValueError(f"score matrix is missing a[{i}][{j}] (score on task {j} after task {i})")
    return float(row[j])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def evaluated_rows(matrix: Matrix) -> list[int]:
    """The indices of the rows that hold scores; a row of None only is a stage whose evaluation was skipped
    (`--eval-every`). An evaluated row always holds at least its own task's score, so no evaluated row is
    all None."""
    return [i for i, row in enumerate(matrix) if any(x is not None for x in row)]


def transfer_tasks(matrix: Matrix) -> list[int]:
    """The tasks j < T-1 that BWT and F.Ra average over: those whose own row j was evaluated (all of them
    when every row was)."""
    return [j for j in evaluated_rows(matrix) if j < len(matrix) - 1]


def cl_metrics(matrix: Matrix, single_task: Sequence[float] | None = None) -> dict[str, float | None]:
    """AP, F.Ra, BWT and FWT from the score matrix, using its last row as the final state.

    fra and bwt are None with a single row, or when no earlier task's own row was evaluated; fwt is None
    when single_task (the score of a LoRA trained on task j alone, per task) is not given. Skipped rows
    (all None): see the module's docstring; the last row must be evaluated.
    """
    T = len(matrix)
    if T == 0:
        raise ValueError("empty score matrix")
    rows = set(evaluated_rows(matrix))
    if T - 1 not in rows:
        raise ValueError(f"score matrix is missing its last row a[{T - 1}] (its stage was not evaluated): AP needs it")

    def a(i: int, j: int) -> float:
        return _cell(matrix, i, j)

    ap = _mean([a(T - 1, j) for j in range(T)])
    fra = bwt = None
    own = transfer_tasks(matrix)
    if own:
        fra = _mean([max(a(i, j) for i in range(j, T - 1) if i in rows) - a(T - 1, j) for j in own])
        bwt = _mean([a(T - 1, j) - a(j, j) for j in own])
    fwt = None
    if single_task is not None:
        if len(single_task) < T:
            raise ValueError(f"need {T} single-task scores, got {len(single_task)}")
        fwt = _mean([a(j, j) - float(single_task[j]) for j in range(T) if j in rows])
    return {"ap": ap, "fra": fra, "bwt": bwt, "fwt": fwt}


def short_name(task: str, width: int = 12) -> str:
    """A column-sized task name: 'task1572_samsum_summary' -> 't1572_samsum' (the number keeps
    SuperNI names distinct); other names are just cut to width."""
    m = re.fullmatch(r"task(\d+)_(.*)", task)
    if m:
        task = f"t{m.group(1)}_{m.group(2)}"
    return task[:width]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _table(tasks: Sequence[str], matrix: Matrix) -> list[str]:
    names = [short_name(t) for t in tasks]
    for i, row in enumerate(matrix):
        if len(row) > len(tasks):
            raise ValueError(f"matrix row {i} has {len(row)} scores but there are {len(tasks)} tasks")
    if len(matrix) > len(tasks):
        raise ValueError(f"matrix has {len(matrix)} rows but there are {len(tasks)} tasks")
    labels = [f"after {names[i]}" for i in range(len(matrix))]
    lw = max([len("stage")] + [len(s) for s in labels])
    cw = max([6] + [len(n) for n in names])  # "100.0" plus a space at least
    lines = ["stage".ljust(lw) + "".join(n.rjust(cw + 1) for n in names)]
    for label, row in zip(labels, matrix):
        cells = [_fmt(row[j]) if j < len(row) else "-" for j in range(len(tasks))]
        lines.append(label.ljust(lw) + "".join(c.rjust(cw + 1) for c in cells))
    return lines


def format_metrics(metrics: dict) -> str:
    """'AP 51.2  F.Ra 3.1  BWT -2.0  FWT n/a'."""
    parts = []
    for key, label in (("ap", "AP"), ("fra", "F.Ra"), ("bwt", "BWT"), ("fwt", "FWT")):
        v = metrics.get(key)
        parts.append(f"{label} {'n/a' if v is None else f'{v:.1f}'}")
    return "  ".join(parts)


def format_table(
    tasks: list[str],
    matrix: Matrix,
    metrics: dict,
    title: str | None = None,
    extra: dict[str, Matrix] | None = None,
) -> str:
    """The score matrix as a plain-text table (a row per stage, a column per task, 1 decimal, '-' for
    unseen), then the metrics line, then any extra matrices of the same shape (e.g. routing accuracy)
    under their names."""
    lines = [title] if title else []
    lines += _table(tasks, matrix)
    lines.append(format_metrics(metrics))
    for name, m in (extra or {}).items():
        lines += ["", name]
        lines += _table(tasks, m)
    return "\n".join(lines)


def metrics_problems(metrics: Any) -> list[str]:
    """What makes `metrics` (a metrics.json read back) unusable by report, plots and compare; [] if fine."""
    if not isinstance(metrics, dict):
        return ["not a JSON object"]
    problems = [f"no {key!r}" for key in ("tasks", "matrix", "method", "model", "eval_split") if key not in metrics]
    if problems:
        return problems
    tasks, matrix = metrics["tasks"], metrics["matrix"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        problems.append("'tasks' is not a list of names")
    elif not isinstance(matrix, list) or not all(
            isinstance(row, list) and len(row) == len(tasks)
            and all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in row)
            for row in matrix):
        problems.append("'matrix' is not a list of rows of one score (or null) per task")
    for key in ("ap", "fra", "bwt", "fwt"):
        v = metrics.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            problems.append(f"{key!r} is not a number")
    return problems
