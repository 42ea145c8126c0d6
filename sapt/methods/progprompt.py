"""progprompt: Progressive Prompts (Razdaibiedina et al., 2023). A new soft prompt per task; the earlier
ones stay frozen, and the input is preceded by all of them concatenated, newest first:
[P_t; ...; P_1; x]. At test time every learned prompt is used, with no task id. Needs `--pet prompt`.
The paper trains each prompt through a residual MLP, P + MLP(P): the same module as SAPT-Prompt's
(`prompt_mlp_hidden` > 0, sapt.modules.blocks.prompt); off by default, as for SAPT."""
from __future__ import annotations

from sapt.methods.base import Method, register


@register
class ProgPrompt(Method):
    name = "progprompt"
    pet = "prompt"
    weighs_blocks = False  # the prefix is every prompt concatenated: mixing weights change nothing
    summary = ("Progressive Prompts, one soft prompt per task, the earlier ones frozen and concatenated before "
               "the input; at test time all of them, with no task id")

    def refuses_pet(self, pet):
        return None if pet == "prompt" else f"progprompt concatenates soft prompts: run it with --pet prompt (got pet: {pet})"

    def add_stage(self, model, t, task_name):
        model.blocks.set_prefix_mode("concat")  # the prefix is every prompt, concatenated, not a mixture
        super().add_stage(model, t, task_name)
