"""Find the attention projections to adapt by module-name pattern and wrap them, as PEFT's injector does.

No model file is forked: any checkpoint whose module names follow the family's convention works
(T5, mT5, Flan-T5; LLaMA, Mistral, Qwen2, SmolLM), whatever its sizes (T5 with n_heads*d_kv != d_model too).
"""
from __future__ import annotations

import re

from torch import nn

from sapt.modules.blocks.lora.config import TARGET_PATTERNS
from sapt.modules.blocks.lora.layer import MixtureLoRALinear
from sapt.modules.blocks.routing import RoutingState

__all__ = ["TARGET_PATTERNS", "find_targets", "inject_mixture_lora"]


def find_targets(model: nn.Module, pattern: str) -> list[str]:
    """Names of the `nn.Linear` modules whose full name matches `pattern`."""
    regex = re.compile(pattern)
    return [n for n, m in model.named_modules() if regex.search(n) and isinstance(m, nn.Linear)]


def inject_mixture_lora(
    model: nn.Module, pattern: str, state: RoutingState, r: int, alpha: float, dropout: float = 0.0
) -> dict[str, MixtureLoRALinear]:
    """Replace every matching linear layer by a `MixtureLoRALinear`; returns them by name."""
    names = find_targets(model, pattern)
    if not names:
        raise ValueError(f"no module of the model matches the LoRA target pattern {pattern!r}")
    layers = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MixtureLoRALinear(getattr(parent, child), state, r, alpha, dropout)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers
