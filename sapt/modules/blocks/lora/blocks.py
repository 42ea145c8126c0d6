"""LoRA as a SAPT block type: one rank-r update per task on every adapted Linear, mixed per input.

    y = W x + b + sum_i w_i(x) * (alpha / r) * B_i A_i x        (the layer: `layer.MixtureLoRALinear`)

Block t is the pair (A_t, B_t) of every adapted projection. Its saved names are PEFT's, by module path
in the backbone: `<module>.lora_A.weight` (r, in) and `<module>.lora_B.weight` (out, r), which `export.py`
maps to a standard PEFT LoRA adapter (`sapt export`). A fused q/k/v projection (Phi-3, GPT-NeoX, Falcon) is
adapted on its q and v parts, named `<module>.q.lora_A.weight` etc. (`fused`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.lora.config import LoRAConfig, LoRAOptions
from sapt.modules.blocks.lora.fused import MixtureLoRASlice
from sapt.modules.blocks.lora.inject import inject_mixture_lora
from sapt.modules.blocks.lora.layer import MixtureLoRALinear
from sapt.modules.blocks.lora.losses import l2_loss, orthogonality_loss
from sapt.modules.blocks.lora.merge import merged_lora
from sapt.modules.blocks.routing import RoutingState
from sapt.modules.blocks.targets import check_user_targets

if TYPE_CHECKING:
    from sapt.config import BlockSection


class LoRABlocks(BlockType):
    """Mixture LoRA on the Linears matched by `config.pattern(family)` (q and v by default, else the user's
    --target-modules)."""

    name = "lora"
    extra_losses = ("orthogonality", "l2")
    mergeable = True
    card_kind, card_tag, block_noun, new_block = "LoRA", "lora", "LoRA block", "zeros (B = 0)"
    Options = LoRAOptions  # lora_r, lora_alpha, lora_dropout, target_modules (config.py)

    def __init__(self, config: LoRAConfig | None = None):
        super().__init__()
        self.config = config or LoRAConfig()
        self.layers: dict[str, MixtureLoRALinear] = {}

    @classmethod
    def from_config(cls, block: BlockSection, seed: int) -> LoRABlocks:
        """r, alpha, dropout (`lora_r`, `lora_alpha`, `lora_dropout`) and --target-modules (None: q and v)."""
        o: LoRAOptions = block.options
        return cls(LoRAConfig(o.lora_r, o.lora_alpha, o.lora_dropout, target_modules=o.target_modules))

    def describe(self) -> str:
        return f"{len(self.layers)} projections adapted"

    def attach(self, model: nn.Module, family: str, state: RoutingState) -> None:
        c = self.config
        self.state = state
        if c.target_modules is not None and c.target_pattern is None:  # a user's --target-modules
            check_user_targets(model, c.target_modules, c.pattern(family))
        self.layers = inject_mixture_lora(model, c.pattern(family), state, c.r, c.alpha, c.dropout)

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in (layer.lora_A[t], layer.lora_B[t])]

    def keep_whole(self) -> set[nn.Parameter]:
        return {p for layer in self.layers.values() for p in (*layer.lora_A, *layer.lora_B)}

    def block_state(self, t: int) -> dict[str, torch.Tensor]:
        """Block t of every adapted projection, named by module path (PEFT-like names)."""
        state = {}
        for name, layer in self.layers.items():
            state[f"{name}.lora_A.weight"] = layer.lora_A[t].detach().cpu().contiguous()
            state[f"{name}.lora_B.weight"] = layer.lora_B[t].detach().cpu().contiguous()
        return state

    @torch.no_grad()
    def load_block(self, t: int, block: dict[str, torch.Tensor]) -> None:
        missing = {f"{n}.lora_{x}.weight" for n in self.layers for x in "AB"} - set(block)
        if missing:
            raise ValueError(f"adapter is missing {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        for name, layer in self.layers.items():
            layer.lora_A[t].copy_(block[f"{name}.lora_A.weight"])
            layer.lora_B[t].copy_(block[f"{name}.lora_B.weight"])

    def extra_loss(self, name: str, t: int) -> torch.Tensor:
        """O-LoRA's "orthogonality" and "l2" terms for block t (see `losses`)."""
        if name == "orthogonality":
            return orthogonality_loss(self.layers.values(), t)
        if name == "l2":
            return l2_loss(self.layers.values(), t)
        return super().extra_loss(name, t)

    def frozen_targets(self) -> list[str]:
        """The frozen Linear inside every mixture layer (a fused q/k/v Linear once, for its q and v parts)."""
        targets = []
        for name, layer in self.layers.items():
            target = f"{name.rpartition('.')[0]}.base" if isinstance(layer, MixtureLoRASlice) else f"{name}.base"
            if target not in targets:
                targets.append(target)
        return targets

    def merged(self, weights: torch.Tensor) -> AbstractContextManager[None]:
        return merged_lora(self.layers.values(), self.state, self.n_blocks, weights)

    # ---- the export and the model card -----------------------------------------------------------

    @classmethod
    def card_settings(cls, block: BlockSection, info: dict[str, Any]) -> list[tuple[str, str]]:
        from sapt.model_card import card_value

        o: LoRAOptions = block.options
        alpha, dropout = card_value(float(o.lora_alpha)), card_value(float(o.lora_dropout))
        return [("LoRA rank r / alpha / dropout", f"{o.lora_r} / {alpha} / {dropout}"),
                ("adapted projections", card_value(info["target_modules"]))]
