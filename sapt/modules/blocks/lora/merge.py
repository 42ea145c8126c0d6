"""Merge one input's weighted LoRA mixture into the base weights, for single-input inference.

Unmerged, every adapted projection adds (x A^T * s) Bt at every decoding step: a few small kernels per
layer and token. Merged, W' = W + sum_i w_i * scaling * B_i A_i is computed once (one (out, T*r) x (T*r, in)
product per layer) and decoding runs at the speed of the bare model. It pays when the output is long
enough for the per-token savings to exceed the merge; see BENCHMARKS.md "Speed" for where that is.

Inside the block the mixture layers add nothing (`RoutingState.merged`; this holds even when
`SAPTModel.generate` routes again) and refuse batches of more than one row. On exit the original weight
tensors are put back, so they are bit-identical to before (nothing is subtracted). A fused q/k/v Linear
gets its q part's and its v part's updates in their rows, k's rows unchanged (`fused.py`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from sapt.modules.blocks.lora.fused import FusedRows
from sapt.modules.blocks.lora.layer import MixtureLoRALinear
from sapt.modules.blocks.routing import RoutingState, float_weight, one_input_weights, swapped_parameters


@contextmanager
def merged_lora(layers: Iterable[MixtureLoRALinear], state: RoutingState, n_blocks: int,
                weights: torch.Tensor) -> Iterator[None]:
    """W' = W + sum_i w_i * scaling * B_i A_i in every layer while inside; W itself back on exit."""
    w = one_input_weights(weights, n_blocks, state)
    fused: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}  # fused weight -> its merged copy
    with swapped_parameters(state) as swap:
        with torch.no_grad():
            for layer in layers if n_blocks else ():
                A, Bt = layer.stacks()  # (T*r, in), (T*r, out)
                s = (w.to(device=A.device, dtype=A.dtype) * layer.scaling).repeat_interleave(layer.r)
                update = (Bt * s.unsqueeze(1)).t() @ A  # (out, in) = sum_i s_i B_i A_i
                if isinstance(layer.base, FusedRows):
                    # A part of a fused q/k/v Linear: W'[L_p] = W[L_p] + update, on one copy of W for all
                    # its parts, put in place once they are all added (`fused.py`).
                    weight = layer.base.fused.weight
                    if id(weight) not in fused:
                        fused[id(weight)] = (weight, weight.data.to(update.dtype, copy=True))
                    layout = layer.base.layout
                    layout.of_rows(fused[id(weight)][1]).add_(update.view(layout.groups, -1, update.shape[1]))
                    continue
                weight = float_weight(layer.base.weight)
                # A new tensor, not an in-place add: the original is kept untouched for the restore.
                swap(weight, (weight.data.to(update.dtype) + update).to(weight.dtype))
            for weight, merged_weight in fused.values():
                swap(weight, merged_weight.to(weight.dtype))
        yield
