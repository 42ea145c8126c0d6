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

Residual reparameterisation (`PromptConfig.mlp_hidden` > 0, config `prompt_mlp_hidden`; the release's
SAPT-Prompt, hidden 800): each task's prompt is used as P_t + MLP_t(P_t), MLP_t = Linear(d, hidden) -> ReLU ->
Linear(hidden, d), one MLP per task, trained with its prompt (block t's parameters are P_t and MLP_t) and
saved beside it under PROMPT_ENCODER_KEYS. The raw P_t and its MLP are what train, so Adam steps through the
MLP's coordinates, which is the point of it (a better-conditioned prompt, Razdaibiedina et al. 2023); what the
backbone sees is only the resulting (n_virtual, d) prompt, so that prompt is what `sapt export` writes
(`effective_prompt`), and the exported PEFT prompt-tuning adapter still equals SAPT with all weight on the
task. The activation is ReLU, that of Progressive Prompts' residual MLP and of PEFT's prompt-encoder MLP
(P-tuning), the two published modules this one follows. Each MLP starts from its own seeded generator, so a run's numbers do not depend on the global
RNG; with it, a new prompt is no longer exactly its vocabulary sample (P + MLP(P) from the first step).
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
# The residual MLP of a reparameterised prompt, as it is saved beside KEY in adapter.safetensors
PROMPT_ENCODER_KEYS = ("prompt_encoder.down.weight", "prompt_encoder.down.bias",
                       "prompt_encoder.up.weight", "prompt_encoder.up.bias")
# Task t's MLP is drawn from seed + STRIDE * (t + 1), never the seed of a vocabulary sample (seed + t)
ENCODER_SEED_STRIDE = 100_003


@dataclass(frozen=True)
class PromptConfig:
    """`n_virtual` virtual tokens per task; `seed` seeds the vocabulary sample each new prompt starts from;
    `mlp_hidden` > 0 reparameterises each prompt as P + MLP(P) with an MLP of that hidden width (0: off)."""

    n_virtual: int = 20
    seed: int = 42
    mlp_hidden: int = 0


class ResidualPromptEncoder(nn.Module):
    """MLP(P) = up(ReLU(down(P))): the residual part of a reparameterised prompt P + MLP(P)."""

    def __init__(self, d: int, hidden: int, seed: int):
        super().__init__()
        self.down = nn.Linear(d, hidden)
        self.up = nn.Linear(hidden, d)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # nn.Linear's own initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded here
            for layer in (self.down, self.up):
                bound = 1.0 / layer.in_features ** 0.5
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return residual_prompt(prompt, self.down.weight, self.down.bias, self.up.weight, self.up.bias)


def residual_prompt(prompt: torch.Tensor, down_w: torch.Tensor, down_b: torch.Tensor, up_w: torch.Tensor,
                    up_b: torch.Tensor) -> torch.Tensor:
    """P + up(ReLU(down(P))): one formula for training and for export (`effective_prompt`)."""
    hidden = torch.nn.functional.relu(torch.nn.functional.linear(prompt, down_w, down_b))
    return prompt + torch.nn.functional.linear(hidden, up_w, up_b)


def effective_prompt(block: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (n_virtual, d) prompt the backbone sees, from a saved block: P, or P + MLP(P) when the block holds
    its residual MLP (PROMPT_ENCODER_KEYS)."""
    prompt = block[KEY].float()
    if not any(k in block for k in PROMPT_ENCODER_KEYS):
        return prompt
    with torch.no_grad():
        return residual_prompt(prompt, *(block[k].float() for k in PROMPT_ENCODER_KEYS))


class PromptBank(nn.Module):
    """One (n_virtual, d) float32 parameter per task, and the vocabulary embeddings they start from; with
    `mlp_hidden` > 0, one ResidualPromptEncoder per task as well (`encoders`)."""

    def __init__(self, embeddings: nn.Embedding, n_virtual: int, seed: int, mlp_hidden: int = 0):
        super().__init__()
        self.n_virtual = n_virtual
        self.seed = seed
        self.mlp_hidden = mlp_hidden
        self.prompts = nn.ParameterList()
        self.encoders = nn.ModuleList()  # empty unless mlp_hidden > 0
        self._embeddings = [embeddings]  # a list: not a child module (the backbone's table stays the backbone's)

    @torch.no_grad()
    def add_prompt(self) -> None:
        table = self._embeddings[0].weight
        g = torch.Generator().manual_seed(self.seed + len(self.prompts))
        ids = torch.randint(0, table.shape[0], (self.n_virtual,), generator=g)
        self.prompts.append(nn.Parameter(table[ids.to(table.device)].detach().to(torch.float32).clone()))
        if self.mlp_hidden:  # seeded apart from the vocabulary sample, on the prompt's device
            seed = self.seed + ENCODER_SEED_STRIDE * len(self.prompts)
            encoder = ResidualPromptEncoder(table.shape[1], self.mlp_hidden, seed=seed)
            self.encoders.append(encoder.to(device=table.device, dtype=torch.float32))

    def effective(self) -> list[torch.Tensor]:
        """Each task's prompt as the backbone sees it: P_t, or P_t + MLP_t(P_t)."""
        prompts = list(self.prompts._parameters.values())
        if not self.mlp_hidden:
            return prompts
        return [encoder(p) for p, encoder in zip(prompts, self.encoders)]

    def mixture(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_t weights[:, t] P_t: (batch, n_virtual, d)."""
        stack = torch.stack(self.effective())  # (T, n, d)
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
