"""IA3 as a SAPT block type: one scaling vector per task on every adapted module, mixed per input (package
docstring). Block t is `ia3_l[t]` of every adapted module, saved as `<module>.ia3_l` (PEFT's names)."""
from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.ia3.config import IA3Config
from sapt.modules.blocks.ia3.layer import MixtureIA3Linear, merged_ia3
from sapt.modules.blocks.routing import RoutingState
from sapt.modules.blocks.targets import find_targets, model_type

if TYPE_CHECKING:
    from sapt.config import BlockSection

KEY = "ia3_l"


class IA3Blocks(BlockType):
    """Mixture IA3 on k, v and the feed-forward down projection (`config.TARGET_PATTERNS`)."""

    name = "ia3"
    mergeable = True
    card_kind, card_tag, block_noun = "IA3", "ia3", "IA3 block"
    new_block = "ones (IA3's identity scaling)"

    def __init__(self, config: IA3Config | None = None):
        super().__init__()
        self.config = config or IA3Config()
        self.layers: dict[str, MixtureIA3Linear] = {}

    @classmethod
    def from_config(cls, block: BlockSection, seed: int) -> IA3Blocks:
        """The family's modules, as PEFT's IA3 defaults: no setting of its own."""
        return cls(IA3Config())

    def describe(self) -> str:
        return f"{len(self.layers)} modules adapted (IA3)"

    def attach(self, model: nn.Module, family: str, state: RoutingState) -> None:
        from sapt.models import ModelLoadError

        self.state = state
        names = find_targets(model, self.config.pattern(family))
        feedforward = re.compile(self.config.feedforward_pattern)
        if not names or all(feedforward.search(n) for n in names):
            raise ModelLoadError(f"model type {model_type(model)!r} has no separate k and v projections for IA3 blocks "
                                 "(T5's k/v, or self_attn.k_proj/v_proj); use --pet lora")
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = MixtureIA3Linear(getattr(parent, child), state, feedforward=bool(feedforward.search(name)))
            setattr(parent, child, layer)
            self.layers[name] = layer

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        return [layer.ia3_l[t] for layer in self.layers.values()]

    def block_state(self, t: int) -> dict[str, torch.Tensor]:
        return {f"{name}.{KEY}": layer.ia3_l[t].detach().cpu().contiguous() for name, layer in self.layers.items()}

    @torch.no_grad()
    def load_block(self, t: int, block: dict[str, torch.Tensor]) -> None:
        missing = {f"{n}.{KEY}" for n in self.layers} - set(block)
        if missing:
            raise ValueError(f"adapter is missing {len(missing)} tensors, e.g. {sorted(missing)[0]} (this run uses pet: ia3)")
        for name, layer in self.layers.items():
            p, saved = layer.ia3_l[t], block[f"{name}.{KEY}"]
            if tuple(saved.shape) != tuple(p.shape):
                raise ValueError(f"{name}.{KEY} has shape {tuple(saved.shape)}, this model's {tuple(p.shape)}")
            p.copy_(saved)

    def frozen_targets(self) -> list[str]:
        """The frozen Linear inside every IA3 layer."""
        return [f"{name}.base" for name in self.layers]

    def merged(self, weights: torch.Tensor) -> AbstractContextManager[None]:
        return merged_ia3(self.layers.values(), self.state, self.n_blocks, weights)

    # ---- the export and the model card -----------------------------------------------------------

    @classmethod
    def card_settings(cls, block: BlockSection, info: dict[str, Any]) -> list[tuple[str, str]]:
        from sapt.model_card import card_value

        return [("blocks", "IA3 scaling vectors, one per task, mixed per input: the outputs of k and v, the input "
                           "of the feed-forward down projection"),
                ("adapted modules", card_value(info["target_modules"])
                 + f" (input scaled: {card_value(info['feedforward_modules'])})")]
