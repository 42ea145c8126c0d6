"""seq-prompt: one soft prompt trained through every task in turn (prompt tuning, Lester et al. 2021, as a
sequential fine-tuning baseline). The same loop as seq-lora, on prompt blocks: it needs `--pet prompt`."""
from __future__ import annotations

from sapt.methods.base import register
from sapt.methods.seq_lora import SeqLoRA


@register
class SeqPrompt(SeqLoRA):
    name = "seq-prompt"
    pet = "prompt"
    summary = "one soft prompt (prompt tuning) trained on each task in turn, i.e. sequential prompt tuning"

    def refuses_pet(self, pet):
        return None if pet == "prompt" else f"seq-prompt trains a soft prompt: run it with --pet prompt (got pet: {pet})"
