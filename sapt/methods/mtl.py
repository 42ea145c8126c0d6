"""mtl: one block trained on every task at once, in a single stage (the upper bound, a one-row matrix)."""
from __future__ import annotations

from sapt.data import Task
from sapt.methods.base import register
from sapt.methods.seq_lora import SeqLoRA


@register
class MTL(SeqLoRA):
    name = "mtl"
    summary = "one LoRA block trained on all tasks at once, the multi-task upper bound, not continual"

    def stages(self, tasks):
        """A single stage named "all", over every task's items, each with its own definition."""
        return [Task(name="all", definition="", metric="em", train=[], val=[], eval=[], eval_split=tasks[0].eval_split)]

    def training_items(self, model, task, tasks, decoding):
        from sapt.evaluation.generation import encode_task_split

        return tuple([e for other in tasks for e in encode_task_split(
            model, other, split, decoding.max_source_length, decoding.max_target_length)] for split in ("train", "val"))

    def training_size(self, t, task, tasks):
        return sum(len(other.train) for other in tasks)

    def eval_tasks(self, tasks, t):
        return tasks

    def run_metrics(self, matrix, single):
        """One row over every task: AP is its mean; nothing to forget or transfer."""
        return {"ap": sum(matrix[0]) / len(matrix[0]), "fra": None, "bwt": None, "fwt": None}

    def cannot_extend(self):
        return "an mtl run trains all its tasks at once; it cannot learn one more"
