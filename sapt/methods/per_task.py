"""per-task: a fresh block per task used with the true task id: an oracle, and the single-task reference
scores s_j (its diagonal) that FWT of the other methods needs (`--reference`)."""
from __future__ import annotations

from sapt.methods.base import Method, one_hot_weights, register


@register
class PerTask(Method):
    name = "per-task"
    summary = "one {block} per task, used with the true task id: an oracle, and the single-task references"
    needs_task_id = True

    def weights(self, model, batch, task_index, training):
        return one_hot_weights(model, batch, task_index)
