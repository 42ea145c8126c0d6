"""`sapt run --dry-run`: what a run would train, without training it.

It prints the resolved config (exactly what `config.yaml` would hold) and, per stage, how many training
items there are and how many optimiser steps that makes, from the task data read as the run reads it
(the same splits, subsets and method). No model is loaded and nothing is written, so a paper config can
be checked on a laptop before a GPU is booked: the step counts (a 100-epoch SuperNI stage, a 20-epoch
LLaMA stage), the router's frozen warm-up steps and the number of reflection inputs per task (the 2% rule
and `pseudo_max`) are the numbers that decide its cost and its fidelity to the release. With a learning-rate
schedule (`lr_scheduler`), the schedule's span is each stage's own optimiser steps, and with `warmup_ratio`
each stage's warm-up steps are a column of their own.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from sapt.config import ConfigError, RunConfig, to_dict

__all__ = ["dry_run", "quantize_note", "stage_plan"]


def stage_plan(cfg: RunConfig) -> list[dict]:
    """One row per stage: its task, training / validation / evaluation sizes, optimiser steps per epoch and
    in all, the steps with the router frozen (the warm-up), the task's reflection inputs (None when the
    method does not reflect) and its generator's training batches (None unless they are generated). Reads the task data; a missing data folder is one ConfigError line."""
    if cfg.data_dir is not None and not (Path(cfg.data_dir) / str(cfg.benchmark)).is_dir():
        where = cfg.data_dir if not Path(cfg.data_dir).is_dir() else Path(cfg.data_dir) / str(cfg.benchmark)
        raise ConfigError(f"--dry-run: the data folder {where} is absent; the step counts need the task data "
                          "(give --data-dir DIR)")
    from sapt.methods import make_method
    from sapt.pseudo import PseudoConfig, generator_steps
    from sapt.reflection import replay_count
    from sapt.stage_trainer import lr_warmup_steps, optimiser_steps_per_epoch
    from sapt.run_tasks import load_run_tasks, load_unseen_tasks

    tasks = load_run_tasks(cfg)
    load_unseen_tasks(cfg, tasks)  # refused here as the run would refuse it
    method = make_method(cfg.method, cfg.method_options)
    reflects = method.reflects(cfg.arm)
    generates = reflects and cfg.reflection_source == "generated"
    pseudo = PseudoConfig.from_run(cfg.arm, cfg.optim, seed=cfg.seed)
    rows = []
    for t, stage in enumerate(method.stages(tasks)):
        n_train = method.training_size(t, stage, tasks)
        per_epoch = optimiser_steps_per_epoch(n_train, cfg.batch_size, cfg.grad_accum)
        joint = not any(stage is task for task in tasks)  # mtl's one stage over every task
        rows.append({
            "stage": t + 1, "task": stage.name, "train": n_train,
            "val": sum(len(o.val) for o in tasks) if joint else len(stage.val),
            "eval": sum(len(o.eval) for o in tasks) if joint else len(stage.eval),
            "steps_per_epoch": per_epoch, "steps": per_epoch * cfg.epochs,
            "router_frozen": min(method.warmup_steps(cfg.router, cfg.epochs, t, per_epoch), per_epoch * cfg.epochs)
            if method.routed else None,
            "replay_inputs": replay_count(len(stage.train), cfg.pseudo_ratio, cfg.pseudo_max) if reflects else None,
            "lr_warmup": lr_warmup_steps(cfg.warmup_ratio, per_epoch * cfg.epochs),
            "generator_steps": generator_steps(len(stage.train), pseudo) if generates else None,
        })
    return rows


def quantize_note(quantize: str) -> str:
    """The dry run's line on --quantize. A machine without bitsandbytes or a CUDA GPU is said, not refused:
    a dry run checks a config on a laptop before a GPU is booked, and the GPU is where `sapt run` will check
    the backend again, before writing anything (sapt.models.quantize_backend_problem)."""
    from sapt.models import quantize_backend_problem

    problem = quantize_backend_problem(quantize)
    return (f"# quantize {quantize}: the backbone's Linear modules load in {quantize[0]} bits (bitsandbytes, CUDA); "
            + (f"on this machine `sapt run` would refuse it: {problem}" if problem else "this machine can load it"))


def dry_run(cfg: RunConfig) -> str:
    """The text `sapt run --dry-run` prints: the config as YAML, then the stage plan."""
    rows = stage_plan(cfg)
    lines = ["# sapt run --dry-run: the resolved config, as config.yaml would hold it (nothing loaded or written)",
             yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), ""]
    if cfg.kl_ratio is None:
        lines.append("# kl_ratio null: the model family's default (1 for causal LMs; T5: 0.5 SuperNI, 0.1 Long_Sequence)")
    if cfg.quantize != "none":
        lines.append(quantize_note(cfg.quantize))
    lines.append(f"# per stage: {cfg.epochs} epochs of micro-batches of {cfg.batch_size}, an optimiser step every "
                 f"{cfg.grad_accum} of them (and at the end of an epoch)")
    if cfg.lr_scheduler != "constant":
        lines.append(f"# learning rate: transformers' {cfg.lr_scheduler} schedule over each stage's optimiser steps "
                     "(it starts again at every stage)"
                     + (f", warming up over the first {cfg.warmup_ratio:g} of them (lr warm-up)" if cfg.warmup_ratio else ""))
    if cfg.router_schedule == "learn-then-route" and any(r["router_frozen"] is not None for r in rows):
        lines.append(f"# router: learn, then route: frozen for each stage's steps (the block learns alone), then, from "
                     f"stage 2, fitted alone for {cfg.router_fit_steps} steps with every block frozen")
    generates = any(r["generator_steps"] is not None for r in rows)
    if generates:
        lines.append("# reflection: after each stage a generator LoRA trains for `generator steps` batches of "
                     f"{cfg.batch_size} on the task's inputs, then samples its replay inputs"
                     + (f" of up to {cfg.pseudo_max_new_tokens} tokens" if cfg.pseudo_max_new_tokens is not None else
                        " as long as three of the task's inputs in four (at most 64 tokens)"))
    warm = cfg.warmup_ratio > 0  # the column only then: the default plan reads as it always has
    head = ["stage", "task", "train", "val", "eval", "steps/epoch", "optimiser steps", "router frozen", "replay inputs",
            *(["generator steps"] if generates else []), *(["lr warm-up"] if warm else [])]
    table = [[str(r["stage"]), r["task"], str(r["train"]), str(r["val"]), str(r["eval"]), str(r["steps_per_epoch"]),
              str(r["steps"]), "-" if r["router_frozen"] is None else str(r["router_frozen"]),
              "-" if r["replay_inputs"] is None else str(r["replay_inputs"]),
              *([str(r["generator_steps"])] if generates else []),
              *([str(r["lr_warmup"])] if warm else [])] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    for row in [head, *table]:
        lines.append("  ".join(x.ljust(w) if i == 1 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))).rstrip())
    lines.append(f"total: {sum(r['steps'] for r in rows)} optimiser steps over {len(rows)} stage(s)")
    return "\n".join(lines)
