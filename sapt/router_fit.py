"""Learn, then route (`router_schedule: learn-then-route`): after a stage's block has learned its task alone,
fit the router with every block frozen.

Why. In the paper's joint schedule the new block and the router learn together. A new key drawn at random
starts far behind the old, trained keys (on SmolLM2 a trained key gives logits of about 14 on its task's
inputs, a random one about 0), so the new task's inputs go to an old block, the new block gets a weight
near 0, and the cross-entropy's pull on its routing, proportional to w (1 - w), is near 0 too. At lr 1e-3
a key moves about half a logit in a 24-step CPU stage: the task stays starved (BENCHMARKS.md, "Router
starvation"). The release's stages of 600-3,000 steps hide it; a user's short stage does not.

What. The stage's block trains exactly as the per-task oracle's does (weight 1 on it, the router untouched:
the whole stage is the router warm-up). Then the router alone (the shared query MLP and key t; the old keys
stay frozen, as in joint training) takes `router_fit_steps` AdamW steps at the router's learning rate on

    CE(routing logits of the task's training prompts, t)                     route the new task to its block
  + router_fit_kl * sum_i KL(target_i || routing of old task i's replay inputs)  attentive reflection

The router reads only max-pooled token embeddings (no backbone pass), so the pooled prompts are computed
once and a step costs a small MLP: a thousand steps take a few seconds. The KL's weight is its own
(`router_fit_kl`, default 10), not the joint schedule's kl_ratio: here it competes with a cross-entropy of
the router alone, not with the language-model loss, and with weight 1 the new task's cross-entropy pulled
old tasks' real inputs (which the few replay inputs only sample) to the new block (bench/router_refit.py).
The diagonal then equals the oracle's by construction (the block is the oracle's block), and what is left
to lose is routing, which
`sapt eval --routing oracle` measures. The old tasks' routing is held by the same reflection KL the joint
schedule uses; the new task is supervised by its own label, which is known at training time.

The fit draws its batches from its own generator (seeded per stage), so a resumed stage fits the same router.

Routing without the definition (`route_without_definition: P`, default 0). The router pools the whole
prompt, definition included, so an input given without its task's definition (`sapt predict` with no
`--definition`) is routed from a pooled vector the router never saw. With P > 0 the fit also sees a seeded
share P of the new task's training inputs formatted without the definition (`format_prompt("", input)`),
with the same cross-entropy target, and a share P of each old task's replay inputs likewise, with that
task's routing target in its KL. The share is *added*: those rows join the with-definition rows, which all
stay. Replacing P x n of them instead would take the definition away from the very prompts the router is
asked about when a definition is given, and at P = 1 leave no with-definition prompt at all; added, every
prompt the router learned before is still in the fit, and each task's pool (its cross-entropy, or its KL
term) keeps one weight whatever P, so the balance between the new task's cross-entropy and the old tasks'
KL (`router_fit_kl`) is the one measured. The price is a with-definition row's share of each batch,
1 / (1 + P). A share is at least one input when P > 0 (as `replay_count` keeps at least one replay input),
and a task with no definition gets none (its prompt would be the same). At P = 0 nothing is added and no
number is drawn: the fit is the one before, byte for byte. The joint schedule does not offer it
(`RunConfig.validate`): there the router reads the pooled prompt of the very batch the block trains on.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sapt.batching import Encoded, collate_prompts, encode, length_sorted_batches
from sapt.data import Example
from sapt.modules.sapt_model import SAPTModel
from sapt.rundir.recovery import kill_point
from sapt.reflection import ReplaySet, kl_to_target

__all__ = ["fit_router", "pooled_prompts", "routing_probe", "share_without_definition", "without_definition"]


@torch.no_grad()
def pooled_prompts(model: SAPTModel, items: Sequence[Encoded], batch_size: int) -> torch.Tensor:
    """The router's input, the max-pooled prompt embedding, of each item: (len(items), d), in item order."""
    pad = model.tokenizer.pad_token_id
    out = torch.empty(len(items), model.router.d_model, device=model.device)
    for idx in length_sorted_batches(list(items), batch_size):
        batch = collate_prompts([items[i] for i in idx], model.family, pad)
        out[torch.tensor(idx, device=model.device)] = model.pooled_prompt(batch["input_ids"], batch["prompt_mask"])
    return out


def share_without_definition(n: int, share: float, seed: str) -> list[int]:
    """Which of `n` inputs the fit also sees without their definition: a seeded draw of a share `share` of
    them, at least one when share > 0 (all at 1, none at 0), in input order."""
    if share <= 0 or n == 0:
        return []
    k = n if share >= 1 else max(1, round(share * n))
    return sorted(random.Random(seed).sample(range(n), k))


def without_definition(model: SAPTModel, definition: str, inputs: Sequence[str], share: float, seed: str,
                       max_source: int) -> list[Encoded]:
    """A seeded share of `inputs` encoded as prompts without their definition (`format_prompt("", input)`),
    for the router fit (see the module docstring); none when the task has no definition to leave out."""
    if not definition.strip():
        return []
    picks = share_without_definition(len(inputs), share, seed)
    return encode(model.tokenizer, model.family, "", [Example(inputs[i], ("",)) for i in picks], max_source, 1,
                  model.template)


def fit_router(model: SAPTModel, t: int, train_items: Sequence[Encoded], val_items: Sequence[Encoded],
               replay: Sequence[ReplaySet], kl_ratio: float, *, steps: int, lr: float, batch_size: int,
               seed: int, eval_batch_size: int = 16, bare_train_items: Sequence[Encoded] = (),
               bare_val_items: Sequence[Encoded] = ()) -> dict[str, Any]:
    """Fit the router's trainable parameters (query MLP, key t) to route task t's prompts to block t while
    the old tasks' replay inputs keep their routing targets. Returns a summary for stage.json: the new
    task's mean weight on its block (validation prompts) and the old tasks' KL, before and after.

    `bare_train_items`: the share of task t's training inputs without their definition
    (`route_without_definition`), added to its rows with the same target; each ReplaySet's `bare_items`
    likewise join its replay rows. `bare_val_items` (the validation inputs without the definition) adds
    `new_task_weight_without_definition`, before and after, to the summary."""
    router = model.router
    params = [p for p in router.parameters() if p.requires_grad]
    x_train = _pooled_rows(model, train_items, bare_train_items, eval_batch_size)
    x_val = pooled_prompts(model, val_items, eval_batch_size) if val_items else x_train
    x_bare_val = pooled_prompts(model, bare_val_items, eval_batch_size) if bare_val_items else None
    old = _old_tasks(model, replay, eval_batch_size)
    before = _measure(model, t, x_val, old, kl_ratio)
    bare_before = _weight_on(model, t, x_bare_val) if x_bare_val is not None else None
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    target = torch.full((min(batch_size, len(x_train)),), t, dtype=torch.long, device=x_train.device)
    for step in range(steps):
        if step == steps // 2:
            kill_point(f"stage{t}:router-fit")
        picks = torch.randperm(len(x_train), generator=gen)[:batch_size]
        loss = F.cross_entropy(router.logits(x_train[picks.to(x_train.device)]), target[: len(picks)])
        for x_old, goal in old:
            o = torch.randperm(len(x_old), generator=gen)[:batch_size].to(x_old.device)
            loss = loss + kl_ratio * kl_to_target(router.logits(x_old[o]), goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = _measure(model, t, x_val, old, kl_ratio)
    summary = {"steps": steps, "lr": lr, "new_task_weight": [before[0], after[0]], "old_tasks_kl": [before[1], after[1]]}
    if x_bare_val is not None:
        summary["new_task_weight_without_definition"] = [bare_before, _weight_on(model, t, x_bare_val)]
    return summary


def _pooled_rows(model: SAPTModel, items: Sequence[Encoded], bare_items: Sequence[Encoded],
                 batch_size: int) -> torch.Tensor:
    """The pooled prompts of `items`, then of `bare_items` (the same task's, without its definition): one
    pool of rows with one target. With no bare items, exactly `pooled_prompts(items)`."""
    x = pooled_prompts(model, items, batch_size)
    return torch.cat([x, pooled_prompts(model, bare_items, batch_size)]) if bare_items else x


def _old_tasks(model: SAPTModel, replay: Sequence[ReplaySet], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each old task's pooled replay prompts and its routing target over the keys of tasks 0..i, zero for
    the newer keys."""
    old = []
    for s in replay:
        if s.items:
            target = torch.zeros(model.n_blocks, device=model.device)
            target[: len(s.target)] = torch.tensor(s.target, device=model.device)
            old.append((_pooled_rows(model, s.items, s.bare_items, batch_size), target))
    return old


@torch.no_grad()
def _measure(model: SAPTModel, t: int, x_val: torch.Tensor, old: list, kl_ratio: float) -> tuple[float, float]:
    """The new task's mean routing weight on block t over its validation prompts, and the reflection term."""
    kl = sum(float(kl_to_target(model.router.logits(x), goal)) for x, goal in old) * kl_ratio
    return _weight_on(model, t, x_val), round(kl, 6)


@torch.no_grad()
def _weight_on(model: SAPTModel, t: int, x: torch.Tensor) -> float:
    """The mean routing weight of pooled prompts `x` on block t."""
    return round(float(torch.softmax(model.router.logits(x), -1)[:, t].mean()), 6)


@torch.no_grad()
def routing_probe(model: SAPTModel, t: int, items: Sequence[Encoded], replay: Sequence[ReplaySet],
                  kl_ratio: float, eval_batch_size: int = 16) -> dict[str, float]:
    """Where the router stands for task t at the start of its stage (`sapt diagnose`): the mean weight of
    task t's training prompts on block t, the mean logit gap from the best old key to key t on them
    (positive: an old block wins), and the old tasks' reflection term (their replay inputs against their
    routing targets)."""
    x = pooled_prompts(model, items, eval_batch_size)
    logits = model.router.logits(x).float()
    old = _old_tasks(model, replay, eval_batch_size)
    weight, kl = _measure(model, t, x, old, kl_ratio)
    gap = float((logits[:, :t].max(-1).values - logits[:, t]).mean()) if t > 0 else 0.0
    return {"new_task_weight": weight, "logit_gap": round(gap, 4), "old_tasks_kl": kl}
