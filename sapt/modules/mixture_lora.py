"""A linear layer plus a per-example weighted mixture of LoRA blocks.

    y = W x + b + sum_i w_i(x) * (alpha / r) * B_i A_i x

`w` is one weight per task block per *example* (not per layer), produced once per input by the shared
router and handed to every mixture layer through a `RoutingState`. PEFT has no such layer: its LoRA
layers mix adapters with weights that are fixed per call (`add_weighted_adapter`) or pick one adapter per
example (`adapter_names=`), but cannot scale each block by a differentiable, per-example weight, which
SAPT needs so that the gradient reaches the router through the frozen old blocks. So it is written here.

The blocks are applied as one rank T*r update: x is projected by all A's at once, scaled per example
and per block, then projected back by all B's at once. Two matmuls whatever the number of tasks, instead
of a Python loop over T blocks in every projection (see issue "Speed").

Each block's A and B are separate parameters so that blocks 1..t-1 can be frozen while block t trains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class RoutingState:
    """The per-example block weights of the current batch, shared by every mixture layer.

    `weights` has shape (batch, n_blocks). `None` means "no routing set", which is an error while any
    block exists: silently running without adapters would hide a bug.
    """

    weights: torch.Tensor | None = None

    def for_batch(self, batch: int) -> torch.Tensor:
        w = self.weights
        if w is None:
            raise RuntimeError("routing weights are not set: call the model through SAPTModel")
        if w.shape[0] != batch:
            # generate() may expand a batch (num_return_sequences): each row repeated in place.
            if batch % w.shape[0]:
                raise RuntimeError(f"routing weights for {w.shape[0]} inputs, got a batch of {batch}")
            w = w.repeat_interleave(batch // w.shape[0], dim=0)
        return w


class MixtureLoRALinear(nn.Module):
    """Wraps a frozen `nn.Linear` with T LoRA blocks mixed by per-example weights."""

    def __init__(self, base: nn.Linear, state: RoutingState, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.state = state
        self.r = r
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()

    @property
    def n_blocks(self) -> int:
        return len(self.lora_A)

    def add_block(self) -> None:
        """A new block initialised as PEFT does: A Kaiming-uniform, B zero (so it starts as a no-op)."""
        w = self.base.weight
        a = torch.empty(self.r, self.base.in_features, dtype=torch.float32, device=w.device)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(self.base.out_features, self.r, dtype=torch.float32, device=w.device)
        self.lora_A.append(nn.Parameter(a))
        self.lora_B.append(nn.Parameter(b))

    def delta(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_i weights[:, i] * scaling * B_i A_i x, for x of shape (batch, ..., in_features)."""
        T, r = self.n_blocks, self.r
        A = torch.cat(list(self.lora_A), dim=0)  # (T*r, in)
        B = torch.cat(list(self.lora_B), dim=1)  # (out, T*r)
        x = self.dropout(x).to(A.dtype)
        h = x @ A.t()  # (batch, ..., T*r)
        scale = (weights.to(h.dtype) * self.scaling).repeat_interleave(r, dim=1)  # (batch, T*r)
        scale = scale.view(scale.shape[0], *([1] * (h.dim() - 2)), T * r)
        return (h * scale) @ B.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.n_blocks == 0:
            return out
        return out + self.delta(x, self.state.for_batch(x.shape[0])).to(out.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, blocks={self.n_blocks}"
