"""The settings of SAPT's prompt-tuning blocks (`--pet prompt`): the run config's keys (`PromptOptions`:
`prompt_len`, `prompt_mlp_hidden`) and the bank's settings made from them and the run's seed (`PromptConfig`).
Read by the run config's check, so it imports no torch."""
from __future__ import annotations

from dataclasses import dataclass

from sapt.options import AT_LEAST_1, Bounds, option


@dataclass(frozen=True)
class PromptOptions:
    """The prompt type's keys of the run config (section block; `--pet prompt`)."""

    prompt_len: int = option(20, bounds=AT_LEAST_1,
                             section="block", help="virtual tokens of each task's soft prompt (--pet prompt)")
    # The release's SAPT-Prompt trains each prompt through a residual MLP, P + MLP(P), MLP = Linear(d, hidden)
    # -> ReLU -> Linear(hidden, d), hidden 800 (sapt.modules.blocks.prompt). 0: the prompt is trained directly.
    prompt_mlp_hidden: int = option(0, bounds=Bounds(0, note="0 = off"), section="block",
                                    help="--pet prompt: train each task's prompt reparameterised as P + MLP(P), an MLP "
                                         "of this hidden width (the release: 800); 0 = off")


OPTIONS = PromptOptions  # the registry's entry (sapt.modules.blocks.registry.block_options_type)


@dataclass(frozen=True)
class PromptConfig:
    """`n_virtual` virtual tokens per task; `seed` seeds the vocabulary sample each new prompt starts from;
    `mlp_hidden` > 0 reparameterises each prompt as P + MLP(P) with an MLP of that hidden width (0: off)."""

    n_virtual: int = 20
    seed: int = 42
    mlp_hidden: int = 0
