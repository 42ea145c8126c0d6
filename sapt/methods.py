"""Continual-learning methods behind one interface, so that they share the loop, data, evaluation and outputs.

Every method here is a choice of four things on the same `SAPTModel` (frozen backbone + LoRA blocks on
q/v + router):
- which block a stage trains (a new one per task, or always block 0),
- which weights mix the blocks, in training and at evaluation,
- an extra loss (O-LoRA's orthogonality and L2 terms),
- the training data of a stage (replay mixes in stored real examples; mtl trains on all tasks at once).

| method     | blocks          | mixing weights                                 | extra                      |
|------------|-----------------|------------------------------------------------|----------------------------|
| sapt       | one per task    | router (shared attention), reflection KL       |                            |
| sapt-hard  | one per task    | router in training; top-1 block at evaluation  |                            |
| seq-lora   | one, shared     | 1                                              |                            |
| inc-lora   | one per task    | 1 for every block                              |                            |
| o-lora     | one per task    | 1 for every block                              | orthogonal A's, L2         |
| replay     | one, shared     | 1                                              | stored real examples mixed |
| per-task   | one per task    | one-hot on the true task id (an oracle)        |                            |
| mtl        | one, shared     | 1; one stage over all tasks (upper bound)      |                            |
"""
from __future__ import annotations

import torch

from sapt.modules.sapt_model import SAPTModel


class Method:
    name = "sapt"
    routed = True  # weights come from the router (routing accuracy is defined)
    shared_block = False  # one block trained through every stage
    reflection = True  # attentive reflection applies
    joint = False  # a single stage over all tasks (mtl)
    memory = False  # stores real examples of old tasks (replay)

    def block_index(self, t: int) -> int:
        """The block stage t trains and saves."""
        return 0 if self.shared_block else t

    def add_stage(self, model: SAPTModel, t: int, task_name: str) -> None:
        if self.shared_block and model.n_tasks > 0:
            model.task_names.append(task_name)  # the same block keeps learning
        else:
            model.add_task(task_name)
        model.set_trainable(self.block_index(t), router=self.routed)

    def weights(self, model: SAPTModel, batch: dict[str, torch.Tensor], task_index: int, training: bool) -> torch.Tensor | None:
        """Mixing weights (batch, n_blocks), or None for the router's. `task_index` is the true task."""
        return None

    def extra_loss(self, model: SAPTModel, t: int) -> torch.Tensor | None:
        return None


def _ones(model: SAPTModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.ones(batch["input_ids"].shape[0], model.n_blocks, device=batch["input_ids"].device)


class SAPTHard(Method):
    name = "sapt-hard"

    def weights(self, model, batch, task_index, training):
        if training:
            return None
        w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
        return torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype)


class SeqLoRA(Method):
    name = "seq-lora"
    routed = False
    shared_block = True
    reflection = False

    def weights(self, model, batch, task_index, training):
        return _ones(model, batch)


class Replay(SeqLoRA):
    name = "replay"
    memory = True


class MTL(SeqLoRA):
    name = "mtl"
    joint = True


class IncLoRA(Method):
    name = "inc-lora"
    routed = False
    reflection = False

    def weights(self, model, batch, task_index, training):
        return _ones(model, batch)


class OLoRA(IncLoRA):
    """O-LoRA (Wang et al., 2023): the new block's A is pushed orthogonal to every earlier block's A,
    `lambda_1 * sum_layers sum_{i<t} |A_i A_t^T|_1`, plus `lambda_2 * sum ||theta_t||_2` on the new block."""

    name = "o-lora"

    def __init__(self, lambda_1: float = 0.5, lambda_2: float = 0.0):
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2

    def extra_loss(self, model, t):
        return self.lambda_1 * orthogonality_loss(model, t) + self.lambda_2 * l2_loss(model, t)


def orthogonality_loss(model: SAPTModel, t: int) -> torch.Tensor:
    """sum over adapted projections and earlier blocks i of sum |A_i A_t^T| (zero iff every row of A_t is
    orthogonal to every row of every earlier A); the block type computes it (`sapt.modules.blocks.lora.losses`)."""
    return model.blocks.extra_loss("orthogonality", t)


def l2_loss(model: SAPTModel, t: int) -> torch.Tensor:
    """sum over adapted projections of ||A_t||_2 + ||B_t||_2, from the block type."""
    return model.blocks.extra_loss("l2", t)


class PerTask(Method):
    """A fresh block per task used with the true task id: an oracle, and the single-task reference
    scores s_j (its diagonal) that FWT needs."""

    name = "per-task"
    routed = False
    reflection = False

    def weights(self, model, batch, task_index, training):
        w = torch.zeros(batch["input_ids"].shape[0], model.n_blocks, device=batch["input_ids"].device)
        w[:, task_index] = 1.0
        return w


METHODS = {m.name: m for m in (Method, SAPTHard, SeqLoRA, IncLoRA, OLoRA, Replay, PerTask, MTL)}


def make_method(name: str, lambda_1: float = 0.5, lambda_2: float = 0.0) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (available: {', '.join(METHODS)})")
    return OLoRA(lambda_1, lambda_2) if name == "o-lora" else METHODS[name]()
