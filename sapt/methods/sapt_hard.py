"""sapt-hard: trained exactly as SAPT; at evaluation each input uses only its top-1 block."""
from __future__ import annotations

from sapt.methods.base import register, top1_weights
from sapt.methods.sapt import SAPT


@register
class SAPTHard(SAPT):
    name = "sapt-hard"
    summary = "SAPT's router in training; at test time each input uses the one block the router ranks first"
    trained_as = "sapt"  # only evaluation differs

    def weights(self, model, batch, task_index, training):
        if training:
            return None
        return top1_weights(model.routing_weights(batch["input_ids"], batch["prompt_mask"]))
