"""seq-lora: one block, trained through every stage in turn (the forgetting baseline)."""
from __future__ import annotations

from sapt.methods.base import Method, register


@register
class SeqLoRA(Method):
    name = "seq-lora"
    summary = "one LoRA block trained on each task in turn, i.e. sequential fine-tuning"

    def block_index(self, t):
        return 0

    def add_stage(self, model, t, task_name):
        if model.n_tasks > 0:
            model.task_names.append(task_name)  # the same block keeps learning
        else:
            model.add_task(task_name)
        model.set_trainable(0, router=False)
