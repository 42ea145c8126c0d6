"""The lines a run prints about its data before the first stage trains.

A user who brings their own data (`--data-dir DIR --benchmark NAME`) cannot otherwise see what the loader
made of it until the scores come out wrong: which split the scores are computed on, whether evaluation
came from their test file or was carved out of train, which metric scores the task, what a prompt looks
like once the template has wrapped it, and in what order the tasks are learned. So the run says it, in a
few lines per task, through the run's log (stderr unless --quiet, and RUN_DIR/run.log):

    sapt: task order: alpha -> beta (alphabetical: no --tasks or --order given; the benchmark names no order)
    sapt: task 1/2 alpha: 8 train / 1 validation / 3 evaluation (held out from train.jsonl, 3 of its 12 examples:
          no test file); metric em (exact match: labels.json lists the labels)
    sapt:   prompt "Classify the sentiment.\\n\\nInput: sentence number 1\\nOutput: " (24 tokens)
    sapt:   target "pos" + EOS (4 tokens)

(the second line is one line). The texts are shown with JSON's escapes, so a line break in a prompt reads
as \\n and the line stays one line; long ones keep their start and end.
"""

from __future__ import annotations

import json

from sapt.data.benchmark import BENCHMARK_METRIC
from sapt.data.prompts import format_prompt
from sapt.data.types import Task

__all__ = ["METRIC_TITLES", "SHOWN_CHARS", "order_line", "shown", "task_lines", "training_prompt"]

SHOWN_CHARS = 300  # of a prompt or a target, before its middle is replaced by " ... "

# The scorer's names (sapt.evaluation.scoring.METRICS) as people say them.
METRIC_TITLES = {"em": "exact match", "rougeL": "ROUGE-L"}


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` in double quotes with JSON's escapes (a newline reads \\n), at most about `limit` characters of
    it: a longer one keeps its start and its end with " ... " between. The middle goes because the ends
    say the most about a prompt, the definition at its start and the template's "Output:" at its end (the
    model's own cut, `sapt.batching.truncate_middle`, keeps the same two parts)."""
    if len(text) > limit:
        head = limit // 2
        start = json.dumps(text[:head], ensure_ascii=False)[:-1]  # without its closing quote
        end = json.dumps(text[-(limit - head):], ensure_ascii=False)[1:]  # without its opening quote
        return f"{start} ... {end}"
    return json.dumps(text, ensure_ascii=False)


def order_line(names: list[str], reason: str) -> str:
    """"sapt: task order: a -> b -> c (reason)"; `reason` from `sapt.data.benchmark.task_order_reason`."""
    return f"sapt: task order: {' -> '.join(names)} ({reason})"


def _evaluation(task: Task) -> str:
    n = len(task.eval)
    if task.eval_source is None:  # a generated task (the built-in suite): its own test split
        return "the built-in suite's generated test split"
    if task.eval_split == "test":
        if n == task.eval_source_size:
            return f"from {task.eval_source}, all {n} example{'s' if n != 1 else ''}"
        return f"from {task.eval_source}, {n} of its {task.eval_source_size} examples: --max-eval-per-task"
    return f"held out from {task.eval_source}, {n} of its {task.eval_source_size} examples: no test file"


def _metric(task: Task, benchmark: str | None) -> str:
    """The metric as the scorer names it, what it is, and why the loader chose it (its rule: the benchmark's
    metric, else exact match when labels.json lists the labels, else ROUGE-L)."""
    title = METRIC_TITLES.get(task.metric, task.metric)
    if benchmark is None:
        return f"metric {task.metric} ({title})"
    if benchmark in BENCHMARK_METRIC:
        why = f"the {benchmark} benchmark's metric"
    elif task.labels is not None:
        why = "labels.json lists the labels"
    else:
        why = "no labels.json, so answers are scored as free text"
    return f"metric {task.metric} ({title}: {why})"


def training_prompt(task: Task, family: str, template: str | None) -> tuple[str, str] | None:
    """(the prompt, the target) of the task's first training example, as `sapt.batching.encode` builds them;
    None when the task has no training example."""
    if not task.train:
        return None
    example = task.train[0]
    return format_prompt(task.definition, example.input, family, template), example.outputs[0]


def task_lines(t: int, n_tasks: int, task: Task, family: str, template: str | None, benchmark: str | None = None,
               tokens: tuple[int, int] | None = None, max_source: int | None = None,
               max_target: int | None = None) -> list[str]:
    """The start-up lines of task `t` (0-based) of `n_tasks`: split sizes, where evaluation comes from and the
    metric; then its first training prompt and target. `benchmark`: the benchmark folder the task was read
    from (None for the built-in suite). `tokens`: the prompt's and the target's token counts (the target's
    with EOS) before any cut, so that a cut to `max_source` / `max_target` is said."""
    lines = [f"sapt: task {t + 1}/{n_tasks} {task.name}: {len(task.train)} train / {len(task.val)} validation / "
             f"{len(task.eval)} evaluation ({_evaluation(task)}); {_metric(task, benchmark)}"]
    pair = training_prompt(task, family, template)
    if pair is None:
        return lines
    prompt, target = pair
    prompt_note = target_note = ""
    if tokens is not None:
        prompt_note = f" ({tokens[0]} tokens"
        if max_source is not None and tokens[0] > max_source:
            prompt_note += f", cut in the middle to {max_source}: --max-source-length"
        prompt_note += ")"
        target_note = f" ({tokens[1]} tokens"
        if max_target is not None and tokens[1] > max_target:
            target_note += f", cut to {max_target}: --max-target-length"
        target_note += ")"
    lines.append(f"sapt:   prompt {shown(prompt)}{prompt_note}")
    lines.append(f"sapt:   target {shown(target)} + EOS{target_note}")
    return lines
