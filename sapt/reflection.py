"""Attentive reflection (ARM): keep the router from forgetting which block serves old tasks.

After task i is trained, two things are kept: its *target*, the mean routing distribution over its
validation inputs (never its test inputs), and a few *replay inputs*: pseudo inputs sampled from a
generator LoRA (`sapt.pseudo`, the default) or, for users who may keep data, a few real training inputs.
While a later task T trains, every `replay_every` optimiser steps one batch of each old task's replay
inputs is routed and `kl_ratio * KL(target_i || routing)` is added to the loss, the target zero-padded
for the keys newer than i. Only the router sees those inputs, and old keys are frozen, so the term's
gradient reaches the query MLP and the current key only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from sapt.batching import Encoded, collate_prompts, encode, length_sorted_batches
from sapt.data import Example, Task
from sapt.modules.sapt_model import SAPTModel

# docs/method.md: 0.5 for SuperNI and 0.1 for Long Sequence on T5, 1-2 for LLaMA-family models.
DEFAULT_KL_RATIO = {("seq2seq", "SuperNI"): 0.5, ("seq2seq", "Long_Sequence"): 0.1}


def default_kl_ratio(family: str, benchmark: str | None) -> float:
    if family == "causal":
        return 1.0
    return DEFAULT_KL_RATIO.get((family, benchmark or ""), 0.5)


def kl_to_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)), averaged over the batch; zero target entries contribute 0."""
    target = target.to(logits.dtype).expand_as(logits)
    return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")


@torch.no_grad()
def mean_over_prompts(model: SAPTModel, items: list[Encoded], batch_size: int,
                      fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean over `items` of fn(input_ids, prompt_mask) -> (batch, k), computed batch by batch (on the CPU)."""
    total = None
    pad = model.tokenizer.pad_token_id
    for idx in length_sorted_batches(items, batch_size):
        batch = collate_prompts([items[i] for i in idx], model.family, pad)
        part = fn(batch["input_ids"], batch["prompt_mask"]).sum(0).float().cpu()
        total = part if total is None else total + part
    return total / len(items)


def routing_target(model: SAPTModel, items: list[Encoded], batch_size: int) -> list[float]:
    """The mean routing distribution over `items` (a task's validation prompts)."""
    return mean_over_prompts(model, items, batch_size, model.routing_weights).tolist()


def replay_count(n_train: int, ratio: float, maximum: int) -> int:
    """About `ratio` of the training size, at least 1, at most `maximum`.

    The one formula for how many replay inputs a task keeps, real or pseudo (`sapt.pseudo.wanted_count`)."""
    return max(1, min(maximum, round(ratio * n_train)))


def real_replay_inputs(task: Task, n: int, seed: int) -> list[str]:
    """A seeded sample of distinct real training inputs (for --reflection-source real)."""
    inputs = sorted({ex.input for ex in task.train})
    random.Random(f"{seed}:{task.name}:replay").shuffle(inputs)
    return inputs[:n]


@dataclass
class ReplaySet:
    task: str
    target: list[float]  # routing target over the keys of tasks 0..i
    items: list[Encoded]  # encoded replay prompts (no answers)
    # a share of the same inputs without the task's definition, for the learn-then-route router fit only
    # (route_without_definition, sapt.router_fit); empty by default, and the joint schedule never reads it
    bare_items: list[Encoded] = field(default_factory=list)


def encode_replay(model: SAPTModel, definition: str, inputs: list[str], max_source: int) -> list[Encoded]:
    return encode(model.tokenizer, model.family, definition, [Example(x, ("",)) for x in inputs], max_source, 1,
                  model.template)


class Reflection:
    """The replay term for one stage: one batch of each old task's replay inputs per call."""

    def __init__(self, sets: list[ReplaySet], kl_ratio: float, batch_size: int, seed: int):
        self.sets = [s for s in sets if s.items]
        self.kl_ratio = kl_ratio
        self.batch_size = batch_size
        self.rng = random.Random(seed)

    def __bool__(self) -> bool:
        return bool(self.sets) and self.kl_ratio > 0

    def loss(self, model: SAPTModel) -> torch.Tensor:
        """kl_ratio * sum over old tasks of KL(target || routing) on one replay batch each."""
        pad = model.tokenizer.pad_token_id
        total = torch.zeros((), device=model.device)
        for s in self.sets:
            picks = self.rng.sample(range(len(s.items)), min(self.batch_size, len(s.items)))
            batch = collate_prompts([s.items[i] for i in picks], model.family, pad)
            logits = model.routing_logits(batch["input_ids"], batch["prompt_mask"])
            target = torch.zeros(model.n_blocks, device=logits.device)
            target[: len(s.target)] = torch.tensor(s.target)
            total = total + kl_to_target(logits, target)
        return self.kl_ratio * total
