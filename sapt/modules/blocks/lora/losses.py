"""O-LoRA's losses on LoRA blocks (Wang et al., 2023), beside the blocks they read.

For block t being trained, over every adapted projection (layer) and every earlier block i < t:

    orthogonality(t) = sum_layers sum_{i<t} sum_{j,k} |(A_i A_t^T)_{jk}|     (A_i detached: old blocks stay)
    l2(t)            = sum_layers ||A_t||_2 + ||B_t||_2                     (Frobenius norms)

The first is zero iff every row of A_t is orthogonal to every row of every earlier A, i.e. the new
block reads input directions no earlier block reads.
"""
from __future__ import annotations

from typing import Iterable

import torch

from sapt.modules.blocks.lora.layer import MixtureLoRALinear


def orthogonality_loss(layers: Iterable[MixtureLoRALinear], t: int) -> torch.Tensor:
    """sum over layers and earlier blocks i of sum |A_i A_t^T|."""
    total = torch.zeros(())
    for layer in layers:
        for i in range(t):
            total = total + (layer.lora_A[i].detach() @ layer.lora_A[t].t()).abs().sum()
    return total


def l2_loss(layers: Iterable[MixtureLoRALinear], t: int) -> torch.Tensor:
    """sum over layers of ||A_t||_2 + ||B_t||_2."""
    total = torch.zeros(())
    for layer in layers:
        total = total + layer.lora_A[t].norm(p=2) + layer.lora_B[t].norm(p=2)
    return total
