"""What a run reports: metrics.json (the score matrix and the CL metrics of the method, with the replay
statistics and any config change) and timing.json, the table printed after each stage (`render`, also
`sapt report`), and FWT's reference: a per-task run of the same tasks (`check_reference`, `reference_scores`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from sapt.config import BLOCK_OPTION_KEYS, ConfigError, default_value
from sapt.data import Task
from sapt.rundir.manifest import Manifest
from sapt.methods import Method
from sapt.evaluation.metrics import evaluated_rows, format_metrics, format_table, transfer_tasks
from sapt.rundir import collect_matrices, collect_unseen, replay_stats, run_timing, saved_config_values
from sapt.rundir.results import read_metrics_as_written, read_oracle_routing, write_metrics_file, write_timing

__all__ = ["REFERENCE_KEYS", "RecordedSettings", "Report", "check_reference", "reference_scores", "render", "timing_note",
           "write_metrics"]


@dataclass
class Report:
    """What a run reports after an evaluated stage: metrics.json's content, the table printed from it, the
    seconds of timing.json, and the run directory. Not `sapt.RunResult` (sapt.api), which the API returns
    for a whole run with its config and `load()`: this is the recipe's, one per evaluated stage, and was
    once also named RunResult, two classes of one name for two things."""
    metrics: dict[str, Any]
    table: str
    timing: dict[str, float] | None = None  # run_timing's numbers (main process only)
    run_dir: Path | None = None  # the directory written (OUTPUT, or OUTPUT-2, ... under --force-new)


@dataclass(frozen=True)
class RecordedSettings:
    """The run's settings that metrics.json records or is computed from, beside the method and the tasks:
    the base model and whether the reflection was on (recorded), --eval-every (which rows were scored, and
    what BWT and F.Ra cover), --reference (FWT's single-task scores) and --unseen (the tasks scored but never
    trained on). Five keys of four sections (run, method, reflection, data), so one small record rather than
    the sections: the signature of `write_metrics` says what the file depends on. The recipe makes it
    (`sapt.train.recorded_settings`), as does `sapt eval --routing oracle`, which rewrites the file."""
    model: str
    reflection: bool
    eval_every: int
    reference: str | None
    unseen: tuple[str, ...]


def write_metrics(run_dir: Path, method: Method, tasks: list[Task], settings: RecordedSettings,
                  stages_done: int | None = None) -> Report:
    """metrics.json and timing.json from the stage files of the first `stages_done` stages (None: every
    stage on disk). The matrix ends at the last evaluated stage, so AP always reads a scored row.

    `method`: the run's method (its stages, its metrics, whether it routes); `settings`: what else the file
    records or depends on (`RecordedSettings`)."""
    names = [t.name for t in tasks]
    stages = method.stages(tasks)
    matrix, routing = collect_matrices(run_dir, tasks, stages, stages_done)
    m = method.run_metrics(matrix, lambda: reference_scores(settings.reference, tasks)
                           if settings.reference and len(matrix) == len(tasks) else None)
    splits = sorted({t.eval_split for t in tasks})
    metrics = {
        "tasks": names,
        "matrix": matrix,
        **m,
        "routing_accuracy": routing if method.routed else None,
        "eval_split": splits[0] if len(splits) == 1 else "mixed",
        "eval_splits": {t.name: t.eval_split for t in tasks},
        "metric": {t.name: t.metric for t in tasks},
        "method": method.name,
        "model": settings.model,
        "reflection": settings.reflection,
        "replay": replay_stats(run_dir, tasks),
        "stages_done": len(matrix),
    }
    rows = evaluated_rows(matrix)
    if settings.eval_every != 1 or len(rows) < len(matrix):  # only then: a run evaluated after every stage keeps its bytes
        metrics.update(eval_every_keys(names, matrix, settings.eval_every, settings.reference is not None))
    if settings.reference:
        metrics["fwt_reference"] = settings.reference
    if settings.unseen:  # only then: the metrics.json of a run without --unseen stays byte-identical
        base, unseen_rows = collect_unseen(run_dir, stages, list(settings.unseen), len(matrix))
        metrics["unseen"] = {"tasks": list(settings.unseen), "base": base, "matrix": unseen_rows}
        if method.needs_task_id:
            metrics["unseen"]["note"] = (f"{method.name} needs a task id, which an unseen task has none of: "
                                         "scored on the base model only (null after every stage)")
    oracle = oracle_routed(run_dir, metrics)
    if oracle is not None:  # only then: a run never scored with oracle routing keeps its metrics.json bytes
        metrics["oracle_routed"] = oracle
    changes = Manifest(run_dir).config_changes
    if changes:  # resumed with --allow-config-change: say so where the results are
        metrics["config_changes"] = changes
    write_metrics_file(run_dir, metrics)
    # Wall-clock seconds apart from the results: metrics.json stays byte-identical across resumes.
    timing = run_timing(run_dir, stages)
    write_timing(run_dir, timing)
    return Report(metrics, render(metrics), timing)


def eval_every_keys(names: list[str], matrix: list[list], every: int, with_fwt: bool) -> dict[str, Any]:
    """What metrics.json says of a run whose rows were not all evaluated (--eval-every K): K, the 0-based
    indices of the matrix rows that hold scores, the tasks BWT and F.Ra average over (those whose row right
    after learning them was scored: `sapt.evaluation.metrics.transfer_tasks`) and a sentence saying so, which `sapt
    report` prints under the metrics. Said in the file, not only in the docs: two runs' BWT over different
    sets of tasks should not be compared unawares."""
    rows = evaluated_rows(matrix)
    skipped = [i for i in range(len(matrix)) if i not in rows]
    own = transfer_tasks(matrix)
    earlier = max(len(matrix) - 1, 0)
    note = (f"--eval-every {every}: rows after stages {', '.join(str(i + 1) for i in rows)} evaluated"
            + (f", after {len(skipped)} other stage(s) skipped (null rows)" if skipped else "")
            + (f"; BWT and F.Ra over the {len(own)} of {earlier} earlier tasks whose row right after learning them "
               f"was evaluated ({', '.join(names[j] for j in own)})" if own and len(own) < earlier else
               "; BWT and F.Ra n/a: no earlier task's row right after learning it was evaluated" if earlier and not own
               else ""))
    if with_fwt and skipped:
        note += f"; FWT over the {len(rows)} tasks whose own row was evaluated"
    return {"eval_every": every, "evaluated_rows": rows, "bwt_fra_tasks": [names[j] for j in own], "metrics_note": note}


def oracle_routed(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The oracle-routed scores of `sapt eval --routing oracle` (ORACLE_ROUTING) with the routing loss,
    AP(oracle-routed) - AP(routed), when they were measured after the run's last stage on its own data."""
    oracle = read_oracle_routing(run_dir)
    if oracle is None or metrics["ap"] is None:
        return None
    last_row = [name for name, v in zip(metrics["tasks"], metrics["matrix"][-1]) if v is not None]
    if oracle.get("after_stage") != metrics["stages_done"] or list(oracle.get("scores", {})) != last_row:
        return None  # another stage count (a resumed or extended run) or other tasks: stale
    return {"scores": oracle["scores"], "ap": oracle["ap"], "routing_loss": round(oracle["ap"] - metrics["ap"], 4)}


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
    lines = format_table(metrics["tasks"], metrics["matrix"], metrics, title=title, extra=extra or None).split("\n")
    if metrics.get("metrics_note"):  # --eval-every: which rows exist and what BWT and F.Ra cover, under the metrics
        lines.insert(lines.index(format_metrics(metrics)) + 1, metrics["metrics_note"])
    for name, r in (metrics.get("replay") or {}).items():
        line = f"replay inputs of {name}: {r.get('count', 0)}/{r.get('wanted', 0)} ({r.get('source')})"
        if "well_formed_fraction" in r:
            line += (f", well-formed {100 * r['well_formed_fraction']:.0f}%, distinct {100 * r['distinct_fraction']:.0f}%,"
                     f" not a training input {100 * r['novel_fraction']:.0f}%")
        lines.append(line)
    if metrics.get("oracle_routed"):
        o = metrics["oracle_routed"]
        lines.append(f"oracle routing (each task by its own block alone): AP {o['ap']:.1f}; routing loss "
                     f"{o['routing_loss']:.1f} points (AP oracle-routed - AP routed)")
    lines.extend(render_unseen(metrics))
    return "\n".join(lines)


def render_definitions(definitions: dict[str, str]) -> list[str]:
    """The tasks' definitions (RUN_DIR/tasks.json), one line each, as `sapt predict --definition` takes them:
    the router learned from prompts that hold them, and routes an input without one much worse."""
    if not any(definitions.values()):
        return []
    lines = ["", "task definitions (the router learned with them: give the input's task's one to "
                 "`sapt predict --definition`, or definition= in Python)"]
    lines += [f"  {name}: {json.dumps(text, ensure_ascii=False)}" for name, text in definitions.items()]
    return lines


def render_unseen(metrics: dict[str, Any]) -> list[str]:
    """The unseen tasks' rows (--unseen): the base model, then after each stage, with their mean."""
    unseen = metrics.get("unseen")
    if not unseen:
        return []

    def cell(v: float | None) -> str:
        return f"{v:7.1f}" if v is not None else "      -"

    def mean(row: list) -> str:
        vals = [v for v in row if v is not None]
        return cell(sum(vals) / len(vals) if vals else None)

    names = unseen["tasks"]
    rows = ([("base model", unseen["base"])] if unseen.get("base") is not None else [])
    rows += [(f"after stage {i + 1}", r) for i, r in enumerate(unseen["matrix"])]
    width = max(len(label) for label, _ in rows) if rows else 10
    lines = ["", "unseen tasks (never trained on; scored with no task id)",
             " " * width + "".join(f" {n[:7]:>7}" for n in names) + "    mean"]
    for label, row in rows:
        lines.append(f"{label:<{width}}" + "".join(f" {cell(v)}" for v in row) + f" {mean(row)}")
    if unseen.get("note"):
        lines.append(unseen["note"])
    return lines


# What a per-task reference run must share with the run it serves, for its diagonal to be the single-task
# scores of *these* tasks as this run learns them: every key that changes what a per-task run computes, so
# the same model, data (and how it is read and prompted), subsets, seed, block kind and its shape,
# optimisation, precision and decoding. Left out: what a per-task run does not use (the router, the
# reflection, the other methods' options) and what changes no number (output, trackers, notes).
REFERENCE_KEYS = ("model", "data_dir", "benchmark", "val_size", "max_train_per_task", "max_eval_per_task", "seed",
                  "lr", "epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha", "max_source_length",
                  "max_target_length", "max_new_tokens", "backbone_dtype", "stop_at_newline",
                  "pet", "prompt_len", "prompt_mlp_hidden", "lora_dropout", "mixed_precision", "max_grad_norm",
                  "template", "input_field", "output_field", "lr_scheduler", "warmup_ratio", "target_modules")


def check_reference(reference: str, settings: dict[str, Any], tasks: list[Task]) -> None:
    """Refuse a `--reference` that is not a finished per-task run of the same tasks under the same settings
    (REFERENCE_KEYS), before anything is trained: FWT would otherwise compare unlike runs.

    `settings`: this run's config as config.yaml holds it (`sapt.config.to_dict`), the form the reference's
    own config.yaml is read in, so the two are compared key by key in one form. Kept here with FWT's other
    rules (which keys matter, `reference_scores`) rather than beside the resume check (sapt.rundir.plan,
    which also compares whole saved configs): what is compared, and why, is FWT's; the resume check's keys
    and policy are another rule."""
    ref = Path(reference)
    reference_scores(reference, tasks)  # a finished per-task run of these tasks, in this order
    saved = saved_config_values(ref)
    if saved is None:
        raise ConfigError(f"--reference {reference}: its config.yaml cannot be read")
    now = settings
    old = {k: saved[k] if k in saved else default_value(k) for k in REFERENCE_KEYS}

    def same(key: str) -> bool:
        if key == "data_dir" and old[key] is not None and now[key] is not None:  # one folder, however written
            return Path(old[key]).resolve() == Path(now[key]).resolve()
        return old[key] == now[key]

    # keys that shape another kind of block only (each type's own, `BLOCK_OPTION_KEYS`): compared only when the
    # run uses that kind, so that a LoRA run's prompt_len, say, cannot refuse a reference that computed the same
    other_kinds = {k for k, kind in BLOCK_OPTION_KEYS.items() if kind != now["pet"]}
    differ = [k for k in REFERENCE_KEYS if k not in other_kinds and not same(k)]
    if differ:
        shown = ", ".join(f"{k} {old[k]!r} there, {now[k]!r} here" for k in differ)
        raise ConfigError(f"--reference {reference}: a per-task run with other settings ({shown}); "
                          "FWT needs the same model, data, subsets, seed, blocks and optimisation")


def reference_scores(reference: str, tasks: list[Task]) -> list[float]:
    """The single-task scores s_j of FWT: the diagonal of a per-task run of the same tasks."""
    ref = read_metrics_as_written(reference)
    if ref is None:
        raise ConfigError(f"--reference {reference}: no metrics.json there")
    names = [t.name for t in tasks]
    if ref.get("tasks") != names or ref.get("method") != "per-task" or ref.get("stages_done") != len(names):
        raise ConfigError(f"--reference {reference}: not a finished per-task run of the tasks {', '.join(names)}")
    return [ref["matrix"][j][j] for j in range(len(names))]
