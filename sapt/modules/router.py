"""The shared attention of SALS: which task blocks should serve this input.

query = MLP(masked max-pool of the prompt's token embeddings); one learned key per task;
weights = softmax(keys . query / sqrt(d)) over the tasks seen so far.
The public code max-pools padding positions too; here padding is masked out.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def masked_max_pool(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over positions where mask is 1. embeddings (B, L, d), mask (B, L) -> (B, d)."""
    if not bool(mask.any(dim=1).all()):
        raise ValueError("an input has no prompt token to pool")
    fill = torch.finfo(embeddings.dtype).min
    return embeddings.masked_fill(~mask.bool().unsqueeze(-1), fill).max(dim=1).values


class SharedAttentionRouter(nn.Module):
    def __init__(self, d_model: int, hidden: int = 100):
        super().__init__()
        self.d_model = d_model
        self.query_mlp = nn.Sequential(
            nn.Linear(d_model, hidden, bias=False),
            nn.Linear(hidden, d_model, bias=False),
            nn.SiLU(),
            nn.LayerNorm(d_model),
        )
        self.keys = nn.ParameterList()
        # Subtracted from the pooled embedding before the query MLP (see sapt.router_setup.update_centre).
        self.register_buffer("centre", torch.zeros(d_model))

    @property
    def n_tasks(self) -> int:
        return len(self.keys)

    def add_key(self) -> None:
        device = self.query_mlp[0].weight.device
        self.keys.append(nn.Parameter(torch.empty(self.d_model, device=device).uniform_(-1.0, 1.0)))

    def query(self, pooled: torch.Tensor) -> torch.Tensor:
        """Queries (B, d) for pooled prompt embeddings (B, d)."""
        return self.query_mlp((pooled - self.centre).to(self.query_mlp[0].weight.dtype))

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Attention logits (B, n_tasks) for pooled prompt embeddings (B, d)."""
        keys = torch.stack(list(self.keys))  # (T, d)
        return self.query(pooled) @ keys.t() / math.sqrt(self.d_model)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pooled), dim=-1)
