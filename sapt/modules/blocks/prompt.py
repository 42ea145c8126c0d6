"""Prompt tuning as a SAPT block type (Lester et al., 2021): one soft prompt per task, mixed per input.

Block t is a (n_virtual, d_model) matrix P_t. For a routed batch with weights w (batch, T) the backbone
gets the mixture P = sum_t w_t P_t (batch, n_virtual, d) before the embeddings of its input:

    inputs_embeds = [P; E(input_ids)]     attention_mask = [1...1; mask]     (T5: the encoder's input)
    labels        = [-100...-100; labels]                                   (causal LMs only)

which is what PEFT's prompt tuning does with one prompt (`PromptTuningConfig`, `num_transformer_submodules`
1: T5's decoder gets no prompt). Positions: a causal LM numbers the virtual tokens 0..n-1 and the input
after them (from the attention mask when generating), as under PEFT. Nothing in the backbone is wrapped;
the prompts live in a `PromptBank` that SAPTModel registers as its child `pet`. A new prompt is initialised
from the embeddings of `n_virtual` vocabulary tokens sampled with a seeded generator (PEFT's
`SAMPLE_VOCAB`); unlike a LoRA block it is not a no-op before it trains. Saved as
{"prompt_embeddings": P_t} (PEFT's name for a prompt-tuning adapter's tensor). The router still reads the
real prompt tokens (`SAPTModel.pooled_prompt`), never the virtual ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.lora.config import TARGET_PATTERNS
from sapt.modules.blocks.lora.inject import find_targets
from sapt.modules.blocks.routing import RoutingState

KEY = "prompt_embeddings"


@dataclass(frozen=True)
class PromptConfig:
    """`n_virtual` virtual tokens per task; `seed` seeds the vocabulary sample each new prompt starts from."""

    n_virtual: int = 20
    seed: int = 42


class PromptBank(nn.Module):
    """One (n_virtual, d) float32 parameter per task, and the vocabulary embeddings they start from."""

    def __init__(self, embeddings: nn.Embedding, n_virtual: int, seed: int):
        super().__init__()
        self.n_virtual = n_virtual
        self.seed = seed
        self.prompts = nn.ParameterList()
        self._embeddings = [embeddings]  # a list: not a child module (the backbone's table stays the backbone's)

    @torch.no_grad()
    def add_prompt(self) -> None:
        table = self._embeddings[0].weight
        g = torch.Generator().manual_seed(self.seed + len(self.prompts))
        ids = torch.randint(0, table.shape[0], (self.n_virtual,), generator=g)
        self.prompts.append(nn.Parameter(table[ids.to(table.device)].detach().to(torch.float32).clone()))

    def mixture(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_t weights[:, t] P_t: (batch, n_virtual, d)."""
        stack = torch.stack(list(self.prompts._parameters.values()))  # (T, n, d)
        return torch.einsum("bt,tnd->bnd", weights.to(device=stack.device, dtype=stack.dtype), stack)


class PromptBlocks(BlockType):
    """Per-task soft prompts mixed by the router's weights and prepended to the input embeddings."""

    name = "prompt"
    has_prefix = True

    def __init__(self, config: PromptConfig | None = None):
        super().__init__()
        self.config = config or PromptConfig()
        self.bank: PromptBank | None = None
        self.family = ""
        self._targets: list[str] = []
        # Progressive Prompts (sapt.methods.progprompt): the prefix is every prompt concatenated, newest first,
        # [P_{T-1}; ...; P_0], whatever the weights.
        self.concat = False

    def attach(self, model: nn.Module, family: str, state: RoutingState) -> PromptBank:
        self.state, self.family = state, family
        self.bank = PromptBank(model.get_input_embeddings(), self.config.n_virtual, self.config.seed)
        self._targets = find_targets(model, TARGET_PATTERNS[family])
        return self.bank

    @property
    def n_blocks(self) -> int:
        return len(self.bank.prompts)

    def add_block(self) -> None:
        self.bank.add_prompt()

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        return [self.bank.prompts[t]]

    def block_state(self, t: int) -> dict[str, torch.Tensor]:
        return {KEY: self.bank.prompts[t].detach().cpu().contiguous()}

    @torch.no_grad()
    def load_block(self, t: int, block: dict[str, torch.Tensor]) -> None:
        if KEY not in block:
            raise ValueError(f"adapter is missing {KEY} (is it a LoRA block? this run uses pet: prompt)")
        p = self.bank.prompts[t]
        if tuple(block[KEY].shape) != tuple(p.shape):
            raise ValueError(f"{KEY} has shape {tuple(block[KEY].shape)}, this model's prompts {tuple(p.shape)}")
        p.copy_(block[KEY])

    def prefix(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.n_blocks:
            return inputs
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch = ids.shape[0]
        embeds = model.get_input_embeddings()(ids)
        if self.concat:
            prompt = torch.cat(list(self.bank.prompts._parameters.values())[::-1])
            prompt = prompt.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        else:
            weights = self.state.for_batch(batch)
            if not bool(weights.detach().any()):
                # Every weight zero means "the blocks are off" (the pseudo-sample generator's training, the
                # base model of --unseen): the frozen backbone exactly, as zero weights are for LoRA; a
                # prefix of zero vectors would be another model (and gave a NaN loss in bf16 on SmolLM2).
                return inputs
            prompt = self.bank.mixture(weights).to(embeds.dtype)
        n = prompt.shape[1]
        out = {"inputs_embeds": torch.cat([prompt, embeds], dim=1),
               "attention_mask": torch.cat([mask.new_ones(batch, n), mask], dim=1)}
        if "labels" in inputs:
            labels = inputs["labels"]
            if self.family == "causal":
                labels = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)
            out["labels"] = labels
        return out

    def frozen_targets(self) -> list[str]:
        """The family's q/v Linears themselves (nothing in the backbone is wrapped)."""
        return list(self._targets)
