"""Task data for continual learning: benchmark loaders, the built-in demo suite and prompt formats."""

from sapt.data.benchmark import (
    BENCHMARK_METRIC,
    TASK_ORDERS,
    load_benchmark,
    load_task,
    resolve_task_names,
)
from sapt.data.builtin import BUILTIN_TASKS, builtin_suite
from sapt.data.prompts import PROMPT_TEMPLATES, format_prompt
from sapt.data.types import DataError, Example, Task

__all__ = [
    "BENCHMARK_METRIC",
    "BUILTIN_TASKS",
    "DataError",
    "Example",
    "PROMPT_TEMPLATES",
    "TASK_ORDERS",
    "Task",
    "builtin_suite",
    "format_prompt",
    "load_benchmark",
    "load_task",
    "resolve_task_names",
]
