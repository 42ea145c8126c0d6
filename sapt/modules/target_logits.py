"""A causal LM's loss from the logits of the answer positions only, and a contiguous input to its LM head.

A causal LM's forward projects *every* position's hidden state onto the vocabulary, and its loss then
keeps the positions that predict an answer token. Here prompts are long and answers short: a Long
Sequence batch of 4 x 160 tokens has 5-20 answer tokens. On SmolLM2 the LM head (576 x 49152) is 21% of
the linear layers' multiply-adds per token, its float32 logits for that batch are 126 MB, and the backward
pass goes through it again. So `causal_lm_loss` computes the logits of the answer positions alone: a
forward pre-hook on the model's output embedding (`get_output_embeddings()`, the LM head) keeps the
hidden states of those positions, as one (n_targets, d) matrix, before the projection. The model's own
forward, attention and any elementwise logit post-processing (soft-capping, scaling) are untouched.

The loss is the one transformers' `ForCausalLMLoss` computes -- the mean token cross-entropy over the
targets, in float32 -- summed in another order; `tests/test_target_logits.py` checks loss and every
trainable gradient against `model(labels=...)`.

`contiguous_head_input`: in generation, LLaMA-family forwards call the head on `hidden[:, -1:, :]`, a
non-contiguous slice. PyTorch's CPU `linear` then runs a batched matmul over the weight expanded per row,
which in bfloat16 copies the whole (batch, d, vocab) weight: 3.3 s of a 7.1 s evaluation batch on
SmolLM2 (16 prompts, bf16, one core). A pre-hook that makes the input contiguous turns it into one
matrix product; values are unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _contiguous(module: nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def contiguous_head_input(model: nn.Module) -> None:
    """Make the LM head's input contiguous before it is projected (see the module docstring)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_sapt_contiguous", False):
        head.register_forward_pre_hook(_contiguous)
        head._sapt_contiguous = True


@contextmanager
def head_positions(model: nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """Inside the block, the LM head projects only the positions where `keep` (batch, seq) is True: its
    input (batch, seq, d) becomes (n_kept, d), and the model returns (n_kept, vocab) logits."""
    head = model.get_output_embeddings()

    def select(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.shape[:2] != keep.shape:
            raise RuntimeError(f"the LM head got hidden states of shape {tuple(hidden.shape)}, expected "
                               f"{tuple(keep.shape)} + (d,)")
        return (hidden[keep], *args[1:])

    handle = head.register_forward_pre_hook(select, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                   labels: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy of `labels` (-100 = ignored) under a causal LM, position i predicting
    token i + 1; only the predicting positions' logits are computed. `inputs_embeds` (batch, seq, d)
    replaces `input_ids` when given (an input prefix: `sapt.modules.blocks.base`)."""
    keep = F.pad(labels[:, 1:] != -100, (0, 1), value=False)  # position i predicts labels[:, i + 1]
    targets = labels[:, 1:][keep[:, :-1]]
    tokens = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    with head_positions(model, keep):
        logits = model(**tokens, attention_mask=attention_mask, use_cache=False).logits
    return F.cross_entropy(logits.float(), targets)
