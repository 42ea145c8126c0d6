"""`sapt diagnose --run RUN`: is a new task starved by the router? Read from what training recorded.

For each stage t > 0 of a routed method (SAPT), from `stages/NN_<task>/stage.json` and `train_log.jsonl`:

    start weight    the router's mean weight on block t over task t's training prompts before any step
    logit gap       the mean of (best old key's logit - key t's logit) on them: positive, an old block wins;
                    the new block's share of the loss gradient, w (1 - w), is then about exp(-gap)
    old KL          the old tasks' reflection term (replay inputs against their targets) at the start
    weight over the stage   the batches' mean weight on block t in the first, middle and last third of the
                    stage's steps (the train log's `routing_weight`)
    fit             learn-then-route only: the weight on block t (validation prompts) before and after the
                    router fit
    end routing     % of task t's evaluation inputs routed to block t after its own stage (metrics.json)

A stage that starts with a weight under 0.1 and ends its stage there is starved: its block learned under a
weight near 0, or its inputs go to an old block at test time. Runs trained before these fields were recorded
show "-" for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sapt.config import ConfigError
from sapt.rundir import stage_folders, stage_task
from sapt.rundir.results import read_metrics_as_written
from sapt.rundir.stage_files import read_stage_summary, read_train_log

__all__ = ["diagnose", "render"]


def diagnose(run_dir: Path) -> list[dict[str, Any]]:
    """One row per stage (see the module docstring)."""
    folders = stage_folders(run_dir)
    if not folders:
        raise ConfigError(f"{run_dir}: no trained stage to diagnose (is it a sapt run directory?)")
    metrics = read_metrics_as_written(run_dir) or {}
    routing = metrics.get("routing_accuracy") or []
    weights = _weights_by_stage(read_train_log(run_dir))
    rows = []
    for t, sdir in enumerate(folders):
        stage = read_stage_summary(sdir)
        start = stage.get("router_start") or {}
        fit = stage.get("router_fit") or {}
        rows.append({
            "stage": t + 1, "task": stage_task(sdir.name),
            "start_weight": start.get("new_task_weight"), "logit_gap": start.get("logit_gap"),
            "old_kl": start.get("old_tasks_kl"),
            "weight_over_stage": _thirds(weights.get(t, [])),
            "fit_weight": fit.get("new_task_weight"),
            "end_routing": routing[t][t] if t < len(routing) and t < len(routing[t]) else None,
        })
    return rows


def _weights_by_stage(records: list[dict[str, Any]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for rec in records:
        if "routing_weight" in rec:
            out.setdefault(rec["stage"], []).append(rec["routing_weight"])
    return out


def _thirds(values: list[float]) -> list[float] | None:
    """The mean of the first, middle and last third of the values (None if there are none)."""
    if not values:
        return None
    n = len(values)
    cuts = [0, max(1, n // 3), max(1, 2 * n // 3), n]
    parts = [values[cuts[i]:cuts[i + 1]] or values[-1:] for i in range(3)]
    return [round(sum(p) / len(p), 4) for p in parts]


def render(rows: list[dict[str, Any]]) -> str:
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    header = (f"{'stage':>5} {'task':<20} {'start w':>8} {'logit gap':>9} {'old KL':>8} "
              f"{'w over stage (thirds)':>24} {'fit w before->after':>20} {'end routing %':>13}")
    lines = [header]
    for r in rows:
        thirds = " / ".join(f"{w:.3f}" for w in r["weight_over_stage"]) if r["weight_over_stage"] else "-"
        fit = f"{r['fit_weight'][0]:.3f} -> {r['fit_weight'][1]:.3f}" if r["fit_weight"] else "-"
        lines.append(f"{r['stage']:>5} {r['task'][:20]:<20} {num(r['start_weight'], '.4f'):>8} "
                     f"{num(r['logit_gap'], '.2f'):>9} {num(r['old_kl'], '.4f'):>8} {thirds:>24} {fit:>20} "
                     f"{num(r['end_routing'], '.1f'):>13}")
    starved = [r["task"] for r in rows if r["start_weight"] is not None and r["start_weight"] < 0.1]
    if starved:
        lines.append(f"started starved (weight under 0.1 on their own block): {', '.join(starved)}")
    return "\n".join(lines)
