"""Prompt tuning as a SAPT block type: per-task soft prompts, mixed by the router's weights (or concatenated,
Progressive Prompts) and put before the input embeddings. The math: the package docstring."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.prompt.config import PromptConfig, PromptOptions
from sapt.modules.blocks.prompt.layer import KEY, PROMPT_ENCODER_KEYS, PromptBank
from sapt.modules.blocks.routing import RoutingState
from sapt.modules.blocks.targets import TARGET_PATTERNS, find_targets

if TYPE_CHECKING:
    from sapt.config import BlockSection

SAPT_PROMPT = "sapt_prompt.safetensors"  # OUT/<task>/ of a reparameterised prompt: its SAPT block (export.py)


class PromptBlocks(BlockType):
    """Per-task soft prompts mixed by the router's weights and prepended to the input embeddings."""

    name = "prompt"
    has_prefix = True
    prefix_modes = ("mixture", "concat")
    card_kind, card_tag, block_noun = "prompt-tuning", "prompt-tuning", "soft prompt"
    new_block = "embeddings of sampled vocabulary tokens"
    export_files = (SAPT_PROMPT,)
    Options = PromptOptions  # prompt_len, prompt_mlp_hidden (config.py)

    def __init__(self, config: PromptConfig | None = None):
        super().__init__()
        self.config = config or PromptConfig()
        self.bank: PromptBank | None = None
        self.family = ""
        self._targets: list[str] = []
        # Progressive Prompts (sapt.methods.progprompt, `set_prefix_mode("concat")`): the prefix is every prompt
        # concatenated, newest first, [P_{T-1}; ...; P_0], whatever the weights.
        self.concat = False

    @classmethod
    def from_config(cls, block: BlockSection, seed: int) -> PromptBlocks:
        """`prompt_len` virtual tokens, seeded by the run's seed, reparameterised when `prompt_mlp_hidden` > 0."""
        o: PromptOptions = block.options
        return cls(PromptConfig(n_virtual=o.prompt_len, seed=seed, mlp_hidden=o.prompt_mlp_hidden))

    def set_prefix_mode(self, mode: str) -> None:
        super().set_prefix_mode(mode)
        self.concat = mode == "concat"

    def attach(self, model: nn.Module, family: str, state: RoutingState) -> PromptBank:
        self.state, self.family = state, family
        self.bank = PromptBank(model.get_input_embeddings(), self.config.n_virtual, self.config.seed,
                               self.config.mlp_hidden)
        self._targets = find_targets(model, TARGET_PATTERNS[family])
        return self.bank

    @property
    def n_blocks(self) -> int:
        return len(self.bank.prompts)

    def add_block(self) -> None:
        self.bank.add_prompt()

    def _named_block(self, t: int) -> dict[str, nn.Parameter]:
        """Block t's parameters under their saved names: the prompt, then its residual MLP if any."""
        named = {KEY: self.bank.prompts[t]}
        if self.bank.mlp_hidden:
            enc = self.bank.encoders[t]
            named.update(zip(PROMPT_ENCODER_KEYS, (enc.down.weight, enc.down.bias, enc.up.weight, enc.up.bias)))
        return named

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self._named_block(t).values())

    def block_state(self, t: int) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().contiguous() for k, p in self._named_block(t).items()}

    @torch.no_grad()
    def load_block(self, t: int, block: dict[str, torch.Tensor]) -> None:
        if KEY not in block:
            raise ValueError(f"adapter is missing {KEY} (is it a LoRA block? this run uses pet: prompt)")
        has_mlp = any(k in block for k in PROMPT_ENCODER_KEYS)
        if has_mlp != bool(self.bank.mlp_hidden):
            raise ValueError("adapter holds a prompt " + ("with" if has_mlp else "without") + " a residual MLP, this "
                             f"model's prompts are {'reparameterised' if self.bank.mlp_hidden else 'plain'} "
                             f"(prompt_mlp_hidden {self.bank.mlp_hidden})")
        for key, p in self._named_block(t).items():
            if key not in block:
                raise ValueError(f"adapter is missing {key}")
            if tuple(block[key].shape) != tuple(p.shape):
                raise ValueError(f"{key} has shape {tuple(block[key].shape)}, this model's prompts {tuple(p.shape)}")
            p.copy_(block[key])

    def prefix(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.n_blocks:
            return inputs
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch = ids.shape[0]
        embeds = model.get_input_embeddings()(ids)
        if self.concat:
            prompt = torch.cat(self.bank.effective()[::-1])
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

    # ---- the export and the model card -----------------------------------------------------------

    @classmethod
    def card_settings(cls, block: BlockSection, info: dict[str, Any]) -> list[tuple[str, str]]:
        o: PromptOptions = block.options
        rows = [("blocks", f"soft prompts of {o.prompt_len} virtual tokens (prompt tuning), mixed per input")]
        if o.prompt_mlp_hidden:
            rows.append(("prompt reparameterisation", "trained as P + MLP(P), MLP hidden width "
                                                      f"{o.prompt_mlp_hidden} "
                                                      "(ReLU); exported as the resulting prompt"))
        return rows
