"""The plain data records every other module sees.

Loaders (real benchmark or built-in suite) all produce `Task`s, so trainers and evaluators never
touch JSON or file layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad or missing task data; the message names the file (or folder) and the problem."""


@dataclass(frozen=True)
class Example:
    input: str
    outputs: tuple[str, ...]  # one or more references; outputs[0] is the training target


@dataclass
class Task:
    name: str
    definition: str
    metric: str  # "em" (exact match) or "rougeL"
    train: list[Example]
    val: list[Example]  # carved from train.json, used for model selection
    eval: list[Example]  # test.json if present, else a held-out part of train.json
    eval_split: str  # "test" or "heldout-train"
    labels: list[str] | None = None
    # Where the evaluation examples were read, for the run's start-up lines: the file's name ("test.jsonl", or
    # the train file they were held out of) and how many examples it holds; None for generated tasks. Not
    # compared: the same examples from train.json or train.jsonl are the same task.
    eval_source: str | None = field(default=None, compare=False)
    eval_source_size: int | None = field(default=None, compare=False)
