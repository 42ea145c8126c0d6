"""What a kind of parameter-efficient (PET) block must provide to serve as SAPT's per-task blocks.

SAPT keeps the backbone frozen and adds one block per task; the shared router gives every input one
weight per block, w (batch, T), and the model's output mixes the blocks by those weights. `SAPTModel`,
the methods, the training loop's placement and the pseudo-sample generator deal with blocks only
through a `BlockType`, so that a new kind is a new file (or folder) beside `lora/`, as in PEFT's
`tuners/`: a config, the layer or module that applies the mixture, the injector, and this interface.

    type = LoRABlocks(LoRAConfig(r=4, alpha=32))
    model = SAPTModel(loaded, block_type=type)  # calls type.attach(backbone, family, state)

The life of a block type inside a SAPTModel:

    attach(backbone, family, state)    once: wrap the backbone's layers / set up the prefix
    add_block()                        once per task (a block that starts as a no-op)
    set_trainable(t)                   stage t: only block t trains (the model froze everything before)
    block_state(t) / load_block(t, .)  the bytes of stage t's adapter.safetensors, and back
    prefix(backbone, inputs)           every forward, inside `SAPTModel.routed(w)`
    extra_loss(name, t)                losses a method may add (O-LoRA: "orthogonality", "l2")
    keep_whole()                       placement: parameters FSDP must not shard
    frozen_targets()                   the frozen Linear layers a temporary PEFT LoRA may adapt (pseudo.py)
    merged(w)                          optional: fold one input's mixture into the weights

Two attach points, so that every PET kind fits:

- Inside the backbone (LoRA, IA3, adapters): `attach` replaces modules matched by a name pattern with
  layers that read `state` (a `RoutingState`: the current batch's weights) in their forward; `prefix`
  is the identity (`has_prefix = False`) and the backbone is called with `input_ids`.
- Before the backbone (prompt tuning, P-tuning): the blocks are prompt embeddings. The prompt type is
  one file, `blocks/prompt.py` (`PromptBlocks`, config `pet: prompt`), with `has_prefix = True` and:

      attach        creates a `PromptBank(n_virtual, d_model)` module (one (n_virtual, d) parameter per
                    task) and returns it; SAPTModel registers the module it returns as its child `pet`,
                    so that `.to()`, `parameters()` and `requires_grad_` reach it (nothing in the
                    backbone is wrapped: `frozen_targets` are the family's q/v Linears themselves).
      prefix        P = sum_i w_i P_i  (batch, n_virtual, d), with w = state.for_batch(batch), and returns
                    {"inputs_embeds": [P; E(input_ids)], "attention_mask": [1...1; mask]} plus, for a
                    causal LM, "labels" = [-100...-100; labels]. `SAPTModel.forward` and `generate` call it
                    inside `routed(w)` and pass what it returns to the backbone (and to
                    `causal_lm_loss`), so the router's gradient reaches w through P.
      block_state   {"prompt_embeddings": P_t} (PEFT's name; one block per file); `merged` stays unsupported.

The router reads the prompt's own token embeddings (`SAPTModel.pooled_prompt`), never the prefix.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import ClassVar

import torch
from torch import nn

from sapt.modules.blocks.routing import RoutingState


class BlockType(ABC):
    """One kind of per-task PET block; an instance serves one SAPTModel (see the module docstring).

    Not an `nn.Module`: the blocks' parameters live in the modules `attach` puts into the backbone (or in
    the module it returns), so that the model's state_dict names each parameter once.
    """

    name: ClassVar[str]
    has_prefix: ClassVar[bool] = False  # `prefix` changes the backbone's inputs
    extra_losses: ClassVar[tuple[str, ...]] = ()  # the names `extra_loss` knows
    dtype: ClassVar[torch.dtype] = torch.float32  # blocks train in float32 whatever the backbone's dtype

    def __init__(self) -> None:
        self.state: RoutingState | None = None
        self.layers: dict[str, nn.Module] = {}  # what `attach` wrapped or added, by module path

    # ---- attach and grow -------------------------------------------------------------------------
    @abstractmethod
    def attach(self, model: nn.Module, family: str, state: RoutingState) -> nn.Module | None:
        """Adapt the frozen backbone `model` (of `family`: "seq2seq" or "causal") to read `state`.
        Returns a module holding parameters outside the backbone (SAPTModel registers it as `pet`), or None."""

    @property
    @abstractmethod
    def n_blocks(self) -> int:
        """Blocks so far (the same in every adapted layer)."""

    @abstractmethod
    def add_block(self) -> None:
        """One more block, initialised so that it changes nothing until it trains."""

    # ---- parameters ------------------------------------------------------------------------------
    @abstractmethod
    def block_parameters(self, t: int) -> list[nn.Parameter]:
        """Every parameter of block t, in a fixed order."""

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter of every block."""
        return [p for t in range(self.n_blocks) for p in self.block_parameters(t)]

    def set_trainable(self, t: int) -> None:
        """Block t receives gradient (the caller has frozen everything else)."""
        for p in self.block_parameters(t):
            p.requires_grad_(True)

    def keep_whole(self) -> set[nn.Parameter]:
        """Placement: the parameters that FSDP leaves whole on every process (small, read by every layer).
        The blocks follow the model's `.to(device)` and keep `dtype`."""
        return set(self.parameters())

    # ---- saved state -----------------------------------------------------------------------------
    @abstractmethod
    def block_state(self, t: int) -> dict[str, torch.Tensor]:
        """Block t as CPU tensors under stable names: the content of a stage's adapter.safetensors."""

    @abstractmethod
    def load_block(self, t: int, block: dict[str, torch.Tensor]) -> None:
        """Copy `block_state(t)`'s tensors back into block t (in place, under no_grad); a missing tensor
        is a ValueError."""

    # ---- forward hooks ---------------------------------------------------------------------------
    def prefix(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The backbone's keyword inputs ("input_ids", "attention_mask", and "labels" when training) for
        the routed batch; a prompt type swaps "input_ids" for its prefixed "inputs_embeds". Identity here."""
        return inputs

    def extra_loss(self, name: str, t: int) -> torch.Tensor:
        """A loss on the blocks that a method may add while block t trains (one of `extra_losses`)."""
        raise ValueError(f"{self.name} blocks have no extra loss {name!r} (have: {', '.join(self.extra_losses) or 'none'})")

    def frozen_targets(self) -> list[str]:
        """Module paths of frozen `nn.Linear` layers in the backbone that a temporary PEFT LoRA may adapt
        (the pseudo-sample generator), leaving every block untouched."""
        raise NotImplementedError(f"{self.name} blocks name no frozen linear layers")

    def merged(self, weights: torch.Tensor) -> AbstractContextManager[None]:
        """Inside the block, one input's mixture (weights (1, T) or (T,)) is folded into the backbone."""
        raise NotImplementedError(f"{self.name} blocks cannot be merged into the base weights")
