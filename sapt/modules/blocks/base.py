"""What a kind of parameter-efficient (PET) block must provide to serve as SAPT's per-task blocks.

SAPT keeps the backbone frozen and adds one block per task; the shared router gives every input one
weight per block, w (batch, T), and the model's output mixes the blocks by those weights. `SAPTModel`,
the methods, the training loop's placement and the pseudo-sample generator deal with blocks only
through a `BlockType`, so that a new kind is a new file (or folder) beside `lora/`, as in PEFT's
`tuners/`: a config, the layer or module that applies the mixture, the injector, and this interface.

    type = LoRABlocks(LoRAConfig(r=4, alpha=32))
    model = SAPTModel(loaded, block_type=type)  # calls type.attach(backbone, family, state)

The life of a block type inside a SAPTModel:

    from_config(block, seed)           the type with its settings from the run config's block section and the
                                       run's seed (`sapt.train.build_model`)
    attach(backbone, family, state)    once: wrap the backbone's layers / set up the prefix
    add_block()                        once per task (a block that starts as a no-op)
    set_trainable(t)                   stage t: only block t trains (the model froze everything before)
    block_state(t) / load_block(t, .)  the bytes of stage t's adapter.safetensors, and back
    prefix(backbone, inputs)           every forward, inside `SAPTModel.routed(w)`
    set_prefix_mode(mode)              "mixture" (the default) or another a prefix type offers ("concat":
                                       Progressive Prompts, `sapt.methods.progprompt`)
    extra_loss(name, t)                losses a method may add (O-LoRA: "orthogonality", "l2")
    keep_whole()                       placement: parameters FSDP must not shard
    frozen_targets()                   the frozen Linear layers a temporary PEFT LoRA may adapt (pseudo.py)
    merged(w)                          when `mergeable`: fold one input's mixture into the weights

and, from a run's config alone (class methods: no model is built), what `sapt export`, `sapt.load` of an
export and the model card need, so that none of them asks which type it holds:

    export_adapters(block, base, blocks, out)  one PEFT adapter per task in OUT/<task>/, and router.json's
                                       fields (`block`: the config's block section; `base`: the base model's
                                       name and seed, `peft_export.BaseModelRef`)
    read_adapters(block, base, info, folders)  the inverse: each exported task's block, as its stage file holds it
    card_kind, card_tag, block_noun,   the card's words: "LoRA adapters", its Hub tag, a method's summary
    new_block, card_settings(block, ..)  ("one LoRA block per task"), the settings table's rows

A type is found by its folder: `sapt/modules/blocks/<name>/` whose `__init__` names its class as
`BLOCK_TYPE` is `--pet <name>` (`registry.BLOCK_TYPES`), and tests/blocks/test_conformance.py checks it.
Its own run-config keys are declared in the folder too, as PEFT has a config per tuner: `<name>/config.py`
sets `OPTIONS` to a frozen dataclass of `sapt.options.option(..., section="block")` fields (LoRA's
`LoRAOptions`: lora_r, lora_alpha, lora_dropout, target_modules), and the class names it as `Options`.
sapt.config adds them as flat keys (`--lora-r`, `lora_r:` in YAML and config.yaml, `sapt run --help`, the
range and resume checks); a key is one type's only. The config imports that module without torch, so the
folder's `__init__` names its exports through `registry.lazy_exports` and config.py imports no torch:

    # sapt/modules/blocks/<name>/config.py
    @dataclass(frozen=True)
    class ScaleOptions:
        scale_init: float = option(1.0, bounds=POSITIVE, section="block", help="--pet <name>: a new block's scale")

    OPTIONS = ScaleOptions

and `from_config(block, seed)` reads `block.options.scale_init`.

Two attach points, so that every PET kind fits:

- Inside the backbone (LoRA, IA3, adapters): `attach` replaces modules matched by a name pattern
  (`targets.find_targets`) with layers that read `state` (a `RoutingState`: the current batch's weights)
  in their forward; `prefix` is the identity (`has_prefix = False`) and the backbone is called with
  `input_ids`.
- Before the backbone (prompt tuning, P-tuning): the blocks are prompt embeddings. The prompt type is
  the folder `blocks/prompt/` (`PromptBlocks`, config `pet: prompt`), with `has_prefix = True` and:

      attach        creates a `PromptBank(n_virtual, d_model)` module (one (n_virtual, d) parameter per
                    task) and returns it; SAPTModel registers the module it returns as its child `pet`,
                    so that `.to()`, `parameters()` and `requires_grad_` reach it (nothing in the
                    backbone is wrapped: `frozen_targets` are the family's q/v Linears themselves).
      prefix        P = sum_i w_i P_i  (batch, n_virtual, d), with w = state.for_batch(batch), and returns
                    {"inputs_embeds": [P; E(input_ids)], "attention_mask": [1...1; mask]} plus, for a
                    causal LM, "labels" = [-100...-100; labels]. `SAPTModel.forward` and `generate` call it
                    inside `routed(w)` and pass what it returns to the backbone (and to
                    `causal_lm_loss`), so the router's gradient reaches w through P.
      block_state   {"prompt_embeddings": P_t} (PEFT's name; one block per file); not `mergeable`.

The router reads the prompt's own token embeddings (`SAPTModel.pooled_prompt`), never the prefix.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from sapt.modules.blocks.routing import RoutingState

if TYPE_CHECKING:
    from sapt.config import BlockSection
    from sapt.modules.blocks.peft_export import BaseModelRef


@dataclass
class Exported:
    """What `BlockType.export_adapters` tells router.json (`sapt.export`): the base model's family, the fields
    that describe the blocks (after the router's sizes), those appended at its end, and how an input's
    output is computed from the routing weights (`routing`)."""

    family: str
    routing: str
    fields: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class BlockType(ABC):
    """One kind of per-task PET block; an instance serves one SAPTModel (see the module docstring).

    Not an `nn.Module`: the blocks' parameters live in the modules `attach` puts into the backbone (or in
    the module it returns), so that the model's state_dict names each parameter once.
    """

    name: ClassVar[str]
    has_prefix: ClassVar[bool] = False  # `prefix` changes the backbone's inputs
    extra_losses: ClassVar[tuple[str, ...]] = ()  # the names `extra_loss` knows
    dtype: ClassVar[torch.dtype] = torch.float32  # blocks train in float32 whatever the backbone's dtype
    prefix_modes: ClassVar[tuple[str, ...]] = ("mixture",)  # what `set_prefix_mode` accepts
    mergeable: ClassVar[bool] = False  # `merged` folds a mixture into the base weights (predict --merge)
    # The model card's words (sapt.model_card): "Continual-learning {card_kind} adapters", "a standard PEFT
    # {card_kind} adapter"; the Hub tag; a task's block in prose (a method's summary, "one {block} per task");
    # what a new block starts as (block_init zero).
    card_kind: ClassVar[str] = ""
    card_tag: ClassVar[str] = ""
    block_noun: ClassVar[str] = ""
    new_block: ClassVar[str] = ""
    export_files: ClassVar[tuple[str, ...]] = ()  # what OUT/<task>/ holds beside the PEFT adapter's two files
    # The type's own run-config keys: the frozen dataclass of `option(..., section="block")` fields its folder's
    # config.py declares as `OPTIONS` (registry.block_options_type reads it there, with no torch); None: none.
    # `from_config`, the export and `card_settings` get an instance as the block section's `options`. Named in
    # both places, as a method names its `Options`: the class says what its code reads, and config.py is what
    # the config can import with no torch; tests/blocks/test_conformance.py checks they are one class.
    Options: ClassVar[type | None] = None

    def __init__(self) -> None:
        self.state: RoutingState | None = None
        # What `attach` wrapped or added, by module path; the default `n_blocks` and `add_block` go through it.
        self.layers: dict[str, nn.Module] = {}

    @classmethod
    @abstractmethod
    def from_config(cls, block: BlockSection, seed: int) -> BlockType:
        """The type with its settings from the run config's block section (`RunConfig.block`: its own options
        as `block.options`, an instance of `Options`) and the run's `seed`; it is given nothing else of the
        config."""

    def describe(self) -> str:
        """The start-up line's words for what was attached (`sapt run`: "model ... loaded in 1.2s; <this>")."""
        return f"{self.name} blocks"

    # ---- attach and grow -------------------------------------------------------------------------
    @abstractmethod
    def attach(self, model: nn.Module, family: str, state: RoutingState) -> nn.Module | None:
        """Adapt the frozen backbone `model` (of `family`: "seq2seq" or "causal") to read `state`.
        Returns a module holding parameters outside the backbone (SAPTModel registers it as `pet`), or None."""

    @property
    def n_blocks(self) -> int:
        """Blocks so far (the same in every adapted layer). Here: the first of `layers`' `n_blocks`."""
        return next(iter(self.layers.values())).n_blocks

    def add_block(self) -> None:
        """One more block, initialised so that it changes nothing until it trains. Here: `add_block` of every
        one of `layers`."""
        for layer in self.layers.values():
            layer.add_block()

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

    def set_prefix_mode(self, mode: str) -> None:
        """How `prefix` combines the blocks: "mixture" (the routing weights') or another of `prefix_modes`."""
        if mode not in self.prefix_modes:
            raise ValueError(f"{self.name} blocks have no prefix mode {mode!r} (have: {', '.join(self.prefix_modes)})")

    def extra_loss(self, name: str, t: int) -> torch.Tensor:
        """A loss on the blocks that a method may add while block t trains (one of `extra_losses`)."""
        raise ValueError(f"{self.name} blocks have no extra loss {name!r} (have: {', '.join(self.extra_losses) or 'none'})")

    def frozen_targets(self) -> list[str]:
        """Module paths of frozen `nn.Linear` layers in the backbone that a temporary PEFT LoRA may adapt
        (the pseudo-sample generator), leaving every block untouched."""
        raise NotImplementedError(f"{self.name} blocks name no frozen linear layers")

    def merged(self, weights: torch.Tensor) -> AbstractContextManager[None]:
        """Inside the block, one input's mixture (weights (1, T) or (T,)) is folded into the backbone
        (types that are `mergeable`)."""
        raise NotImplementedError(self.merge_refusal())

    @classmethod
    def merge_refusal(cls) -> str:
        """Why predict --merge cannot be used with these blocks (for a type that is not `mergeable`)."""
        return (f"merge (--merge) folds blocks such as LoRA's into the base weights; this run's blocks are {cls.name} "
                f"(pet: {cls.name}), which cannot be: predict without --merge")

    # ---- the export and the model card (from a run's config: no model is built) -------------------
    @classmethod
    def export_adapters(cls, block: BlockSection, base: BaseModelRef,
                        blocks: list[tuple[str, Path, dict[str, torch.Tensor]]], out: Path) -> Exported:
        """Write one PEFT adapter per task, OUT/<task>/adapter_model.safetensors and adapter_config.json (and
        any of `export_files`), from (task, stage folder, block_state) in training order; a sapt.config
        ConfigError for a block that is not this type's. Here: `export_adapters` of the type's folder's
        export.py (imported only when exporting)."""
        return cls._export_module().export_adapters(block, base, blocks, out)

    @classmethod
    def read_adapters(cls, block: BlockSection, base: BaseModelRef, info: dict[str, Any],
                      folders: list[Path]) -> list[dict[str, torch.Tensor]]:
        """The inverse of `export_adapters`: each task folder's block, as `block_state` gave it. `info` is
        router.json's content. Here: `read_adapters` of the folder's export.py."""
        return cls._export_module().read_adapters(block, base, info, folders)

    @classmethod
    def _export_module(cls) -> Any:
        return importlib.import_module(f"{cls.__module__.rpartition('.')[0]}.export")

    @classmethod
    def card_settings(cls, block: BlockSection, info: dict[str, Any]) -> list[tuple[str, str]]:
        """(setting, value) rows of the model card that describe the blocks, from the run config's block section
        (config.yaml; the type's own keys are `block.options`) and router.json (`info`)."""
        return []
