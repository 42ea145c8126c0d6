"""SAPT's router before a stage trains (`sapt.methods.sapt.SAPT.prepare_stage`): the centre subtracted from
the pooled prompt (`router_centre`) and, optionally, the new task's key fitted to its prompts
(`router_key_init: task`). Both are deviations from the paper, measured in BENCHMARKS.md."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from sapt.config import DecodingSection
from sapt.data import Task
from sapt.evaluation.generation import encode_task_split
from sapt.modules.sapt_model import SAPTModel
from sapt.reflection import mean_over_prompts

__all__ = ["init_key_from_task", "update_centre"]


@torch.no_grad()
def update_centre(model: SAPTModel, task: Task, t: int, decoding: DecodingSection) -> None:
    """Stage t's router centre: the mean, over tasks 0..t (equal weight), of each task's mean pooled
    prompt embedding on its training prompts; the router subtracts it before the query MLP.

    A deviation from the paper, measured in BENCHMARKS.md. Max-pooled token embeddings share a large
    common part (on SmolLM2 ~98% of their norm), and the query MLP has no biases: training then grows
    that common part until, after LayerNorm, every input's query is nearly the same (1% spread after the
    built-in suite) and one block takes every input. Centred, the query is made of what tells tasks
    apart. The centre moves at each new stage (the old tasks' queries with it); the reflection KL, which
    replays every old task at every step, is what re-fits their routing, as it does for any router change."""
    items = encode_task_split(model, task, "train", decoding.max_source_length, decoding.max_target_length)
    mean = mean_over_prompts(model, items, decoding.eval_batch_size, model.pooled_prompt).to(model.router.centre)
    model.router.centre.copy_((t * model.router.centre + mean) / (t + 1))


@torch.no_grad()
def init_key_from_task(model: SAPTModel, task: Task, t: int, decoding: DecodingSection,
                       old_prompts: Sequence[list] = (), share: float = 0.9) -> None:
    """Key t, for stage t > 0: the smallest key that routes task t's mean prompt to block t and every old
    task's mean replay prompt away from it.

    Why (`router_key_init: task`; measured in BENCHMARKS.md). A new key is drawn at random. During the
    router warm-up the new block learns its task alone; when the router starts, the random key decides
    where the task's inputs go, and with 576-wide queries and keys the logits are large: on the built-in
    suite at seed 43 the router sent addition 99.995% to topic's block at the first routed step, the new
    block's weight (and so its gradient) was 4e-5, the training loss went from 0.02 back to 4 and stayed.

    With q the mean query of task t's training prompts, q_i the mean query of old task i's replay prompts
    (`old_prompts`: what reflection keeps, so no old data is needed) and l_j(x) = x . k_j / sqrt(d) the old
    logits, key t is the minimum-norm solution of
        q   . k_t / sqrt(d) = max_j l_j(q)   + m     (block t gets `share` of task t's mean prompt)
        q_i . k_t / sqrt(d) = min_j l_j(q_i) - m     (and less than any old block of old task i's)
    with m = log(share / (1 - share)) + log t. Moving an old key instead would change old tasks' routing;
    pointing the key at q alone (a first version) also pulled old tasks whose queries resemble q."""
    router = model.router
    scale = math.sqrt(router.d_model)

    def mean_query(items: list) -> torch.Tensor:
        return mean_over_prompts(model, items, decoding.eval_batch_size,
                                 lambda ids, mask: router.query(model.pooled_prompt(ids, mask))).to(router.keys[t])

    old_keys = torch.stack([router.keys[j] for j in range(t)])
    margin = math.log(share / (1 - share)) + math.log(t)
    q = mean_query(encode_task_split(model, task, "train", decoding.max_source_length, decoding.max_target_length))
    rows, targets = [q], [float((old_keys @ q).max()) / scale + margin]
    for items in old_prompts:
        if items:
            q_old = mean_query(items)
            rows.append(q_old)
            targets.append(float((old_keys @ q_old).min()) / scale - margin)
    key = torch.linalg.pinv(torch.stack(rows)) @ torch.tensor(targets, dtype=q.dtype) * scale
    router.keys[t].copy_(key)
