"""The continual-learning recipe: for each task, train its block, pick the best epoch on validation,
save the stage, then score every task seen so far. Stages already on disk are loaded, not redone.

Run directory:
    config.yaml                      resolved config (resuming checks it is unchanged)
    train_log.jsonl                  one line per optimiser step: stage, task, epoch, step, loss
    stages/NN_<task>/adapter.safetensors   block NN of every adapted projection
    stages/NN_<task>/router.safetensors    key NN and the shared query MLP after stage NN
    stages/NN_<task>/stage.json      training summary and routing target (written last: marks it trained)
    stages/NN_<task>/replay.jsonl    reflection inputs of task NN (pseudo or real), with replay_stats.json
    stages/NN_<task>/scores.json     scores on tasks 0..NN (marks the stage evaluated)
    stages/NN_<task>/predictions/<task>.jsonl
    metrics.json                     tasks, matrix, AP, F.Ra, FWT, BWT, routing accuracy, eval split
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from sapt import io
from sapt.batching import collate_train
from sapt.config import ConfigError, RunConfig, differences, to_dict
from sapt.data import Task, builtin_suite, load_benchmark, resolve_task_names
from sapt.data.validate import validate_or_raise
from sapt.lock import RunLock
from sapt.evaluate import encode_task_split, evaluate_task, evaluation_loss
from sapt.metrics import cl_metrics, format_table
from sapt.models import load_model
from sapt.modules.sapt_model import SAPTModel
from sapt.reflection import (
    Reflection, ReplaySet, default_kl_ratio, encode_replay, real_replay_inputs, replay_count, routing_target,
)


class TrainingError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- pieces ------------------------------------------------------------------------------------------
def load_run_tasks(cfg: RunConfig) -> list[Task]:
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
    loaded = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # the query MLP's initialisation
    return SAPTModel(loaded, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, query_hidden=cfg.query_hidden)


def stage_dir(run_dir: Path, t: int, task: str) -> Path:
    return run_dir / "stages" / f"{t:02d}_{task}"


def stage_seed(cfg: RunConfig, t: int) -> int:
    """Each stage reseeds, so a resumed run draws the same numbers as an uninterrupted one."""
    return cfg.seed * 1000 + t


def train_stage(
    model: SAPTModel, task: Task, t: int, cfg: RunConfig, log_path: Path, reflection: Reflection | None = None
) -> dict[str, Any]:
    """Train block t on `task`; keep the epoch with the lowest validation loss. Returns a summary.

    With `reflection`, the replay KL is added once per `replay_every` optimiser steps, at the first
    micro-batch of the step and not divided by `grad_accum`: its weight per step is the same whatever
    the accumulation.
    """
    items = encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length)
    val = encode_task_split(model, task, "val", cfg.max_source_length, cfg.max_target_length)
    router = [p for p in model.router.parameters() if p.requires_grad]
    router_ids = {id(p) for p in router}
    blocks = [p for p in model.trainable_parameters() if id(p) not in router_ids]
    optimizer = torch.optim.AdamW(
        [{"params": blocks, "lr": cfg.lr}, {"params": router, "lr": cfg.router_lr or cfg.lr}], weight_decay=0.0
    )
    gen = torch.Generator().manual_seed(stage_seed(cfg, t))
    pad = model.tokenizer.pad_token_id
    n_batches = math.ceil(len(items) / cfg.batch_size)
    best: dict[str, Any] = {"val_loss": math.inf}
    history = []
    steps = 0
    model.train()
    with open(log_path, "a", encoding="utf-8") as logf:
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(items), generator=gen).tolist()
            bar = tqdm(range(n_batches), desc=f"[{t + 1}] {task.name} epoch {epoch + 1}/{cfg.epochs}", leave=False)
            losses, kls = [], []
            for b in bar:
                batch = collate_train([items[i] for i in perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]], model.family, pad)
                loss = model(batch)
                total = loss / cfg.grad_accum
                record = {"stage": t, "task": task.name, "epoch": epoch, "step": b, "loss": loss.item()}
                if reflection and b % cfg.grad_accum == 0 and (steps % cfg.replay_every == 0):
                    kl = reflection.loss(model)
                    total = total + kl
                    record["kl"] = kl.item()
                    kls.append(record["kl"])
                if not torch.isfinite(total):
                    raise TrainingError(
                        f"non-finite loss ({float(total)}) in task {task.name!r}, epoch {epoch + 1}, batch {b + 1}; "
                        "nothing of this stage was saved: lower --lr and run the same command again"
                    )
                total.backward()
                if (b + 1) % cfg.grad_accum == 0 or b + 1 == n_batches:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                losses.append(record["loss"])
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                logf.write(json.dumps(record) + "\n")
            logf.flush()
            val_loss = evaluation_loss(model, val, cfg.eval_batch_size)
            history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_loss": val_loss})
            kl_note = ""
            if kls:
                history[-1]["kl"] = sum(kls) / len(kls)
                kl_note = f", reflection KL {history[-1]['kl']:.4f}"
            log(f"  [{t + 1}] {task.name} epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, "
                f"val loss {val_loss:.4f}{kl_note}")
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch + 1,
                        "params": [p.detach().clone() for p in model.trainable_parameters()]}
    with torch.no_grad():
        for p, saved in zip(model.trainable_parameters(), best["params"]):
            p.copy_(saved)
    return {"task": task.name, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "history": history,
            "n_train": len(items), "n_val": len(val),
            "routing_target": routing_target(model, val, cfg.eval_batch_size)}


def make_replay_inputs(model: SAPTModel, task: Task, t: int, cfg: RunConfig) -> tuple[list[str], dict[str, Any]]:
    """The reflection inputs of a trained task: generated pseudo inputs, or real ones if asked."""
    n = replay_count(len(task.train), cfg.pseudo_ratio, cfg.pseudo_max)
    if cfg.reflection_source == "real":
        inputs = real_replay_inputs(task, n, cfg.seed)
        return inputs, {"source": "real", "wanted": n, "count": len(inputs)}
    from sapt.pseudo import PseudoConfig, generate_pseudo_inputs

    pcfg = PseudoConfig(
        ratio=cfg.pseudo_ratio, max_samples=cfg.pseudo_max, r=cfg.pseudo_r, lr=cfg.pseudo_lr,
        epochs=cfg.pseudo_epochs, batch_size=cfg.batch_size, top_k=cfg.pseudo_top_k,
        repetition_penalty=cfg.pseudo_repetition_penalty, max_new_tokens=cfg.pseudo_max_new_tokens,
        seed=stage_seed(cfg, t),
    )
    inputs, stats = generate_pseudo_inputs(model, task, pcfg, cfg.max_source_length, cfg.max_target_length)
    return inputs, {"source": "generated", **stats}


# ---- the recipe --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    metrics: dict[str, Any]
    table: str


def check_run_dir(cfg: RunConfig) -> Path:
    """Refuse an output directory that holds something else than a run of this config. Writes nothing."""
    run_dir = Path(cfg.output)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        saved = yaml.safe_load(cfg_path.read_text()) or {}
        diff = differences(saved, cfg)
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({', '.join(diff)}); use another --output"
            )
    elif run_dir.exists() and any(p.name != ".lock" for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists and is not a sapt run directory; use another --output")
    return run_dir


def run(cfg: RunConfig) -> RunResult:
    # Everything that can be refused is checked before the run directory is touched.
    tasks = load_run_tasks(cfg)
    run_dir = check_run_dir(cfg)
    with RunLock(run_dir):
        if not (run_dir / "config.yaml").exists():
            io.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return _run_stages(cfg, tasks, run_dir)


def _run_stages(cfg: RunConfig, tasks: list[Task], run_dir: Path) -> RunResult:
    log(f"sapt: {len(tasks)} tasks ({', '.join(t.name for t in tasks)}), model {cfg.model}, output {run_dir}")
    t0 = time.time()
    model = build_model(cfg)
    log(f"sapt: model loaded in {time.time() - t0:.1f}s; {len(model.lora_layers)} projections adapted")
    log_path = run_dir / "train_log.jsonl"
    kl_ratio = cfg.kl_ratio if cfg.kl_ratio is not None else default_kl_ratio(model.family, cfg.benchmark)
    eval_items: dict[str, list] = {}
    replay_sets: list[ReplaySet] = []
    for t, task in enumerate(tasks):
        sdir = stage_dir(run_dir, t, task.name)
        torch.manual_seed(stage_seed(cfg, t))
        model.add_task(task.name)
        if (sdir / "stage.json").exists():
            model.load_block(t, io.load_tensors(sdir / "adapter.safetensors"))
            model.load_router(t, io.load_tensors(sdir / "router.safetensors"))
            summary = io.read_json(sdir / "stage.json")
            log(f"sapt: stage {t + 1} ({task.name}) already trained, loaded")
        else:
            ts = time.time()
            reflection = Reflection(replay_sets, kl_ratio, cfg.batch_size, stage_seed(cfg, t)) if cfg.reflection else None
            summary = train_stage(model, task, t, cfg, log_path, reflection)
            summary["seconds"] = round(time.time() - ts, 1)
            summary["kl_ratio"] = kl_ratio if cfg.reflection else None
            io.save_tensors(sdir / "adapter.safetensors", model.block_state(t), {"task": task.name})
            io.save_tensors(sdir / "router.safetensors", model.router_state(t), {"task": task.name})
            io.write_json(sdir / "stage.json", summary)
        if cfg.reflection:
            if not (sdir / "replay_stats.json").exists():
                inputs, stats = make_replay_inputs(model, task, t, cfg)
                io.write_jsonl(sdir / "replay.jsonl", [{"task": task.name, "definition": task.definition, "input": x}
                                                      for x in inputs])
                io.write_json(sdir / "replay_stats.json", stats)  # written last: marks the replay set complete
                log(f"sapt: {len(inputs)} {stats['source']} replay inputs for {task.name}")
            rows = [json.loads(line) for line in (sdir / "replay.jsonl").read_text(encoding="utf-8").splitlines() if line]
            replay_sets.append(ReplaySet(task.name, summary["routing_target"],
                                         encode_replay(model, task.definition, [r["input"] for r in rows], cfg.max_source_length)))
        if not (sdir / "scores.json").exists():
            scores, routing = {}, {}
            for j, other in enumerate(tasks[: t + 1]):
                if other.name not in eval_items:
                    eval_items[other.name] = encode_task_split(model, other, "eval", cfg.max_source_length, cfg.max_target_length)
                score, records = evaluate_task(model, other, eval_items[other.name], cfg.eval_batch_size,
                                               cfg.max_new_tokens, task_index=j)
                io.write_jsonl(sdir / "predictions" / f"{other.name}.jsonl", records)
                scores[other.name] = score
                routing[other.name] = 100.0 * sum(r["routed_to_own"] for r in records) / len(records)
            io.write_json(sdir / "scores.json", {"scores": scores, "routing_accuracy": routing})
        result = write_metrics(run_dir, cfg, tasks)
        log(f"sapt: stage {t + 1}/{len(tasks)} done ({time.time() - t0:.0f}s); AP so far {result.metrics['ap']:.1f}")
    return result


def collect_matrices(run_dir: Path, tasks: list[Task]) -> tuple[list[list], list[list]]:
    """Score and routing-accuracy matrices from the stages evaluated so far (rows stop at the first gap)."""
    matrix, routing = [], []
    for i, task in enumerate(tasks):
        path = stage_dir(run_dir, i, task.name) / "scores.json"
        if not path.exists():
            break
        data = io.read_json(path)
        matrix.append([data["scores"].get(t.name) if j <= i else None for j, t in enumerate(tasks)])
        routing.append([data["routing_accuracy"].get(t.name) if j <= i else None for j, t in enumerate(tasks)])
    return matrix, routing


def write_metrics(run_dir: Path, cfg: RunConfig, tasks: list[Task]) -> RunResult:
    names = [t.name for t in tasks]
    matrix, routing = collect_matrices(run_dir, tasks)
    m = cl_metrics(matrix)
    splits = sorted({t.eval_split for t in tasks})
    metrics = {
        "tasks": names,
        "matrix": matrix,
        **m,
        "routing_accuracy": routing,
        "eval_split": splits[0] if len(splits) == 1 else "mixed",
        "eval_splits": {t.name: t.eval_split for t in tasks},
        "metric": {t.name: t.metric for t in tasks},
        "method": cfg.method,
        "model": cfg.model,
        "reflection": cfg.reflection,
        "replay": replay_stats(run_dir, tasks),
        "stages_done": len(matrix),
    }
    io.write_json(run_dir / "metrics.json", metrics)
    return RunResult(metrics, render(metrics))


def replay_stats(run_dir: Path, tasks: list[Task]) -> dict[str, Any]:
    """Per task: how many replay inputs, and how well-formed / distinct / novel the generated ones are."""
    out = {}
    for i, task in enumerate(tasks):
        path = stage_dir(run_dir, i, task.name) / "replay_stats.json"
        if path.exists():
            stats = io.read_json(path)
            out[task.name] = {k: stats[k] for k in ("source", "wanted", "count", "well_formed_fraction",
                                                     "distinct_fraction", "novel_fraction") if k in stats}
    return out


def render(metrics: dict[str, Any]) -> str:
    title = f"{metrics['method']} on {metrics['model']} (eval split: {metrics['eval_split']}; rows: after training task i)"
    return format_table(metrics["tasks"], metrics["matrix"], metrics, title=title,
                        extra={"routing accuracy (% of inputs whose top weight is their own task's block)":
                               metrics["routing_accuracy"]})


# ---- a finished run, for eval / predict -------------------------------------------------------------
def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a sapt run directory (no config.yaml)")
    return RunConfig(**(yaml.safe_load(path.read_text()) or {}))


def load_trained(run_dir: str | Path, cfg: RunConfig | None = None) -> tuple[RunConfig, SAPTModel, list[str]]:
    """Rebuild the model of a run from its stages (all that are trained). Returns config, model, task names."""
    run_dir = Path(run_dir)
    cfg = cfg or load_run_config(run_dir)
    done = sorted((run_dir / "stages").glob("*/stage.json"))
    if not done:
        raise ConfigError(f"{run_dir}: no trained stage yet")
    model = build_model(cfg)
    names = []
    for t, path in enumerate(done):
        sdir = path.parent
        name = sdir.name.split("_", 1)[1]
        if sdir.name != f"{t:02d}_{name}":
            raise ConfigError(f"{run_dir}: stage {t} is missing (found {sdir.name})")
        model.add_task(name)
        model.load_block(t, io.load_tensors(sdir / "adapter.safetensors"))
        model.load_router(t, io.load_tensors(sdir / "router.safetensors"))
        names.append(name)
    model.eval()
    return cfg, model, names
