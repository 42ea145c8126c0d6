"""The settings of SAPT's prompt-tuning blocks (`--pet prompt`: `prompt_len`, `prompt_mlp_hidden`, the seed)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptConfig:
    """`n_virtual` virtual tokens per task; `seed` seeds the vocabulary sample each new prompt starts from;
    `mlp_hidden` > 0 reparameterises each prompt as P + MLP(P) with an MLP of that hidden width (0: off)."""

    n_virtual: int = 20
    seed: int = 42
    mlp_hidden: int = 0
