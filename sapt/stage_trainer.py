"""One stage of the recipe: train the stage's block (and, for SAPT, the router) on its task, keep the epoch
with the lowest validation loss. `train_stage` is the entry point; `StageTrainer` holds the stage's state
and reads in the order a stage runs:

    __init__        the items, the optimiser and its two parameter groups, the shuffling generator
    resume          continue after the last epoch of a checkpoint, if there is a usable one
    train           epoch after epoch, then the best epoch's parameters back, and a summary
      epoch         the micro-batches of one epoch: forward, extra terms, checks, backward, optimiser step
      end_epoch     validation, history, the best epoch so far, the checkpoint

Every process runs it in step (see sapt.distributed); only the main one writes the log and the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from sapt.progress import progress_bar

from sapt.batching import collate_prompts, collate_train, length_sorted_batches
from sapt.config import DecodingSection, OptimisationSection, ReflectionSection, RouterSection
from sapt.data import Task
from sapt.distributed import Dist, get_dist
from sapt.evaluation.generation import encode_task_split, evaluation_loss
from sapt.methods import Method, make_method
from sapt.methods.base import one_hot_weights
from sapt.modules.sapt_model import SAPTModel
from sapt.rundir.recovery import CheckpointError, as_random_state, kill_point, load_checkpoint, save_checkpoint, trim_log
from sapt.reflection import Reflection, routing_target
from sapt.rundir.layout import log
from sapt.tracking import Trackers

__all__ = ["StageSections", "StageTrainer", "TrainingError", "distributed_loss", "lr_warmup_steps", "make_scheduler",
           "optimiser_steps_per_epoch", "stage_seed", "train_stage", "val_sha256", "validation_items"]


class TrainingError(RuntimeError):
    pass


@dataclass(frozen=True)
class StageSections:
    """The parts of the run config one stage's training reads, and nothing else: the optimisation (rates,
    epochs, batches, clipping, schedule, seed), the router's (its supervision and its fit), the lengths and
    evaluation batch, the reflection's replay interval and the autocast precision. The recipe hands them over
    (`sapt.train`); which task, block and method a stage trains are its other arguments, and the data, block
    type and method options sections are never read here."""

    optim: OptimisationSection
    router: RouterSection
    decoding: DecodingSection
    arm: ReflectionSection
    mixed_precision: str


def train_stage(
    model: SAPTModel, task: Task, t: int, sections: StageSections, log_path: Path, reflection: Reflection | None = None,
    *,
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
    stopped. The learning rates always come from `sections.optim` (they may have been lowered to resume).

    Learning-rate schedule (`lr_scheduler`, `warmup_ratio`; `make_scheduler`): transformers' schedule over
    this stage's optimiser steps, `epochs` x `optimiser_steps_per_epoch`. Each task's stage is its own
    training run, so the schedule starts again at every stage (a warm-up, then the decay, per task). Both
    parameter groups (blocks and router) follow it, the router's frozen warm-up steps included. Its state is
    in the checkpoint with the optimiser's, so a resumed stage goes on at the same point of the schedule.
    The default, constant with no warm-up, builds no scheduler: the rates are never touched, as before.

    Router warm-up (SAPT's `warmup_steps`): a new block starts at zero (B = 0), so at the start of stage
    t > 1 it cannot help and every old block that fits the answer format a little can; Adam then moves the
    whole query MLP toward the old blocks within a few steps, the new block's weight collapses towards 0
    and it stops learning (seen on SmolLM2 at lr 3e-4: the second task's validation loss did not move in 2
    epochs). So during the first `router_warmup` share of the stage's optimiser steps the router is not
    updated (nor is the reflection KL, which only moves the router) and the new block learns its task alone
    (weight 1 on it, 0 on the others): it reaches the scale at which it is useful on its own, so that
    when the router starts learning, sending the task's inputs to the new block is what lowers the loss.
    (Trained under the router's small initial weight instead, Adam scales the block up to work at that
    weight, and the router then has no reason to move towards it.) Then all train together as in the
    paper. `router_warmup` 0 is the paper's schedule.

    `method` (default: SAPT) decides the mixing weights and any extra loss; `items` replaces the task's
    encoded training examples (replay mixes in stored ones; mtl trains on every task at once), and
    `val_items` its validation examples. `trackers` get the losses, at `step_offset` + this stage's step.
    """
    trainer = StageTrainer(model, task, t, sections, method or make_method("sapt"), items, val_items, reflection)
    return trainer.run(log_path, checkpoint, trackers, step_offset)


def validation_items(model: SAPTModel, task: Task, decoding: DecodingSection, val_items: list | None = None) -> list:
    """The encoded items a stage validates on (and hashes, `val_sha256`): the method's own (`val_items`, from
    `Method.training_items`), or else the task's validation split."""
    if val_items is not None:
        return val_items
    return encode_task_split(model, task, "val", decoding.max_source_length, decoding.max_target_length)


def val_sha256(val_items: list) -> str:
    """The sha256 of a stage's encoded validation items (prompt and answer token ids), as stage.json and the
    checkpoint record it: a resumed run compares it with the data it loads (`sapt.train.changed_task_data`)."""
    return hashlib.sha256(json.dumps([[e.prompt, e.target] for e in val_items]).encode()).hexdigest()


def stage_seed(seed: int, t: int) -> int:
    """Stage t's seed, from the run's `seed`: each stage reseeds, so a resumed run draws the same numbers as an
    uninterrupted one."""
    return seed * 1000 + t


class StageTrainer:
    """The state of one stage's training: what it trains in the constructor, where it reports in `run`
    (see the module docstring for the order of its parts)."""

    def __init__(self, model: SAPTModel, task: Task, t: int, sections: StageSections, method: Method,
                 items: list | None = None, val_items: list | None = None, reflection: Reflection | None = None):
        self.model, self.task, self.t, self.method = model, task, t, method
        # the config's sections this stage reads (`self.router` is the router's trainable parameters)
        self.optim, self.routing, self.decoding = sections.optim, sections.router, sections.decoding
        self.arm, self.precision = sections.arm, sections.mixed_precision
        self.reflection = reflection
        lengths = (self.decoding.max_source_length, self.decoding.max_target_length)
        self.items = items if items is not None else encode_task_split(model, task, "train", *lengths)
        self.val = validation_items(model, task, self.decoding, val_items)
        self.dist = get_dist()
        self.router, self.lrs, self.optimizer = self._optimiser()
        self.scaler = self.dist.grad_scaler(self.precision)
        self.gen = torch.Generator().manual_seed(stage_seed(self.optim.seed, t))  # the order of the examples, per epoch
        self.n_batches = math.ceil(len(self.items) / self.optim.batch_size)
        steps_per_epoch = optimiser_steps_per_epoch(len(self.items), self.optim.batch_size, self.optim.grad_accum)
        self.warmup = method.warmup_steps(self.routing, self.optim.epochs, t, steps_per_epoch)
        # the learning rate's schedule spans this stage's optimiser steps (None: constant, no warm-up)
        self.scheduler = make_scheduler(self.optimizer, self.optim, self.optim.epochs * steps_per_epoch)
        # learn, then route: the whole stage is the block alone (validated alone too), then the router fit
        self.fits_router = method.fits_router(self.routing) and t > 0
        self.alone = self.fits_router or self.warmup >= self.optim.epochs * steps_per_epoch > 0
        self.router_fit: dict[str, Any] | None = None
        self.best: dict[str, Any] = {"val_loss": math.inf}
        self.history: list[dict[str, Any]] = []
        self.steps = 0  # optimiser steps so far
        self.start = 0  # the first epoch to run (after a checkpoint's)
        self.seconds = 0.0  # spent before a resume
        self.t0 = time.time()
        self.params = model.trainable_parameters()
        if self.optim.max_grad_norm > 0:
            check_clippable(self.params)
        self.dist.broadcast_parameters(self.params)  # the new block and key start identical on every process
        # where the router stands for the new task before any step (before a resume restores later
        # parameters, so a resumed stage records the same): `sapt diagnose` reads it from stage.json
        self.router_start = self._probe() if method.routed and t > 0 else None

    def _probe(self) -> dict[str, float]:
        from sapt.router_fit import routing_probe

        reflection = self.reflection
        return routing_probe(self.model, self.t, self.items, reflection.sets if reflection else [],
                             reflection.kl_ratio if reflection else 0.0, self.decoding.eval_batch_size)

    def _optimiser(self) -> tuple[list, tuple[float, float], torch.optim.Optimizer]:
        """AdamW over two groups, the blocks at `lr` and the router at `router_lr` (default: `lr`)."""
        router = [p for p in self.model.router.parameters() if p.requires_grad]
        router_ids = {id(p) for p in router}
        blocks = [p for p in self.model.trainable_parameters() if id(p) not in router_ids]
        lrs = (self.optim.lr, self.optim.router_lr or self.optim.lr)
        optimizer = torch.optim.AdamW(
            [{"params": blocks, "lr": lrs[0]}, {"params": router, "lr": lrs[1]}], weight_decay=0.0
        )
        return router, lrs, optimizer

    # ---- the stage -----------------------------------------------------------------------------------------
    def run(self, log_path: Path, checkpoint: Path | None = None, trackers: Trackers | None = None,
            step_offset: int = 0) -> dict[str, Any]:
        """Train, appending to the log at `log_path`, checkpointing to `checkpoint`, reporting to `trackers`
        at `step_offset` (the optimiser steps of the earlier stages) + this stage's step."""
        self.log_path, self.checkpoint, self.trackers, self.step_offset = log_path, checkpoint, trackers, step_offset
        self.resume()
        self.set_rates()  # after load_state_dict, which restores the old ones
        if self.checkpoint is not None and self.dist.is_main:
            trim_log(self.log_path, self.t, self.start)
            if self.trackers is not None:  # metrics.jsonl likewise: no step twice after a resume
                self.trackers.drop_after(self.step_offset + self.steps)
        self.model.train()
        # Only the main process writes the log; the others write to nowhere.
        with (open(self.log_path, "a", encoding="utf-8") if self.dist.is_main else open(os.devnull, "w")) as logf:
            for epoch in range(self.start, self.optim.epochs):
                losses, kls = self.epoch(epoch, logf)
                self.end_epoch(epoch, losses, kls, logf)
        with torch.no_grad():
            for p, saved in zip(self.model.trainable_parameters(), self.best["params"]):
                p.copy_(saved)
        if self.fits_router:
            self.fit_router()
        return self.summary()

    def set_rates(self) -> None:
        """The groups' learning rates from `optim` (lr, router_lr: they may have been changed to resume), at the
        schedule's current step when there is one: base rate x the schedule's factor at that step, exactly what
        LambdaLR computes, so that a resumed stage steps with the rates an uninterrupted one would."""
        groups = self.optimizer.param_groups
        if self.scheduler is None:
            for group, lr in zip(groups, self.lrs):
                group["lr"] = lr
            return
        step = self.scheduler.last_epoch
        self.scheduler.base_lrs = list(self.lrs)
        rates = [lr * factor(step) for lr, factor in zip(self.lrs, self.scheduler.lr_lambdas)]
        for group, lr, rate in zip(groups, self.lrs, rates):
            group["initial_lr"], group["lr"] = lr, rate
        self.scheduler._last_lr = rates

    def fit_router(self) -> None:
        """Learn, then route: the block has learned alone; now the router alone (`sapt.router_fit`). Every
        process fits the same router from the same data and seed; the main one's is broadcast all the same.

        The fit keeps a constant rate (router_lr), whatever `lr_scheduler`: it is an optimisation of its own
        (its own AdamW and `router_fit_steps`, over pooled prompts, after the block's stage), not more steps of
        the stage's schedule, which has run out by then (a linear or cosine schedule ends at 0 and would leave
        the router unfitted); its step count is not the stage's, so the stage's warm-up share has no meaning there."""
        from sapt.router_fit import fit_router, without_definition

        reflection, task, model = self.reflection, self.task, self.model
        # route_without_definition: a seeded share of the task's training inputs also without the definition,
        # and every validation input without it to measure the fit (none at 0: the fit of before)
        share = self.routing.route_without_definition
        bare_train = without_definition(model, task.definition, [ex.input for ex in task.train], share,
                                        f"{self.optim.seed}:{task.name}:train-without-definition",
                                        self.decoding.max_source_length)
        bare_val = without_definition(model, task.definition, [ex.input for ex in task.val], 1.0 if share else 0.0,
                                      "", self.decoding.max_source_length)
        self.router_fit = fit_router(
            model, self.t, self.items, self.val, reflection.sets if reflection else [],
            self.routing.router_fit_kl if reflection else 0.0, steps=self.routing.router_fit_steps, lr=self.lrs[1],
            batch_size=self.optim.batch_size, seed=stage_seed(self.optim.seed, self.t),
            eval_batch_size=self.decoding.eval_batch_size,
            bare_train_items=bare_train, bare_val_items=bare_val)
        self.dist.broadcast_parameters(self.router)
        w, kl = self.router_fit["new_task_weight"], self.router_fit["old_tasks_kl"]
        bare = self.router_fit.get("new_task_weight_without_definition")
        log(f"  [{self.t + 1}] {task.name} router fit ({self.routing.router_fit_steps} steps): its validation inputs' "
            f"weight on its block {w[0]:.3f} -> {w[1]:.3f}"
            + (f" ({bare[0]:.3f} -> {bare[1]:.3f} without the definition)" if bare else "")
            + f", old tasks' reflection KL {kl[0]:.4f} -> {kl[1]:.4f}")

    def resume(self) -> None:
        """Continue after the checkpoint's epoch; an unusable checkpoint is deleted and the stage starts over."""
        checkpoint, task, t = self.checkpoint, self.task, self.t
        if checkpoint is None or not checkpoint.exists():
            return
        try:
            state = load_checkpoint(checkpoint)
            if state.get("task") != task.name or state.get("stage") != t or \
                    [tuple(p.shape) for p in state["params"]] != [tuple(p.shape) for p in self.params]:
                raise CheckpointError("it belongs to another stage or model")
            if self.scheduler is not None and (state.get("scheduler") or {}).get("last_epoch") != state["steps"]:
                raise CheckpointError("it holds no learning-rate schedule at its step")
        except (CheckpointError, KeyError, TypeError) as e:
            log(f"sapt: stage {t + 1} ({task.name}): the checkpoint {checkpoint} is not usable ({e}); "
                "the stage restarts from its beginning")
            checkpoint.unlink()
            return
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"]):
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:  # where the schedule stands; `set_rates` then re-bases it on optim's rates
            self.scheduler.load_state_dict(state["scheduler"])
        self.best = state["best"]
        self.history, self.steps, self.start, self.seconds = state["history"], state["steps"], state["epoch"], state["seconds"]
        torch.set_rng_state(state["rng"]["torch"])
        self.gen.set_state(state["rng"]["perm"])
        if self.reflection is not None and state["rng"]["reflection"] is not None:
            self.reflection.rng.setstate(as_random_state(state["rng"]["reflection"]))
        log(f"sapt: stage {t + 1} ({task.name}) resumes after epoch {self.start}/{self.optim.epochs} "
            "from its checkpoint")

    def summary(self) -> dict[str, Any]:
        dist, val = self.dist, self.val
        return {"task": self.task.name, "best_epoch": self.best["epoch"], "best_val_loss": self.best["val_loss"],
                "history": self.history, "n_train": len(self.items), "n_val": len(val), "steps": self.steps,
                # which examples the epoch was chosen on: their encoded prompts and answers, hashed
                "val_sha256": val_sha256(val),
                # one process computes it, so that every process replays towards exactly the same target
                "routing_target": dist.broadcast(routing_target(self.model, val, self.decoding.eval_batch_size)
                                                 if dist.is_main else None) if self.method.routed else None,
                **({"router_start": self.router_start} if self.router_start is not None else {}),
                **({"router_fit": self.router_fit} if self.router_fit is not None else {}),
                "seconds": round(self.seconds + time.time() - self.t0, 1)}

    # ---- an epoch ------------------------------------------------------------------------------------------
    def epoch(self, epoch: int, logf: IO[str]) -> tuple[list[float], list[float]]:
        """The micro-batches of one epoch, one log line each. Returns their losses and reflection KLs."""
        perm = torch.randperm(len(self.items), generator=self.gen).tolist()
        bar = progress_bar(range(self.n_batches),
                           desc=f"[{self.t + 1}] {self.task.name} epoch {epoch + 1}/{self.optim.epochs}",
                           leave=False, disable=not self.dist.is_main)
        losses: list[float] = []
        kls: list[float] = []
        for b in bar:
            # Every process draws the same global micro-batch and takes its slice (see sapt.distributed).
            global_items = [self.items[i] for i in perm[b * self.optim.batch_size:(b + 1) * self.optim.batch_size]]
            record = self.micro_batch(epoch, b, global_items, kls)
            losses.append(record["loss"])
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            logf.write(json.dumps(record) + "\n")
            if b == 0:
                kill_point(f"stage{self.t}:epoch{epoch + 1}:mid", logf)
        return losses, kls

    def micro_batch(self, epoch: int, b: int, global_items: list, kls: list[float]) -> dict[str, Any]:
        """Forward, the method's extra loss and the reflection KL, backward; an optimiser step at the end of
        an accumulation. Returns the log record."""
        loss, loss_value = self.forward(global_items)
        total = loss / self.optim.grad_accum
        record = {"stage": self.t, "task": self.task.name, "epoch": epoch, "step": b, "loss": loss_value}
        if self.router_start is not None:  # the batch's mean weight on the new block (`sapt diagnose`)
            record["routing_weight"] = self.batch_routing_weight(global_items)
        extra = self.method.extra_loss(self.model, self.t)
        if extra is not None:
            total = total + extra / self.optim.grad_accum
            record["extra"] = extra.item()
        if self.routing.router_ce > 0 and self.router_start is not None and self.steps >= self.warmup \
                and not self.fits_router:
            ce = self.router_ce(global_items)
            if ce is not None:
                total = total + self.routing.router_ce * ce / self.optim.grad_accum
                record["router_ce"] = ce.item()
        if self.reflection and self.steps >= self.warmup and b % self.optim.grad_accum == 0 and \
                (self.steps % self.arm.replay_every == 0):
            with self.dist.autocast(self.precision):
                kl = self.reflection.loss(self.model).float()
            total = total + kl
            record["kl"] = kl.item()
            kls.append(record["kl"])
        self.check_finite(total, epoch, b)
        if total.requires_grad:  # not for a process left without examples and with no extra term
            (self.scaler.scale(total) if self.scaler is not None else total).backward()
        if (b + 1) % self.optim.grad_accum == 0 or b + 1 == self.n_batches:
            self.optimiser_step(record)
        return record

    def forward(self, global_items: list) -> tuple[torch.Tensor, float]:
        """This process's loss on its slice of the global micro-batch, scaled so that the processes' losses
        sum to the one-process loss, and the global loss's value."""
        dist, model = self.dist, self.model
        pad = model.tokenizer.pad_token_id
        local_items = dist.shard(global_items)
        if local_items:
            batch = collate_train(local_items, model.family, pad)
            with dist.autocast(self.precision):
                loss = model(batch, self.train_weights(batch)).float()
        elif model.sharded:  # nothing left for this process, but FSDP needs its forward and backward
            stand_in = collate_train(global_items[:1], model.family, pad)
            with dist.autocast(self.precision):
                loss = model(stand_in, self.train_weights(stand_in)).float() * 0.0
            batch = None
        else:  # a last, short global batch leaves this process nothing
            batch, loss = None, torch.zeros((), device=model.device)
        if dist.world == 1:
            return loss, loss.item()
        # token sum over the global token count: the 1-process loss
        n_global = sum(len(e.target) for e in global_items)
        local_tokens = target_tokens(batch, model.family) if batch is not None else 0
        loss = loss * (local_tokens * dist.world / max(n_global, 1))
        return loss, dist.sum(float(loss.detach()) / dist.world)

    def router_ce(self, global_items: list) -> torch.Tensor | None:
        """Routing supervision: the cross-entropy of the router's logits on this process's prompts of the batch
        towards the stage's own block (None for a process left without examples)."""
        local = self.dist.shard(global_items)
        if not local:
            return None
        batch = collate_prompts(local, self.model.family, self.model.tokenizer.pad_token_id)
        logits = self.model.routing_logits(batch["input_ids"], batch["prompt_mask"]).float()
        target = torch.full((logits.shape[0],), self.method.block_index(self.t), device=logits.device)
        return torch.nn.functional.cross_entropy(logits, target)

    @torch.no_grad()
    def batch_routing_weight(self, global_items: list) -> float:
        """The router's mean weight on block t over the micro-batch's prompts (what routing gives, whether
        or not this step trains with it)."""
        batch = collate_prompts(global_items, self.model.family, self.model.tokenizer.pad_token_id)
        w = self.model.routing_weights(batch["input_ids"], batch["prompt_mask"])
        return round(float(w[:, self.method.block_index(self.t)].float().mean()), 6)

    def train_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The method's mixing weights; during the warm-up, weight 1 on the new block alone."""
        if self.steps < self.warmup:
            return one_hot_weights(self.model, batch, self.method.block_index(self.t))
        return self.method.weights(self.model, batch, self.t, training=True)

    def check_finite(self, total: torch.Tensor, epoch: int, b: int) -> None:
        finite = bool(torch.isfinite(total))
        if self.dist.world > 1:  # every process stops, or none does
            finite = self.dist.sum(0.0 if finite else 1.0) == 0
        if not finite:
            raise TrainingError(non_finite_message(f"loss ({float(total.detach())})", self.task, self.t,
                                                   f"epoch {epoch + 1}, batch {b + 1}", epoch, self.checkpoint))

    def optimiser_step(self, record: dict[str, Any]) -> None:
        """Average the gradients over the processes, clip them (`max_grad_norm`) and step (the router not
        during the warm-up)."""
        self.dist.average_gradients(self.params)
        if self.steps < self.warmup:
            for p in self.router:
                p.grad = None  # AdamW skips a parameter without gradient: no update, no state
        if self.optim.max_grad_norm > 0:
            record["grad_norm"] = self.clip_gradients()
        if self.scheduler is not None:  # the blocks' rate this step uses (the router's follows the same factor)
            record["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1
        if self.trackers is not None:
            self.trackers.log({"train/loss": record["loss"], **({"train/kl": record["kl"]} if "kl" in record else {}),
                               **({"train/lr": record["lr"]} if "lr" in record else {}),
                               "stage": self.t + 1}, step=self.step_offset + self.steps)

    def clip_gradients(self) -> float:
        """Scale the step's gradients so that their total L2 norm is at most `max_grad_norm`, as the release
        does (Hugging Face's Trainer, max_grad_norm 1.0); returns the norm before clipping.

        Over every trainable parameter together, blocks and router, so the reflection KL's gradient (already
        in the router's .grad) counts; after the averaging over processes, so the norm is the global batch's;
        after the warm-up has dropped the router's gradients, so a frozen router adds nothing to the norm.
        With fp16 loss scaling the gradients are unscaled first (the scaler then does not unscale them again).

        Under FSDP a plain clip_grad_norm_ is right here, not only tolerated: sapt shards only the frozen
        backbone, and the trainable blocks and router are left out of FSDP (`ignored_params`, see
        sapt.distributed), so every process holds each trainable parameter and its averaged gradient whole
        and identical, and the local norm is the global one (no shard is missing from it, none counted
        twice). `check_clippable` refuses the case where that would not hold."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(grads, self.optim.max_grad_norm))

    # ---- after an epoch ------------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, losses: list[float], kls: list[float], logf: IO[str]) -> None:
        """Validate, record the epoch, keep it if it is the best so far, checkpoint."""
        logf.flush()
        if self.dist.is_main:
            os.fsync(logf.fileno())  # the epoch's lines are on disk before its checkpoint says it is done
        if self.alone:  # the block learned alone: it is judged alone, as the per-task oracle's is
            weights_fn = lambda batch: one_hot_weights(self.model, batch, self.method.block_index(self.t))  # noqa: E731
        else:
            weights_fn = lambda batch: self.method.weights(self.model, batch, self.t, training=True)  # noqa: E731
        val_loss = distributed_loss(self.dist, self.model, self.val, self.decoding, self.precision, weights_fn)
        if not math.isfinite(val_loss):
            raise TrainingError(non_finite_message(f"validation loss ({val_loss})", self.task, self.t,
                                                   f"after epoch {epoch + 1}", epoch, self.checkpoint))
        self.history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_loss": val_loss,
                             "lr": self.lrs[0], "router_lr": self.lrs[1]})
        if self.trackers is not None:
            self.trackers.log({"val/loss": val_loss, "stage": self.t + 1}, step=self.step_offset + self.steps)
        kl_note = ""
        if kls:
            self.history[-1]["kl"] = sum(kls) / len(kls)
            kl_note = f", reflection KL {self.history[-1]['kl']:.4f}"
        log(f"  [{self.t + 1}] {self.task.name} epoch {epoch + 1}: train loss {self.history[-1]['train_loss']:.4f}, "
            f"val loss {val_loss:.4f}{kl_note}")
        if val_loss < self.best["val_loss"]:
            self.best = {"val_loss": val_loss, "epoch": epoch + 1,
                         "params": [p.detach().clone() for p in self.model.trainable_parameters()]}
        if self.checkpoint is not None and self.dist.is_main:
            self.save_checkpoint(epoch)

    def save_checkpoint(self, epoch: int) -> None:
        save_checkpoint(self.checkpoint, {
            "format": 1, "stage": self.t, "task": self.task.name, "epoch": epoch + 1, "steps": self.steps,
            "val_sha256": val_sha256(self.val),  # the data it trained on, checked before a resume goes on
            "params": [p.detach().clone() for p in self.params], "best": self.best,
            "optimizer": self.optimizer.state_dict(), "history": self.history,
            "seconds": self.seconds + time.time() - self.t0,
            **({"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}),
            "rng": {"torch": torch.get_rng_state(), "perm": self.gen.get_state(),
                    "reflection": self.reflection.rng.getstate() if self.reflection is not None else None},
        })
        kill_point(f"stage{self.t}:epoch{epoch + 1}")


# ---- pieces --------------------------------------------------------------------------------------------------
def check_clippable(params: list[torch.nn.Parameter]) -> None:
    """Refuse gradient clipping over a sharded trainable parameter (a DTensor: FSDP manages it), whose local
    gradient is only a shard: its norm would be wrong. sapt never shards the trainable parameters (see
    `StageTrainer.clip_gradients`); this keeps a future change from clipping wrongly in silence."""
    if any(hasattr(p, "to_local") for p in params):
        raise TrainingError("max_grad_norm > 0 with trainable parameters sharded by FSDP: the norm of local shards "
                            "is not the total norm; set max_grad_norm: 0 or keep the blocks and router unsharded")


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimisationSection, total_steps: int):
    """transformers' `lr_scheduler` over one stage's `total_steps` optimiser steps, with
    `lr_warmup_steps(warmup_ratio, total_steps)` of warm-up: a LambdaLR, stepped after every optimiser step.
    None for "constant" with no warm-up (the default): no scheduler, the rates stay as set, as before."""
    if optim.lr_scheduler == "constant" and optim.warmup_ratio == 0:
        return None
    from transformers import get_scheduler

    return get_scheduler(optim.lr_scheduler, optimizer,
                         num_warmup_steps=lr_warmup_steps(optim.warmup_ratio, total_steps), num_training_steps=total_steps)


def lr_warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """The warm-up steps of a stage of `total_steps`: the ratio's share, rounded up (transformers' Trainer)."""
    return math.ceil(warmup_ratio * total_steps)


def optimiser_steps_per_epoch(n_items: int, batch_size: int, grad_accum: int) -> int:
    """Optimiser steps of one epoch over `n_items` training items: a step every `grad_accum` micro-batches of
    `batch_size`, and one at the end of the epoch for a shorter remainder."""
    return math.ceil(math.ceil(n_items / batch_size) / grad_accum)


def target_tokens(batch: dict[str, torch.Tensor], family: str) -> int:
    """How many target tokens the batch's mean loss averages over (a causal LM predicts position i+1)."""
    labels = batch["labels"][:, 1:] if family == "causal" else batch["labels"]
    return int((labels != -100).sum())


def distributed_loss(dist: Dist, model: SAPTModel, items: list, decoding: DecodingSection, mixed_precision: str,
                     weights_fn) -> float:
    """evaluation_loss over `items` in batches of `decoding.eval_batch_size`, each process scoring its slice, under
    autocast at `mixed_precision`; the same value on every process."""
    if dist.fsdp:  # whole batches per process, as many on each (see Dist.lockstep_batches)
        batches = dist.lockstep_batches(length_sorted_batches(items, decoding.eval_batch_size))
        with dist.autocast(mixed_precision):
            return dist.sum(evaluation_loss(model, items, decoding.eval_batch_size, weights_fn, batches)) / len(items)
    mine = dist.shard(items)
    with dist.autocast(mixed_precision):
        local = evaluation_loss(model, mine, decoding.eval_batch_size, weights_fn) if mine else 0.0
    return local if dist.world == 1 else dist.sum(local * len(mine)) / len(items)


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
