"""A frozen Linear whose output (k, v) or input (the feed-forward down projection) is scaled per example by
the routed mixture of the tasks' IA3 vectors: l(x) = sum_t w_t(x) l_t + (1 - sum_t w_t(x)) (package docstring)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from sapt.modules.blocks.routing import RoutingState, float_weight, one_input_weights, swapped_parameters


class MixtureIA3Linear(nn.Module):
    """Wraps a frozen `nn.Linear` with T IA3 vectors (`ia3_l[t]`: (out, 1), or (1, in) when `feedforward`)."""

    def __init__(self, base: nn.Linear, state: RoutingState, feedforward: bool):
        super().__init__()
        self.base = base
        self.state = state
        self.feedforward = feedforward
        self.ia3_l = nn.ParameterList()

    @property
    def n_blocks(self) -> int:
        return len(self.ia3_l)

    @property
    def weight(self) -> torch.Tensor:
        """The frozen Linear's weight, for backbone code that reads it (T5's feed-forward checks wo's dtype)."""
        return self.base.weight

    def add_block(self) -> None:
        """A new vector of ones, as PEFT initialises IA3 (the identity)."""
        shape = (1, self.base.in_features) if self.feedforward else (self.base.out_features, 1)
        self.ia3_l.append(nn.Parameter(torch.ones(shape, dtype=torch.float32, device=self.base.weight.device)))

    def scaling(self, weights: torch.Tensor) -> torch.Tensor:
        """(batch, features): sum_t w_t l_t + (1 - sum_t w_t) for weights (batch, T)."""
        stack = torch.stack([p.flatten() for p in self.ia3_l._parameters.values()])  # (T, features)
        w = weights.to(device=stack.device, dtype=stack.dtype)
        return w @ stack + (1 - w.sum(dim=-1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state.merged:
            if x.shape[0] != 1:
                raise RuntimeError(f"the mixture is merged into the weights for one input, got a batch of {x.shape[0]}")
            return self.base(x)
        if not self.ia3_l._parameters:
            return self.base(x)
        s = self.scaling(self.state.for_batch(x.shape[0]))
        s = s.view(s.shape[0], *([1] * (x.dim() - 2)), s.shape[1])
        if self.feedforward:
            return self.base((x * s).to(x.dtype))
        out = self.base(x)
        return (out * s).to(out.dtype)

    def extra_repr(self) -> str:
        return f"feedforward={self.feedforward}, blocks={self.n_blocks}"


@contextmanager
def merged_ia3(layers: Iterable[MixtureIA3Linear], state: RoutingState, n_blocks: int,
               weights: torch.Tensor) -> Iterator[None]:
    """W' = W scaled by one input's l (rows and bias for k and v, columns for the feed-forward module) in every
    layer while inside; W and b themselves back on exit (bit-identical: nothing is divided)."""
    w = one_input_weights(weights, n_blocks, state)
    with swapped_parameters(state) as swap:
        with torch.no_grad():
            for layer in layers if n_blocks else ():
                s = layer.scaling(w[None])[0]
                weight, bias = float_weight(layer.base.weight), layer.base.bias
                scale = s[None, :] if layer.feedforward else s[:, None]
                swap(weight, (weight.data.to(s.dtype) * scale).to(weight.dtype))
                if bias is not None and not layer.feedforward:
                    swap(bias, (bias.data.to(s.dtype) * s).to(bias.dtype))
        yield
