"""Merge one input's weighted mixture into the base weights, for single-input inference (predict --merge).

    with merged(model, weights):          # weights: (1, T) or (T,), the input's routing weights
        texts, _ = model.generate(batch_of_that_one_input, max_new_tokens)

The model's block type does the merge (`BlockType.merged`); for LoRA, W' = W + sum_i w_i * scaling *
B_i A_i in every adapted projection (the math, and when it pays: `sapt.modules.blocks.lora.merge`).
Inside the block the adapted layers add nothing and refuse batches of more than one row; on exit the
original weight tensors are put back, bit-identical.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sapt.modules.sapt_model import SAPTModel


def merged(model: SAPTModel, weights: torch.Tensor) -> AbstractContextManager[None]:
    return model.blocks.merged(weights)
