"""The continual-learning recipe: for each task, train its block, pick the best epoch on validation,
save the stage, then score every task seen so far. Finished work is loaded, not redone.

The run directory (its layout, choosing and locking it, checking its stages against manifest.json,
reading it back) is `sapt.rundir`. What a stage writes there:
    stages/NN_<task>/adapter.safetensors   block NN of every adapted projection
    stages/NN_<task>/router.safetensors    key NN and the shared query MLP after stage NN
    stages/NN_<task>/stage.json      training summary and routing target
    stages/NN_<task>/replay.jsonl    reflection inputs of task NN (pseudo or real), with replay_stats.json
    stages/NN_<task>/scores.json     scores on tasks 0..NN, with predictions/<task>.jsonl

Resuming (the same command again): a phase of a stage (trained / replay / evaluated, `sapt.manifest`)
is skipped only if manifest.json records it and its files pass their checksums (`sapt.rundir.verify_stages`);
a stage that was training resumes after its last checkpointed epoch with the optimiser and every RNG
state, so the result is bit-identical to an uninterrupted run on CPU. Damaged trained or replay files
invalidate their stage and every later one (those are redone from scratch); damaged evaluation files
are rescored.

Test hook: SAPT_TEST_KILL_AT=point[,point...] makes the process kill itself (SIGKILL, or the signal
named by SAPT_TEST_KILL_SIGNAL, e.g. SIGSTOP) when it reaches a named point; see `kill_point`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from sapt import io
from sapt.batching import collate_train, encode, length_sorted_batches
from sapt.config import ConfigError, RunConfig, default_value, to_dict
from sapt.data import Example, Task, builtin_suite, load_benchmark, load_task, resolve_task_names
from sapt.data.validate import validate_or_raise
from sapt.distributed import Dist, get_dist
from sapt.manifest import Manifest
from sapt.rundir import (
    CONFIG, METRICS, PHASE_FILES, TIMING, collect_matrices, load_run_config, lock_run_dir, replay_stats, run_timing,
    stage_dir, trained_stages, verify_stages,
)
from sapt.rundir.plan import drop_if_bare
from sapt.evaluate import encode_task_split, evaluate_task, evaluation_loss
from sapt.metrics import cl_metrics, format_table
from sapt.models import eager_attention_on_cpu, load_model
from sapt.methods import Method, make_method
from sapt.modules.sapt_model import SAPTModel
from sapt.tracking import Trackers, check_trackers
from sapt.recovery import CHECKPOINT, CheckpointError, as_random_state, kill_point, load_checkpoint, save_checkpoint, trim_log
from sapt.reflection import (
    Reflection, ReplaySet, default_kl_ratio, encode_replay, mean_over_prompts, real_replay_inputs, replay_count,
    routing_target,
)


class TrainingError(RuntimeError):
    pass


def log(msg: str) -> None:
    """Progress for people: from the main process only when several run (accelerate launch)."""
    if get_dist().is_main:
        print(msg, file=sys.stderr, flush=True)


def target_tokens(batch: dict[str, torch.Tensor], family: str) -> int:
    """How many target tokens the batch's mean loss averages over (a causal LM predicts position i+1)."""
    labels = batch["labels"][:, 1:] if family == "causal" else batch["labels"]
    return int((labels != -100).sum())


# ---- pieces ------------------------------------------------------------------------------------------
def load_run_tasks(cfg: RunConfig) -> list[Task]:
    """The run's tasks in training order: its benchmark's (or the built-in suite's), then `extra_tasks`."""
    tasks = _base_tasks(cfg)
    split = dict(val_size=cfg.val_size, max_train=cfg.max_train_per_task, max_eval=cfg.max_eval_per_task, seed=cfg.seed)
    for folder in map(Path, cfg.extra_tasks):
        if folder.name in {t.name for t in tasks}:
            raise ConfigError(f"{folder}: the run already has a task named {folder.name!r}")
        validate_or_raise(folder.parent.parent, folder.parent.name, [folder.name], **split)
        tasks.append(load_task(folder.parent.parent, folder.parent.name, folder.name, **split))
    return tasks


def _base_tasks(cfg: RunConfig) -> list[Task]:
    if cfg.data_dir is None:
        tasks = builtin_suite(seed=cfg.seed)
        if cfg.tasks:
            by_name = {t.name: t for t in tasks}
            unknown = [n for n in cfg.tasks if n not in by_name]
            if unknown:
                raise ConfigError(f"unknown built-in task(s): {', '.join(unknown)} (have: {', '.join(by_name)})")
            tasks = [by_name[n] for n in cfg.tasks]
        # subsets apply to the built-in suite too, so a quick run can be made quicker
        for t in tasks:
            if cfg.max_train_per_task:
                t.train = t.train[: cfg.max_train_per_task]
            if cfg.max_eval_per_task:
                t.eval = t.eval[: cfg.max_eval_per_task]
        return tasks
    names = resolve_task_names(cfg.data_dir, cfg.benchmark, cfg.tasks, cfg.order)
    split = dict(val_size=cfg.val_size, max_train=cfg.max_train_per_task, max_eval=cfg.max_eval_per_task, seed=cfg.seed)
    validate_or_raise(cfg.data_dir, cfg.benchmark, names, **split)  # every file, all problems at once
    return load_benchmark(cfg.data_dir, cfg.benchmark, tasks=names, **split)


def build_model(cfg: RunConfig) -> SAPTModel:
    loaded = load_model(cfg.model, seed=cfg.seed, dtype=getattr(torch, cfg.backbone_dtype))
    if cfg.backbone_dtype != "float32" and get_dist().device.type == "cpu":
        eager_attention_on_cpu(loaded.model, cfg.max_source_length + cfg.max_target_length)
    torch.manual_seed(cfg.seed)  # the query MLP's initialisation
    return SAPTModel(loaded, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, query_hidden=cfg.query_hidden)


def place(model: SAPTModel) -> None:
    """Onto this process's device and, under an FSDP launch, the backbone's blocks sharded (the task
    blocks -- `model.blocks.keep_whole()` -- and the router stay whole; see sapt.distributed)."""
    dist = get_dist()
    model.to(dist.device)
    summary = dist.shard_backbone(model.base, keep_whole=model.blocks.keep_whole())
    if summary is not None:
        model.sharded = True
        log(f"sapt: {summary}")


def stage_seed(cfg: RunConfig, t: int) -> int:
    """Each stage reseeds, so a resumed run draws the same numbers as an uninterrupted one."""
    return cfg.seed * 1000 + t


def non_finite_message(what: str, task: Task, t: int, where: str, epochs_done: int, ckpt: Path | None) -> str:
    if ckpt is not None and epochs_done:
        kept = f"stages 1-{t} and the checkpoint of stage {t + 1} after epoch {epochs_done} ({ckpt}) are kept"
    elif t:
        kept = f"stages 1-{t} are kept; stage {t + 1} restarts from its beginning"
    else:
        kept = "nothing was trained yet; stage 1 restarts from its beginning"
    return (f"non-finite {what} in task {task.name!r} (stage {t + 1}), {where}; {kept}. The usual cause is a "
            "step too large for the model (a high --lr, or a large --lora-alpha, --kl-ratio or --olora-lambda1 "
            "scaling it up). Lower the learning rate and run the same command again with --lr NEW_LR --allow-config-change lr "
            "(and router_lr if you set --router-lr) to resume from there")


def train_stage(
    model: SAPTModel, task: Task, t: int, cfg: RunConfig, log_path: Path, reflection: Reflection | None = None,
    checkpoint: Path | None = None, method: Method | None = None, items: list | None = None,
    val_items: list | None = None, trackers: Trackers | None = None, step_offset: int = 0,
) -> dict[str, Any]:
    """Train block t on `task`; keep the epoch with the lowest validation loss. Returns a summary.

    With `reflection`, the replay KL is added once per `replay_every` optimiser steps, at the first
    micro-batch of the step and not divided by `grad_accum`: its weight per step is the same whatever
    the accumulation.

    With `checkpoint` (a path), the whole training state (trainable parameters, the best epoch's
    parameters, optimiser, the torch / shuffling / reflection RNG states, history) is saved there after
    every epoch, and if the file exists training continues after its epoch, exactly as if never
    stopped. The learning rates always come from `cfg` (they may have been lowered to resume).

    Router warm-up: a new block starts at zero (B = 0), so at the start of stage t > 1 it cannot help
    and every old block that fits the answer format a little can; Adam then moves the whole query MLP
    toward the old blocks within a few steps, the new block's weight collapses towards 0 and it stops
    learning (seen on SmolLM2 at lr 3e-4: the second task's validation loss did not move in 2 epochs).
    So during the first `router_warmup` share of the stage's optimiser steps the router is not updated
    (nor is the reflection KL, which only moves the router) and the new block learns its task alone
    (weight 1 on it, 0 on the others): it reaches the scale at which it is useful on its own, so that
    when the router starts learning, sending the task's inputs to the new block is what lowers the loss.
    (Trained under the router's small initial weight instead, Adam scales the block up to work at that
    weight, and the router then has no reason to move towards it.) Then all train together as in the
    paper. `router_warmup` 0 is the paper's schedule.

    `method` (default: SAPT) decides the mixing weights and any extra loss; `items` replaces the task's
    encoded training examples (replay mixes in stored ones; mtl trains on every task at once), and
    `val_items` its validation examples. `trackers` get the losses, at `step_offset` + this stage's step.
    """
    method = method or make_method("sapt")
    if items is None:
        items = encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length)
    val = val_items if val_items is not None else \
        encode_task_split(model, task, "val", cfg.max_source_length, cfg.max_target_length)

    def weights_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return method.weights(model, batch, t, training=True)

    def train_weights_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if method.routed and steps < warmup:  # router warm-up: the new block learns its task alone
            w = torch.zeros(batch["input_ids"].shape[0], model.n_blocks, device=batch["input_ids"].device)
            w[:, method.block_index(t)] = 1.0
            return w
        return weights_fn(batch)

    dist = get_dist()
    router = [p for p in model.router.parameters() if p.requires_grad]
    router_ids = {id(p) for p in router}
    blocks = [p for p in model.trainable_parameters() if id(p) not in router_ids]
    lrs = (cfg.lr, cfg.router_lr or cfg.lr)
    optimizer = torch.optim.AdamW(
        [{"params": blocks, "lr": lrs[0]}, {"params": router, "lr": lrs[1]}], weight_decay=0.0
    )
    scaler = dist.grad_scaler(cfg.mixed_precision)
    gen = torch.Generator().manual_seed(stage_seed(cfg, t))
    pad = model.tokenizer.pad_token_id
    n_batches = math.ceil(len(items) / cfg.batch_size)
    warmup = round(cfg.router_warmup * cfg.epochs * math.ceil(n_batches / cfg.grad_accum)) if t > 0 else 0
    best: dict[str, Any] = {"val_loss": math.inf}
    history: list[dict[str, Any]] = []
    steps = 0
    start = 0
    seconds = 0.0
    t0 = time.time()
    params = model.trainable_parameters()
    dist.broadcast_parameters(params)  # the new block and key start identical on every process
    if checkpoint is not None and checkpoint.exists():
        try:
            state = load_checkpoint(checkpoint)
            if state.get("task") != task.name or state.get("stage") != t or \
                    [tuple(p.shape) for p in state["params"]] != [tuple(p.shape) for p in params]:
                raise CheckpointError("it belongs to another stage or model")
        except (CheckpointError, KeyError, TypeError) as e:
            log(f"sapt: stage {t + 1} ({task.name}): the checkpoint {checkpoint} is not usable ({e}); "
                "the stage restarts from its beginning")
            checkpoint.unlink()
        else:
            with torch.no_grad():
                for p, saved in zip(params, state["params"]):
                    p.copy_(saved)
            optimizer.load_state_dict(state["optimizer"])
            best = state["best"]
            history, steps, start, seconds = state["history"], state["steps"], state["epoch"], state["seconds"]
            torch.set_rng_state(state["rng"]["torch"])
            gen.set_state(state["rng"]["perm"])
            if reflection is not None and state["rng"]["reflection"] is not None:
                reflection.rng.setstate(as_random_state(state["rng"]["reflection"]))
            log(f"sapt: stage {t + 1} ({task.name}) resumes after epoch {start}/{cfg.epochs} from its checkpoint")
    for group, lr in zip(optimizer.param_groups, lrs):  # after load_state_dict, which restores the old ones
        group["lr"] = lr
    if checkpoint is not None and dist.is_main:
        trim_log(log_path, t, start)
    model.train()
    # Only the main process writes the log; the others write to nowhere.
    with (open(log_path, "a", encoding="utf-8") if dist.is_main else open(os.devnull, "w")) as logf:
        for epoch in range(start, cfg.epochs):
            perm = torch.randperm(len(items), generator=gen).tolist()
            bar = tqdm(range(n_batches), desc=f"[{t + 1}] {task.name} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not dist.is_main)
            losses, kls = [], []
            for b in bar:
                # Every process draws the same global micro-batch and takes its slice (see sapt.distributed).
                global_items = [items[i] for i in perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
                local_items = dist.shard(global_items)
                if local_items:
                    batch = collate_train(local_items, model.family, pad)
                    with dist.autocast(cfg.mixed_precision):
                        loss = model(batch, train_weights_fn(batch)).float()
                elif model.sharded:  # nothing left for this process, but FSDP needs its forward and backward
                    stand_in = collate_train(global_items[:1], model.family, pad)
                    with dist.autocast(cfg.mixed_precision):
                        loss = model(stand_in, train_weights_fn(stand_in)).float() * 0.0
                    batch = None
                else:  # a last, short global batch leaves this process nothing
                    batch, loss = None, torch.zeros((), device=model.device)
                if dist.world > 1:  # token sum over the global token count: the 1-process loss
                    n_global = sum(len(e.target) for e in global_items)
                    local_tokens = target_tokens(batch, model.family) if batch is not None else 0
                    loss = loss * (local_tokens * dist.world / max(n_global, 1))
                    loss_value = dist.sum(float(loss.detach()) / dist.world)
                else:
                    loss_value = loss.item()
                total = loss / cfg.grad_accum
                record = {"stage": t, "task": task.name, "epoch": epoch, "step": b, "loss": loss_value}
                extra = method.extra_loss(model, t)
                if extra is not None:
                    total = total + extra / cfg.grad_accum
                    record["extra"] = extra.item()
                if reflection and steps >= warmup and b % cfg.grad_accum == 0 and (steps % cfg.replay_every == 0):
                    with dist.autocast(cfg.mixed_precision):
                        kl = reflection.loss(model).float()
                    total = total + kl
                    record["kl"] = kl.item()
                    kls.append(record["kl"])
                finite = bool(torch.isfinite(total))
                if dist.world > 1:  # every process stops, or none does
                    finite = dist.sum(0.0 if finite else 1.0) == 0
                if not finite:
                    raise TrainingError(non_finite_message(f"loss ({float(total.detach())})", task, t,
                                                           f"epoch {epoch + 1}, batch {b + 1}", epoch, checkpoint))
                if total.requires_grad:  # not for a process left without examples and with no extra term
                    (scaler.scale(total) if scaler is not None else total).backward()
                if (b + 1) % cfg.grad_accum == 0 or b + 1 == n_batches:
                    dist.average_gradients(params)
                    if steps < warmup:
                        for p in router:
                            p.grad = None  # AdamW skips a parameter without gradient: no update, no state
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                    if trackers is not None:
                        trackers.log({"train/loss": record["loss"], **({"train/kl": record["kl"]} if "kl" in record else {}),
                                      "stage": t + 1}, step=step_offset + steps)
                losses.append(record["loss"])
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                logf.write(json.dumps(record) + "\n")
                if b == 0:
                    kill_point(f"stage{t}:epoch{epoch + 1}:mid", logf)
            logf.flush()
            if dist.is_main:
                os.fsync(logf.fileno())  # the epoch's lines are on disk before its checkpoint says it is done
            val_loss = distributed_loss(dist, model, val, cfg, weights_fn)
            if not math.isfinite(val_loss):
                raise TrainingError(non_finite_message(f"validation loss ({val_loss})", task, t,
                                                       f"after epoch {epoch + 1}", epoch, checkpoint))
            history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_loss": val_loss,
                            "lr": lrs[0], "router_lr": lrs[1]})
            if trackers is not None:
                trackers.log({"val/loss": val_loss, "stage": t + 1}, step=step_offset + steps)
            kl_note = ""
            if kls:
                history[-1]["kl"] = sum(kls) / len(kls)
                kl_note = f", reflection KL {history[-1]['kl']:.4f}"
            log(f"  [{t + 1}] {task.name} epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, "
                f"val loss {val_loss:.4f}{kl_note}")
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch + 1,
                        "params": [p.detach().clone() for p in model.trainable_parameters()]}
            if checkpoint is not None and dist.is_main:
                save_checkpoint(checkpoint, {
                    "format": 1, "stage": t, "task": task.name, "epoch": epoch + 1, "steps": steps,
                    "params": [p.detach().clone() for p in params], "best": best,
                    "optimizer": optimizer.state_dict(), "history": history,
                    "seconds": seconds + time.time() - t0,
                    "rng": {"torch": torch.get_rng_state(), "perm": gen.get_state(),
                            "reflection": reflection.rng.getstate() if reflection is not None else None},
                })
                kill_point(f"stage{t}:epoch{epoch + 1}")
    with torch.no_grad():
        for p, saved in zip(model.trainable_parameters(), best["params"]):
            p.copy_(saved)
    return {"task": task.name, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "history": history,
            "n_train": len(items), "n_val": len(val), "steps": steps,
            # which examples the epoch was chosen on: their encoded prompts and answers, hashed
            "val_sha256": hashlib.sha256(json.dumps([[e.prompt, e.target] for e in val]).encode()).hexdigest(),
            # one process computes it, so that every process replays towards exactly the same target
            "routing_target": dist.broadcast(routing_target(model, val, cfg.eval_batch_size) if dist.is_main else None)
            if method.routed else None,
            "seconds": round(seconds + time.time() - t0, 1)}


@torch.no_grad()
def update_centre(model: SAPTModel, task: Task, t: int, cfg: RunConfig) -> None:
    """Stage t's router centre: the mean, over tasks 0..t (equal weight), of each task's mean pooled
    prompt embedding on its training prompts; the router subtracts it before the query MLP.

    A deviation from the paper, measured in BENCHMARKS.md. Max-pooled token embeddings share a large
    common part (on SmolLM2 ~98% of their norm), and the query MLP has no biases: training then grows
    that common part until, after LayerNorm, every input's query is nearly the same (1% spread after the
    built-in suite) and one block takes every input. Centred, the query is made of what tells tasks
    apart. The centre moves at each new stage (the old tasks' queries with it); the reflection KL, which
    replays every old task at every step, is what re-fits their routing, as it does for any router change."""
    items = encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length)
    mean = mean_over_prompts(model, items, cfg.eval_batch_size, model.pooled_prompt).to(model.router.centre)
    model.router.centre.copy_((t * model.router.centre + mean) / (t + 1))


@torch.no_grad()
def init_key_from_task(model: SAPTModel, task: Task, t: int, cfg: RunConfig, old_prompts: Sequence[list] = (),
                       share: float = 0.9) -> None:
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
        return mean_over_prompts(model, items, cfg.eval_batch_size,
                                 lambda ids, mask: router.query(model.pooled_prompt(ids, mask))).to(router.keys[t])

    old_keys = torch.stack([router.keys[j] for j in range(t)])
    margin = math.log(share / (1 - share)) + math.log(t)
    q = mean_query(encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length))
    rows, targets = [q], [float((old_keys @ q).max()) / scale + margin]
    for items in old_prompts:
        if items:
            q_old = mean_query(items)
            rows.append(q_old)
            targets.append(float((old_keys @ q_old).min()) / scale - margin)
    key = torch.linalg.pinv(torch.stack(rows)) @ torch.tensor(targets, dtype=q.dtype) * scale
    router.keys[t].copy_(key)


def distributed_loss(dist: Dist, model: SAPTModel, items: list, cfg: RunConfig, weights_fn) -> float:
    """evaluation_loss over `items`, each process scoring its slice; the same value on every process."""
    if dist.fsdp:  # whole batches per process, as many on each (see Dist.lockstep_batches)
        batches = dist.lockstep_batches(length_sorted_batches(items, cfg.eval_batch_size))
        with dist.autocast(cfg.mixed_precision):
            return dist.sum(evaluation_loss(model, items, cfg.eval_batch_size, weights_fn, batches)) / len(items)
    mine = dist.shard(items)
    with dist.autocast(cfg.mixed_precision):
        local = evaluation_loss(model, mine, cfg.eval_batch_size, weights_fn) if mine else 0.0
    return local if dist.world == 1 else dist.sum(local * len(mine)) / len(items)


def stage_tasks(tasks: list[Task], method: Method) -> list[Task]:
    """What each stage trains on: one task per stage, or for mtl a single stage named "all" (its
    training and validation items, every task's with its own definition, are assembled by the caller)."""
    if not method.joint:
        return tasks
    return [Task(name="all", definition="", metric="em", train=[], val=[], eval=[], eval_split=tasks[0].eval_split)]


def memory_examples(task: Task, cfg: RunConfig) -> list:
    """replay: a seeded sample of `replay_memory` real training examples (with answers) of a task."""
    rng = random.Random(f"{cfg.seed}:{task.name}:memory")
    return rng.sample(task.train, min(cfg.replay_memory, len(task.train)))


def make_replay_inputs(model: SAPTModel, task: Task, t: int, cfg: RunConfig) -> tuple[list[str], dict[str, Any]]:
    """The reflection inputs of a trained task: generated pseudo inputs, or real ones if asked."""
    n = replay_count(len(task.train), cfg.pseudo_ratio, cfg.pseudo_max)
    if cfg.reflection_source == "real":
        inputs = real_replay_inputs(task, n, cfg.seed)
        return inputs, {"source": "real", "wanted": n, "count": len(inputs)}
    from sapt.pseudo import PseudoConfig, generate_pseudo_inputs

    pcfg = PseudoConfig.from_run(cfg, seed=stage_seed(cfg, t))
    inputs, stats = generate_pseudo_inputs(model, task, pcfg, cfg.max_source_length, cfg.max_target_length)
    return inputs, {"source": "generated", **stats}


# ---- the recipe --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    metrics: dict[str, Any]
    table: str
    timing: dict[str, float] | None = None  # run_timing's numbers (main process only)


def run(cfg: RunConfig, force_new: bool = False, allow_changes: Any = ()) -> RunResult:
    """Learn the task sequence of `cfg` into `cfg.output`, resuming whatever is done there.

    `force_new`: if the output directory holds another run, use OUTPUT-2 (-3, ...) instead of refusing.
    `allow_changes`: keys of CHANGEABLE_KEYS (lr, router_lr) that may differ from the saved config; the
    change is recorded in manifest.json and config.yaml is updated."""
    # Everything that can be refused without the directory is checked first; nothing is written yet.
    tasks = load_run_tasks(cfg)
    check_trackers(cfg.log_with)
    if cfg.reference:
        check_reference(cfg, tasks)
    dist = get_dist()
    # The main process takes the lock, then checks the directory's config under it, before the model
    # loads: a second `sapt run` into the same directory is refused at once, and no other run can write
    # a config.yaml between the check and ours. A refusal reaches every process, so none waits forever.
    lock, problem, planned, created = None, None, None, False
    if dist.is_main:
        try:
            lock, run_dir, changes, created = lock_run_dir(cfg, force_new, allow_changes)
            planned = (str(run_dir), changes)
        except ConfigError as e:
            problem = str(e)
    problem, planned = dist.broadcast((problem, planned))
    if problem is not None:
        raise ConfigError(problem)
    run_dir, changes = Path(planned[0]), planned[1]
    if str(run_dir) != cfg.output:
        cfg = dataclasses.replace(cfg, output=str(run_dir))
    try:
        t0 = time.time()
        model = build_model(cfg)
        place(model)
        log(f"sapt: model {cfg.model} loaded in {time.time() - t0:.1f}s; {len(model.lora_layers)} projections adapted"
            + (f"; {dist.world} processes, global batch {cfg.batch_size}" if dist.world > 1 else ""))
        if dist.is_main and not (run_dir / CONFIG).exists():
            io.atomic_write_text(run_dir / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return _run_stages(cfg, tasks, run_dir, model, changes)
    except BaseException:
        if created:
            drop_if_bare(run_dir)  # a model that cannot be loaded leaves no new run directory behind
        raise
    finally:
        if lock is not None:
            lock.release()


def _run_stages(cfg: RunConfig, tasks: list[Task], run_dir: Path, model: SAPTModel,
                changes: dict[str, list] | None = None) -> RunResult:
    log(f"sapt: {len(tasks)} tasks ({', '.join(t.name for t in tasks)}), model {cfg.model}, output {run_dir}")
    dist = get_dist()
    main = dist.is_main  # only the main process writes; every process computes (see sapt.distributed)
    manifest = Manifest(run_dir)
    method = make_method(cfg.method, cfg.olora_lambda1, cfg.olora_lambda2)
    reflect = cfg.reflection and method.reflection
    stages = stage_tasks(tasks, method)
    done = dist.broadcast(verify_stages(run_dir, stages, manifest, reflect) if main else None)
    if changes and main:
        first = next((t for t in range(len(stages)) if (t, "trained") not in done), len(stages))
        manifest.record_change(first, changes)
        io.atomic_write_text(run_dir / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        log(f"sapt: config changed on resume ({', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())}), "
            f"in effect from stage {first + 1}; recorded in manifest.json and config.yaml")
    trackers = Trackers(cfg.log_with, run_dir, to_dict(cfg), active=main)
    try:
        result = _stages_loop(cfg, tasks, stages, run_dir, model, method, reflect, done, manifest, trackers)
    finally:
        trackers.finish()
    return result


def _stages_loop(cfg: RunConfig, tasks: list[Task], stages: list[Task], run_dir: Path, model: SAPTModel,
                 method: Method, reflect: bool, done: set, manifest: Manifest, trackers: Trackers) -> RunResult:
    dist = get_dist()
    main = dist.is_main
    t0 = time.time()
    step_offset = 0  # optimiser steps of the earlier stages: the trackers' step
    log_path = run_dir / "train_log.jsonl"
    kl_ratio = cfg.kl_ratio if cfg.kl_ratio is not None else default_kl_ratio(model.family, cfg.benchmark)
    eval_items: dict[str, list] = {}
    replay_sets: list[ReplaySet] = []
    memory: list = []  # replay: encoded real examples of the old tasks
    for t, task in enumerate(stages):
        sdir = stage_dir(run_dir, t, task.name)
        torch.manual_seed(stage_seed(cfg, t))
        method.add_stage(model, t, task.name)
        b = method.block_index(t)
        if (t, "trained") in done:
            model.load_block(b, io.load_tensors(sdir / "adapter.safetensors"))
            model.load_router(b, io.load_tensors(sdir / "router.safetensors"))
            summary = io.read_json(sdir / "stage.json")
            (sdir / CHECKPOINT).unlink(missing_ok=True)  # left if killed right after the manifest was written
            log(f"sapt: stage {t + 1} ({task.name}) already trained, loaded")
        else:
            reflection = Reflection(replay_sets, kl_ratio, cfg.batch_size, stage_seed(cfg, t)) if reflect else None
            items = val_items = None
            if method.joint:
                items, val_items = ([e for other in tasks for e in encode_task_split(
                    model, other, split, cfg.max_source_length, cfg.max_target_length)] for split in ("train", "val"))
            elif memory:
                items = encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length) + memory
            if cfg.block_init == "previous" and t > 0 and not method.shared_block:
                model.load_block(b, model.block_state(method.block_index(t - 1)))  # train_stage broadcasts it
            if method.routed and cfg.router_centre:
                update_centre(model, task, t, cfg)
                dist.broadcast_parameters([model.router.centre])  # bit-identical on every process
            if method.routed and cfg.router_key_init == "task" and t > 0:
                # train_stage broadcasts the trainable parameters, the key with them
                init_key_from_task(model, task, t, cfg, [rs.items for rs in replay_sets])
            summary = train_stage(model, task, t, cfg, log_path, reflection, checkpoint=sdir / CHECKPOINT,
                                  method=method, items=items, val_items=val_items, trackers=trackers,
                                  step_offset=step_offset)
            summary["kl_ratio"] = kl_ratio if reflect else None
            summary["method"] = method.name
            if main:
                io.save_tensors(sdir / "adapter.safetensors", model.block_state(b), {"task": task.name})
                kill_point(f"stage{t}:between-files")
                io.save_tensors(sdir / "router.safetensors", model.router_state(b), {"task": task.name})
                files = ["adapter.safetensors", "router.safetensors"]
                if method.memory:
                    io.write_jsonl(sdir / "memory.jsonl", [{"task": task.name, "input": ex.input, "outputs": list(ex.outputs)}
                                                           for ex in memory_examples(task, cfg)])
                    files.append("memory.jsonl")
                io.write_json(sdir / "stage.json", summary)
                kill_point(f"stage{t}:trained")
                manifest.record(sdir, "trained", [*files, "stage.json"])
                (sdir / CHECKPOINT).unlink(missing_ok=True)  # the stage's files supersede it
            dist.barrier()  # the others read memory.jsonl below
        step_offset += cfg.epochs * math.ceil(math.ceil(summary["n_train"] / cfg.batch_size) / cfg.grad_accum)
        if method.memory:
            rows = [json.loads(line) for line in (sdir / "memory.jsonl").read_text(encoding="utf-8").splitlines() if line]
            memory += encode(model.tokenizer, model.family, task.definition,
                             [Example(r["input"], tuple(r["outputs"])) for r in rows],
                             cfg.max_source_length, cfg.max_target_length)
        if reflect:
            if (t, "replay") not in done:
                # seeded (and the generator is trained under its own forked RNG): redone identically if
                # interrupted. One process generates; the others wait for its files. Under FSDP every
                # process runs the generator in step with the main one, and the main one's samples count.
                if main or model.sharded:
                    inputs, stats = make_replay_inputs(model, task, t, cfg)
                if main:
                    io.write_jsonl(sdir / "replay.jsonl", [{"task": task.name, "definition": task.definition, "input": x}
                                                          for x in inputs])
                    kill_point(f"stage{t}:replay")
                    io.write_json(sdir / "replay_stats.json", stats)
                    manifest.record(sdir, "replay", PHASE_FILES["replay"])
                    log(f"sapt: {len(inputs)} {stats['source']} replay inputs for {task.name}")
                dist.barrier()
            rows = [json.loads(line) for line in (sdir / "replay.jsonl").read_text(encoding="utf-8").splitlines() if line]
            replay_sets.append(ReplaySet(task.name, summary["routing_target"],
                                         encode_replay(model, task.definition, [r["input"] for r in rows], cfg.max_source_length)))
        if (t, "evaluated") not in done:
            scores, routing, files = {}, {}, []
            eval_t0 = time.time()
            for j, other in enumerate(tasks if method.joint else tasks[: t + 1]):
                if other.name not in eval_items:
                    eval_items[other.name] = encode_task_split(model, other, "eval", cfg.max_source_length, cfg.max_target_length)
                with dist.autocast(cfg.mixed_precision):
                    score, accuracy, records = evaluate_task(
                        model, other, eval_items[other.name], cfg.eval_batch_size, cfg.max_new_tokens, j, method,
                        cfg.stop_at_newline)
                files.append(f"predictions/{other.name}.jsonl")
                if main:
                    io.write_jsonl(sdir / files[-1], records)
                    kill_point(f"stage{t}:eval")
                scores[other.name] = score
                if accuracy is not None:
                    routing[other.name] = accuracy
            trackers.log({**{f"eval/{k}": v for k, v in scores.items()}, "eval/ap": sum(scores.values()) / len(scores),
                          "stage": t + 1}, step=step_offset)
            if main:
                io.write_json(sdir / "scores.json", {"scores": scores, "routing_accuracy": routing,
                                                     "seconds": round(time.time() - eval_t0, 2)})
                manifest.record(sdir, "evaluated", ["scores.json", *files])
                kill_point(f"stage{t}:metrics")
        if main:
            result = write_metrics(run_dir, cfg, tasks)
        dist.barrier()
        if not main:  # the same numbers, read back from what the main process wrote
            result = RunResult(io.read_json(run_dir / "metrics.json"), "")
        log(f"sapt: stage {t + 1}/{len(stages)} done ({time.time() - t0:.0f}s); AP so far {result.metrics['ap']:.1f}"
            + timing_note(result.timing))
    return result


# What a per-task reference run must share with the run it serves, for its diagonal to be the single-task
# scores of *these* tasks as this run learns them: the same model, data, subsets, seed and optimisation.
REFERENCE_KEYS = ("model", "data_dir", "benchmark", "val_size", "max_train_per_task", "max_eval_per_task", "seed",
                  "lr", "epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha", "max_source_length",
                  "max_target_length", "max_new_tokens", "backbone_dtype", "stop_at_newline")


def check_reference(cfg: RunConfig, tasks: list[Task]) -> None:
    """Refuse a `--reference` that is not a finished per-task run of the same tasks under the same settings
    (REFERENCE_KEYS), before anything is trained: FWT would otherwise compare unlike runs."""
    ref = Path(cfg.reference)
    reference_scores(cfg.reference, tasks)  # a finished per-task run of these tasks, in this order
    try:
        saved = yaml.safe_load((ref / CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise ConfigError(f"--reference {cfg.reference}: its config.yaml cannot be read")
    now = to_dict(cfg)
    old = {k: saved[k] if k in saved else default_value(k) for k in REFERENCE_KEYS}

    def same(key: str) -> bool:
        if key == "data_dir" and old[key] is not None and now[key] is not None:  # one folder, however written
            return Path(old[key]).resolve() == Path(now[key]).resolve()
        return old[key] == now[key]

    differ = [k for k in REFERENCE_KEYS if not same(k)]
    if differ:
        shown = ", ".join(f"{k} {old[k]!r} there, {now[k]!r} here" for k in differ)
        raise ConfigError(f"--reference {cfg.reference}: a per-task run with other settings ({shown}); "
                          "FWT needs the same model, data, subsets, seed and optimisation")


def reference_scores(reference: str, tasks: list[Task]) -> list[float]:
    """The single-task scores s_j of FWT: the diagonal of a per-task run of the same tasks."""
    path = Path(reference) / METRICS
    if not path.exists():
        raise ConfigError(f"--reference {reference}: no metrics.json there")
    ref = io.read_json(path)
    names = [t.name for t in tasks]
    if ref.get("tasks") != names or ref.get("method") != "per-task" or ref.get("stages_done") != len(names):
        raise ConfigError(f"--reference {reference}: not a finished per-task run of the tasks {', '.join(names)}")
    return [ref["matrix"][j][j] for j in range(len(names))]


def write_metrics(run_dir: Path, cfg: RunConfig, tasks: list[Task]) -> RunResult:
    names = [t.name for t in tasks]
    method = make_method(cfg.method)
    matrix, routing = collect_matrices(run_dir, tasks, stage_tasks(tasks, method))
    if method.joint:  # one row over every task: AP is its mean; nothing to forget or transfer
        m = {"ap": sum(matrix[0]) / len(names), "fra": None, "bwt": None, "fwt": None}
    else:
        single = reference_scores(cfg.reference, tasks) if cfg.reference and len(matrix) == len(tasks) else None
        m = cl_metrics(matrix, single)
    splits = sorted({t.eval_split for t in tasks})
    metrics = {
        "tasks": names,
        "matrix": matrix,
        **m,
        "routing_accuracy": routing if method.routed else None,
        "eval_split": splits[0] if len(splits) == 1 else "mixed",
        "eval_splits": {t.name: t.eval_split for t in tasks},
        "metric": {t.name: t.metric for t in tasks},
        "method": cfg.method,
        "model": cfg.model,
        "reflection": cfg.reflection,
        "replay": replay_stats(run_dir, tasks),
        "stages_done": len(matrix),
    }
    if cfg.reference:
        metrics["fwt_reference"] = cfg.reference
    changes = Manifest(run_dir).config_changes
    if changes:  # resumed with --allow-config-change: say so where the results are
        metrics["config_changes"] = changes
    io.write_json(run_dir / METRICS, metrics)
    # Wall-clock seconds apart from the results: metrics.json stays byte-identical across resumes.
    timing = run_timing(run_dir, stage_tasks(tasks, method))
    io.write_json(run_dir / TIMING, timing)
    return RunResult(metrics, render(metrics), timing)


def timing_note(timing: dict[str, float] | None) -> str:
    """"; time so far: training 61%, reflection 9%, evaluation 30%" from `run_timing`'s numbers."""
    if not timing or not timing.get("total_s"):
        return ""
    parts = {"training": "train_s", "reflection": "reflection_s", "evaluation": "eval_s"}
    return "; time so far: " + ", ".join(f"{name} {100 * timing[key] / timing['total_s']:.0f}%"
                                         for name, key in parts.items())


def render(metrics: dict[str, Any]) -> str:
    title = f"{metrics['method']} on {metrics['model']} (eval split: {metrics['eval_split']}; rows: after training task i)"
    extra = {}
    if metrics.get("routing_accuracy"):
        extra["routing accuracy (% of inputs whose top weight is their own task's block)"] = metrics["routing_accuracy"]
    lines = [format_table(metrics["tasks"], metrics["matrix"], metrics, title=title, extra=extra or None)]
    for name, r in (metrics.get("replay") or {}).items():
        line = f"replay inputs of {name}: {r.get('count', 0)}/{r.get('wanted', 0)} ({r.get('source')})"
        if "well_formed_fraction" in r:
            line += (f", well-formed {100 * r['well_formed_fraction']:.0f}%, distinct {100 * r['distinct_fraction']:.0f}%,"
                     f" not a training input {100 * r['novel_fraction']:.0f}%")
        lines.append(line)
    return "\n".join(lines)


def learn(run_dir: str | Path, task_folder: str | Path) -> RunResult:
    """Extend a run with one more task (a folder in the CL_Benchmark layout: <benchmark>/<task>/train.json):
    a new block, key and reflection data; every task is re-scored and the matrix gets a row and a column.
    The earlier stages are loaded, not redone (their checksums are verified as on any resume)."""
    cfg = load_run_config(run_dir)
    folder = Path(task_folder).resolve()
    if not (folder / "train.json").is_file():
        raise ConfigError(f"{task_folder}: not a task folder (no train.json)")
    if str(folder) in cfg.extra_tasks:
        raise ConfigError(f"{run_dir} has already learned {task_folder}")
    if make_method(cfg.method).joint:
        raise ConfigError("an mtl run trains all its tasks at once; it cannot learn one more")
    cfg.output = str(run_dir)
    cfg.extra_tasks = [*cfg.extra_tasks, str(folder)]
    return run(cfg, allow_changes=("extra_tasks",))


# ---- a finished run, for eval / predict (its stages: sapt.rundir.trained_stages) --------------------
def load_trained(run_dir: str | Path, cfg: RunConfig | None = None) -> tuple[RunConfig, SAPTModel, list[str]]:
    """Rebuild the model of a run from its stages (all that are trained). Returns config, model, task names."""
    run_dir = Path(run_dir)
    cfg = cfg or load_run_config(run_dir)
    stages = trained_stages(run_dir)
    model = build_model(cfg)
    method = make_method(cfg.method, cfg.olora_lambda1, cfg.olora_lambda2)
    names = []
    for t, (name, sdir) in enumerate(stages):
        method.add_stage(model, t, name)
        model.load_block(method.block_index(t), io.load_tensors(sdir / "adapter.safetensors"))
        model.load_router(method.block_index(t), io.load_tensors(sdir / "router.safetensors"))
        names.append(name)
    place(model)
    model.eval()
    return cfg, model, names
