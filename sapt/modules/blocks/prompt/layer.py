"""The soft prompts themselves: one (n_virtual, d) parameter per task in a `PromptBank`, with the optional
residual MLP of a reparameterised prompt (`ResidualPromptEncoder`), and a saved block's prompt as the backbone
sees it (`effective_prompt`). The math and its sources: the package docstring."""
from __future__ import annotations

import torch
from torch import nn

KEY = "prompt_embeddings"
# The residual MLP of a reparameterised prompt, as it is saved beside KEY in adapter.safetensors
PROMPT_ENCODER_KEYS = ("prompt_encoder.down.weight", "prompt_encoder.down.bias",
                       "prompt_encoder.up.weight", "prompt_encoder.up.bias")
# Task t's MLP is drawn from seed + STRIDE * (t + 1), never the seed of a vocabulary sample (seed + t)
ENCODER_SEED_STRIDE = 100_003


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
