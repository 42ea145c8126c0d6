"""The per-example block weights of the current batch, shared by every block of every type.

The router computes one weight per task block per *example* (not per layer) once per input; SAPTModel
puts them here (`SAPTModel.routed`) and every adapted layer (or prompt prefix) reads them while the
backbone runs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def one_input_weights(weights: torch.Tensor, n_blocks: int, state: "RoutingState") -> torch.Tensor:
    """The (T,) weights of one input for a block type's `merged`, from (1, T) or (T,); refused when the
    shape is not one input's or the model is merged already."""
    w = weights.detach()
    if w.dim() == 2 and w.shape[0] == 1:
        w = w[0]
    if w.dim() != 1 or w.shape[0] != n_blocks:
        raise ValueError(f"merged() takes the mixing weights of one input, shape (1, {n_blocks}); "
                         f"got {tuple(weights.shape)}")
    if state.merged:
        raise RuntimeError("the model is already merged")
    return w


def float_weight(weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """`weight`, if a merge can change it: a 4/8-bit packed base (--quantize) has no meaningful W'."""
    if not weight.is_floating_point():
        raise RuntimeError(f"cannot merge into {weight.dtype} (quantised) base weights; generate unmerged")
    return weight


@contextmanager
def swapped_parameters(state: "RoutingState") -> Iterator[Callable[[torch.nn.Parameter, torch.Tensor], None]]:
    """What every block type's `merged` shares: `swap(param, data)` gives a parameter new data and keeps the
    original tensor; inside, `state.merged` is True (the adapted layers add nothing); on exit, an error
    included, every original tensor is put back (bit-identical: nothing is undone by arithmetic) and
    `state.merged` is False."""
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def swap(param: torch.nn.Parameter, data: torch.Tensor) -> None:
        originals.append((param, param.data))
        param.data = data

    try:
        state.merged = True
        yield swap
    finally:
        state.merged = False
        for param, original in originals:
            param.data = original


class RoutingState:
    """The per-example block weights of the current batch, shared by every adapted layer.

    `weights` has shape (batch, n_blocks). `None` means "no routing set", which is an error while any
    block exists: silently running without adapters would hide a bug.

    `merged` is set by a block type's `merged` (`sapt.modules.merge.merged`): the weighted update of one
    input is then inside the base weights, and the adapted layers add nothing (whatever `weights` says).
    """

    def __init__(self, weights: torch.Tensor | None = None):
        self._weights = weights
        self._scales: dict = {}
        self.merged = False

    @property
    def weights(self) -> torch.Tensor | None:
        return self._weights

    @weights.setter
    def weights(self, value: torch.Tensor | None) -> None:
        self._weights = value
        self._scales = {}

    def for_batch(self, batch: int) -> torch.Tensor:
        w = self._weights
        if w is None:
            raise RuntimeError("routing weights are not set: call the model through SAPTModel")
        if w.shape[0] != batch:
            # generate() may expand a batch (num_return_sequences): each row repeated in place.
            if batch % w.shape[0]:
                raise RuntimeError(f"routing weights for {w.shape[0]} inputs, got a batch of {batch}")
            w = w.repeat_interleave(batch // w.shape[0], dim=0)
        return w

    def scales(self, batch: int, r: int, scaling: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(batch, T*r): each example's weight of block i times `scaling`, repeated over the block's r rows.

        Memoised per routed batch when no gradient has to flow to the weights (generation: once per
        sequence, not once per layer and decoding step). With a gradient, every layer builds its own
        (two tiny ops), so that a second backward under the same weights cannot hit a freed graph.
        """
        w = self._weights
        cacheable = w is not None and not (w.requires_grad and torch.is_grad_enabled())
        if cacheable:
            key = (batch, r, scaling, dtype, device, 0 if w.is_inference() else w._version)
            hit = self._scales.get(key)
            if hit is not None:
                return hit
        s = (self.for_batch(batch).to(device=device, dtype=dtype) * scaling).repeat_interleave(r, dim=1)
        if cacheable:
            self._scales[key] = s
        return s
