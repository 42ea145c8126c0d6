"""`evaluate_tasks`: score a model on tasks one after the other, the loop every evaluation of sapt runs.

Why one routine. The stage loop (each stage's row of the score matrix), the unseen-task scoring (--unseen,
no task id) and `sapt eval` (the final model, maybe oracle-routed or without definitions) each wrote the
same loop: encode the task's evaluation split (once per task), generate under the run's precision, score,
keep the routing accuracy. Written three times, a change to one (the encoding cache, the precision) had two
places to miss, and the three could score the same model differently. Here the loop is written once; a
caller says what differs in arguments (the task index given to the method's weights, prompts with or
without definitions, a cache) and writes the files it owns through sapt.rundir as each task is scored.

It yields each task's result as soon as it is scored, so that a caller writes that task's predictions
before the next task is evaluated: a run killed mid-evaluation keeps what was written (the resume tests
kill it right after the first predictions file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from sapt.batching import Encoded, encode
from sapt.data import Task
from sapt.distributed import get_dist
from sapt.evaluation.generation import encode_task_split, evaluate_task
from sapt.methods import Method
from sapt.modules.sapt_model import SAPTModel

if TYPE_CHECKING:
    from sapt.config import DecodingSection

__all__ = ["Decoding", "TaskResult", "decoding_of", "evaluate_tasks"]


@dataclass(frozen=True)
class Decoding:
    """How evaluation prompts are built and answered: the run config's fields of the same names."""
    batch_size: int  # eval_batch_size
    max_new_tokens: int
    max_source_length: int
    max_target_length: int
    stop_at_newline: bool = False
    precision: str = "no"  # mixed_precision: "no", "bf16" or "fp16" (the autocast of the generation)


def decoding_of(decoding: DecodingSection, mixed_precision: str) -> Decoding:
    """The run config's decoding section (and its autocast precision) as evaluation takes it."""
    return Decoding(decoding.eval_batch_size, decoding.max_new_tokens, decoding.max_source_length,
                    decoding.max_target_length, decoding.stop_at_newline, mixed_precision)


@dataclass
class TaskResult:
    """One task's evaluation: its position in the list, its score (0-100), routing accuracy (None where the
    method does not route or no task id is given) and one record per example (`evaluate_task`)."""
    index: int
    task: Task
    score: float
    routing_accuracy: float | None
    records: list[dict]


def evaluate_tasks(model: SAPTModel, tasks: Sequence[Task], method: Method | None, decoding: Decoding, *,
                   task_ids: bool = True, definitions: bool = True,
                   cache: dict[str, list[Encoded]] | None = None) -> Iterator[TaskResult]:
    """Score `tasks` in order through `method`'s evaluation weights (None: the base model, no block),
    yielding each task's result as soon as it is scored.

    `task_ids`: task i is given task id i (its position), as a stage's own tasks are; False gives none, as
    for an unseen task (--unseen). `definitions`: False builds every prompt without its task's definition
    (`sapt eval --no-definitions`, as `predict` is asked without one). `cache`: the encoded evaluation split
    by task name, filled and reused across calls (the stage loop encodes each task once per run); a prompt
    without definitions is never cached, nor read from it."""
    dist = get_dist()
    for j, task in enumerate(tasks):
        items = _encoded(model, task, decoding, definitions, cache)
        with dist.autocast(decoding.precision):
            score, accuracy, records = evaluate_task(model, task, items, decoding.batch_size, decoding.max_new_tokens,
                                                     j if task_ids else None, method, decoding.stop_at_newline)
        yield TaskResult(j, task, score, accuracy, records)


def _encoded(model: SAPTModel, task: Task, decoding: Decoding, definitions: bool,
             cache: dict[str, list[Encoded]] | None) -> list[Encoded]:
    """The task's evaluation split as prompts, from `cache` when it holds them (and fills it)."""
    if not definitions:
        return encode(model.tokenizer, model.family, "", task.eval, decoding.max_source_length,
                      decoding.max_target_length, model.template)
    if cache is not None and task.name in cache:
        return cache[task.name]
    items = encode_task_split(model, task, "eval", decoding.max_source_length, decoding.max_target_length)
    if cache is not None:
        cache[task.name] = items
    return items
