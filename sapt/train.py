"""The continual-learning recipe: for each stage (one per task, or mtl's one over all tasks), train its block
(`sapt.stage_trainer`), save it, make its reflection inputs, score every task seen so far and report
(`sapt.evaluation.report`). Finished work is loaded, not redone. What differs between SAPT and the baselines is
asked of the method's hooks (`sapt.methods.base`); this file reads top to bottom:

    run            refuse what can be refused, lock the run directory, load the model
    _run_stages    check the stages on disk against manifest.json, record a config change, trackers
    StageLoop      each stage: trained or loaded, reflection inputs, evaluation, metrics
    learn          one more task for a finished run
    load_trained   a finished run's model, for eval / predict / export
    pieces         the tasks of a run, the model and its placement, the reflection inputs

The run directory (its layout, choosing and locking it, checking its stages against manifest.json,
reading it back) is `sapt.rundir`. What a stage writes there:
    stages/NN_<task>/adapter.safetensors   block NN of every adapted projection
    stages/NN_<task>/router.safetensors    key NN and the shared query MLP after stage NN
    stages/NN_<task>/stage.json      training summary and routing target
    stages/NN_<task>/replay.jsonl    reflection inputs of task NN (pseudo or real), with replay_stats.json
    stages/NN_<task>/scores.json     scores on tasks 0..NN, with predictions/<task>.jsonl
    stages/NN_<task>/unseen_scores.json   with --unseen: scores on the tasks never trained on, with unseen/<task>.jsonl
    unseen_base/scores.json          with --unseen: the same on the base model (no block), before stage 1

Resuming (the same command again): a phase of a stage (trained / replay / evaluated, `sapt.rundir.manifest`)
is skipped only if manifest.json records it and its files pass their checksums (`sapt.rundir.verify_stages`);
a stage that was training resumes after its last checkpointed epoch with the optimiser and every RNG
state, so the result is bit-identical to an uninterrupted run on CPU. Damaged trained or replay files
invalidate their stage and every later one (those are redone from scratch); damaged evaluation files
are rescored.

Test hook: SAPT_TEST_KILL_AT=point[,point...] makes the process kill itself (SIGKILL, or the signal
named by SAPT_TEST_KILL_SIGNAL, e.g. SIGSTOP) when it reaches a named point; see `sapt.rundir.recovery.kill_point`.

`train_stage`, `build_model` and `make_replay_inputs` are looked up here when called, so that a test may
replace them on this module.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from sapt import io
from sapt.config import ConfigError, RunConfig, to_dict
from sapt.errors import RunDirError
from sapt.batching import encode
from sapt.data import Task
from sapt.data.benchmark import task_order_reason
from sapt.data.overview import order_line, task_lines
from sapt.data.formats import has_train
from sapt.distributed import get_dist
from sapt.evaluation.tasks import decoding_of, evaluate_tasks
from sapt.rundir.manifest import Manifest
from sapt.methods import Method, make_method
from sapt.models import eager_attention_on_cpu, load_model, quantize_backend_problem
from sapt.modules.blocks.registry import build_block_type
from sapt.modules.router import SharedAttentionRouter
from sapt.modules.sapt_model import SAPTModel
from sapt.rundir.recovery import CheckpointError, kill_point, load_checkpoint
from sapt.reflection import Reflection, ReplaySet, default_kl_ratio, encode_replay, real_replay_inputs, replay_count
from sapt.evaluation.report import (
    REFERENCE_KEYS, RecordedSettings, Report, check_reference, reference_scores, render, timing_note, write_metrics,
)
from sapt.router_fit import without_definition
from sapt.router_setup import init_key_from_task, update_centre
from sapt.rundir import (
    absolute_data_dir, has_run_config, load_run_config, lock_run_dir, stage_dir, trained_stages, verify_stages,
    write_run_config, write_task_definitions,
)
from sapt.rundir.results import prediction_file, read_metrics_as_written, record_evaluation, write_predictions
from sapt.rundir.stage_files import (
    checkpoint_path, drop_checkpoint, load_stage, read_replay_inputs, read_stage_summary, save_trained_stage,
    stage_summary_path, train_log_path, write_replay,
)
from sapt.rundir.layout import log, open_run_log
from sapt.rundir.plan import drop_if_bare
from sapt.stage_trainer import (
    StageSections, TrainingError, optimiser_steps_per_epoch, stage_seed, train_stage, val_sha256, validation_items,
)
from sapt.tracking import Trackers, check_trackers
# callers import these from here too, as before they moved to sapt.run_tasks
from sapt.run_tasks import builtin_tasks, configured_tasks, load_run_tasks, load_unseen_tasks, split_settings  # noqa: F401
from sapt.unseen import UnseenScoring

__all__ = [  # with the names of sapt.evaluation.report, sapt.stage_trainer and sapt.router_setup that callers import from here
    "REFERENCE_KEYS", "Report", "StageLoop", "TrainingError", "build_model", "check_reference",
    "init_key_from_task", "learn", "load_run_config", "load_run_tasks", "load_trained", "load_unseen_tasks",
    "make_replay_inputs",
    "place", "recorded_settings", "reference_scores", "render", "run", "stage_sections", "stage_seed", "timing_note", "train_stage",
    "update_centre",
    "write_metrics",
]


# ---- the recipe --------------------------------------------------------------------------------------
def run(cfg: RunConfig, force_new: bool = False, allow_changes: Any = ()) -> Report:
    """Learn the task sequence of `cfg` into `cfg.output`, resuming whatever is done there.

    `force_new`: if the output directory holds another run, use OUTPUT-2 (-3, ...) instead of refusing.
    `allow_changes`: keys of CHANGEABLE_KEYS (lr, router_lr) that may differ from the saved config; the
    change is recorded in manifest.json and config.yaml is updated."""
    # Everything that can be refused without the directory is checked first; nothing is written yet.
    cfg = absolute_data_dir(cfg)  # config.yaml names the data the run read, whatever folder a later command is in
    tasks = load_run_tasks(cfg)
    unseen = load_unseen_tasks(cfg, tasks)
    check_trackers(cfg.log_with)
    if cfg.reference:
        check_reference(cfg.reference, to_dict(cfg), tasks)
    dist = get_dist()
    problem = quantize_backend_problem(cfg.quantize, fsdp=dist.fsdp)  # the machine's, refused before the directory
    if problem is not None:
        raise ConfigError(problem)
    # The main process takes the lock, then checks the directory's config under it, before the model
    # loads: a second `sapt run` into the same directory is refused at once, and no other run can write
    # a config.yaml between the check and ours. A refusal reaches every process, so none waits forever.
    lock, problem, planned, created = None, None, None, False
    if dist.is_main:
        try:
            lock, run_dir, changes, created = lock_run_dir(cfg, force_new, allow_changes)
            planned = (str(run_dir), changes)
        except ConfigError as e:  # its class travels too: a held or foreign directory stays a RunDirError
            problem = (RunDirError if isinstance(e, RunDirError) else ConfigError, str(e))
    problem, planned = dist.broadcast((problem, planned))
    if problem is not None:
        raise problem[0](problem[1])
    run_dir, changes = Path(planned[0]), planned[1]
    if str(run_dir) != cfg.output:
        cfg = dataclasses.replace(cfg, output=str(run_dir))
    try:
        if dist.is_main:
            open_run_log(run_dir)  # from here on the log's lines go to RUN_DIR/run.log too (the lock is held)
        t0 = time.time()
        model = build_model(cfg)
        place(model)
        log(f"sapt: model {cfg.model} loaded in {time.time() - t0:.1f}s; "
            + model.blocks.describe()
            + (f"; {dist.world} processes, global batch {cfg.batch_size}" if dist.world > 1 else ""))
        if dist.is_main and not has_run_config(run_dir):
            write_run_config(run_dir, to_dict(cfg))
        return dataclasses.replace(_run_stages(cfg, tasks, run_dir, model, changes, unseen), run_dir=run_dir)
    except BaseException as e:
        if created:
            drop_if_bare(run_dir)  # a model that cannot be loaded leaves no new run directory behind
        if isinstance(e, FileNotFoundError) and lock is not None:
            io.check_held(run_dir)  # a file not found because the run directory is gone says so (sapt.io)
        raise
    finally:
        open_run_log(None)
        if lock is not None:
            lock.release()


def _run_stages(cfg: RunConfig, tasks: list[Task], run_dir: Path, model: SAPTModel,
                changes: dict[str, list] | None = None, unseen: list[Task] | None = None) -> Report:
    log(f"sapt: {len(tasks)} tasks ({', '.join(t.name for t in tasks)}), model {cfg.model}, output {run_dir}")
    log_data_overview(cfg, tasks, model)
    dist = get_dist()
    main = dist.is_main  # only the main process writes; every process computes (see sapt.distributed)
    manifest = Manifest(run_dir)
    method = make_method(cfg.method, cfg.method_options)
    stages = method.stages(tasks)
    done = dist.broadcast(verify_stages(run_dir, stages, manifest, method.reflects(cfg.arm)) if main else None)
    # before anything is written: a refusal leaves the run directory as it was
    problem = dist.broadcast(changed_task_data(cfg, tasks, stages, run_dir, model, method, done) if main else None)
    if problem is not None:
        raise ConfigError(problem)
    if changes and main:
        first = next((t for t in range(len(stages)) if (t, "trained") not in done), len(stages))
        manifest.record_change(first, changes)
        write_run_config(run_dir, to_dict(cfg))
        log(f"sapt: config changed on resume ({', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())}), "
            f"in effect from stage {first + 1}; recorded in manifest.json and config.yaml")
    if main:
        write_task_definitions(run_dir, tasks)  # what `predict` should be given (`sapt report` lists them)
    trackers = Trackers(cfg.log_with, run_dir, to_dict(cfg), active=main)
    try:
        result = StageLoop(cfg, tasks, run_dir, model, method, manifest, trackers, unseen).run(done)
    finally:
        trackers.finish()
    return result


def log_data_overview(cfg: RunConfig, tasks: list[Task], model: SAPTModel) -> None:
    """Log the task order and, per task, its split sizes, where its evaluation comes from, its metric and its
    first training prompt and target as the model gets them (`sapt.data.overview`): what the loader made of
    the data, said before the first stage trains rather than discovered from the scores. Every start of the
    run says it, a resumed one too: the log of each command is read on its own."""
    if not get_dist().is_main:  # log() prints from the main process only; the others skip the tokenising too
        return
    learned = {Path(f).name: Path(f).parent.name for f in cfg.extra_tasks}  # task -> its benchmark folder
    if cfg.data_dir is None:
        reason = "the built-in suite's order" if cfg.tasks is None else "as given by --tasks"
    else:
        reason = task_order_reason(cfg.benchmark, cfg.tasks, cfg.order)
    if learned:
        reason += f"; then {', '.join(learned)}, added by sapt learn"
    log(order_line([t.name for t in tasks], reason))
    for t, task in enumerate(tasks):
        tokens = None
        if task.train:  # uncut lengths (no limit), so that the line can say when the run's limits cut them
            whole = encode(model.tokenizer, model.family, task.definition, task.train[:1], 10**9, 10**9,
                           model.template)[0]
            tokens = (len(whole.prompt), len(whole.target))
        benchmark = learned.get(task.name, cfg.benchmark if cfg.data_dir is not None else None)
        for line in task_lines(t, len(tasks), task, model.family, model.template, benchmark, tokens,
                               cfg.max_source_length, cfg.max_target_length):
            log(line)


def changed_task_data(cfg: RunConfig, tasks: list[Task], stages: list[Task], run_dir: Path, model: SAPTModel,
                      method: Method, done: set[tuple[int, str]]) -> str | None:
    """Why the run must not go on with the task data it loaded (one line), or None: a stage that is trained
    (stage.json) or was training (its checkpoint) recorded the sha256 of its validation examples, and the
    data loaded now gives others. The validation examples are carved from the task's training file by a
    seeded split, so an edit that adds, removes or changes examples almost always moves them (an edit of a
    training-only example that leaves the split as it was is not seen: only this hash is recorded).

    Refused, not warned: going on would load blocks trained on the old data and train the next ones (or the
    rest of an interrupted one) on the new, a run that measures neither, and a warning in the stage lines is
    easily missed. The user decides: restore the data, or start a new run for it. A stage.json or
    checkpoint without the hash (an older sapt) is not checked."""
    names = {t.name for t in tasks}
    for t, stage in enumerate(stages):
        sdir = stage_dir(run_dir, t, stage.name)
        trained = (t, "trained") in done
        if trained:
            recorded, record = read_stage_summary(sdir).get("val_sha256"), stage_summary_path(sdir)
        else:  # the stage in progress: the checkpoint it resumes from, if it has a usable one
            try:
                state = load_checkpoint(checkpoint_path(sdir))
            except (OSError, CheckpointError):
                return None
            usable = state.get("task") == stage.name and state.get("stage") == t
            recorded, record = (state.get("val_sha256") if usable else None), checkpoint_path(sdir)
        if recorded is not None:
            val_items = validation_items(model, stage, cfg.decoding,
                                         method.training_items(model, stage, tasks, cfg.decoding)[1])
            if val_sha256(val_items) != recorded:
                which = [stage.name] if stage.name in names else [task.name for task in tasks]  # mtl: every task
                how = "trained on it" if trained else "was training on it when it stopped"
                return (f"{', '.join(task_data_file(cfg, n) for n in which)}: the data of task "
                        f"{', '.join(repr(n) for n in which)} changed since stage {t + 1} of {run_dir} {how} "
                        f"({record} records other validation examples than the data gives now); going on would "
                        "mix blocks trained on the old data with training on the new: restore the data as it "
                        "was, or start a new run on the new data (another --output)")
        if not trained:
            return None
    return None


def task_data_file(cfg: RunConfig, name: str) -> str:
    """Where the run reads task `name`'s training data, for a message: its train file (or folder), or the
    built-in suite."""
    from sapt.data import DataError
    from sapt.data.formats import find_source

    folder = next((Path(f) for f in cfg.extra_tasks if Path(f).name == name), None)
    if folder is None and cfg.data_dir is not None:
        folder = Path(cfg.data_dir) / str(cfg.benchmark) / name
    if folder is None:
        return f"built-in task {name} (sapt.data.builtin)"
    try:
        source = find_source(folder, "train")
    except DataError:
        source = None
    return str(source.path if source is not None else folder)


class StageLoop(UnseenScoring):
    """The stages of a run, in order. Each is trained (or, if done, loaded), then gives its reflection
    inputs (methods that reflect), is evaluated (with --eval-every K: every K-th and the last, `evaluates`),
    and the metrics so far are written. Only the main process
    writes; the others compute in step and wait at the barriers for what they read back."""

    def __init__(self, cfg: RunConfig, tasks: list[Task], run_dir: Path, model: SAPTModel, method: Method,
                 manifest: Manifest, trackers: Trackers, unseen: list[Task] | None = None):
        self.cfg, self.tasks, self.run_dir, self.model, self.method = cfg, tasks, run_dir, model, method
        # --unseen: tasks never trained on, scored on the base model and after every stage
        self.unseen = unseen if unseen is not None else load_unseen_tasks(cfg, tasks)
        self.manifest, self.trackers = manifest, trackers
        self.dist = get_dist()
        self.main = self.dist.is_main
        self.stages = method.stages(tasks)
        self.reflect = method.reflects(cfg.arm)
        self.t0 = time.time()
        self.stage_seconds: list[float] = []  # the time of each stage trained (not loaded) in this process
        self.step_offset = 0  # optimiser steps of the earlier stages: the trackers' step
        self.log_path = train_log_path(run_dir)
        self.kl_ratio = cfg.kl_ratio if cfg.kl_ratio is not None else default_kl_ratio(model.family, cfg.benchmark)
        self.eval_items: dict[str, list] = {}  # encoded once per task
        # how every evaluation (own tasks, unseen ones) builds and answers prompts
        self.decoding = decoding_of(cfg.decoding, cfg.mixed_precision)
        self.replay_sets: list[ReplaySet] = []  # the reflection inputs of the stages so far

    def run(self, done: set[tuple[int, str]]) -> Report:
        """`done`: the (stage, phase) pairs on disk and intact (`verify_stages`)."""
        cfg, method = self.cfg, self.method
        if self.unseen:
            self.evaluate_unseen_base()
        result: Report | None = None  # the last stage is always evaluated, so the loop ends with its result
        for t, task in enumerate(self.stages):
            started = time.time()
            sdir = stage_dir(self.run_dir, t, task.name)
            torch.manual_seed(stage_seed(cfg.seed, t))
            method.add_stage(self.model, t, task.name)
            summary = self.load(t, task, sdir) if (t, "trained") in done else self.train(t, task, sdir)
            self.step_offset += cfg.epochs * optimiser_steps_per_epoch(summary["n_train"], cfg.batch_size, cfg.grad_accum)
            method.after_stage(self.model, task, sdir, cfg.decoding)
            if self.reflect:
                self.reflection_inputs(t, task, sdir, summary, (t, "replay") in done)
            evaluated = (t, "evaluated") in done  # a row on disk stays, whatever K is now
            if not evaluated and self.evaluates(t):
                self.evaluate(t, sdir)
                evaluated = True
            if (t, "trained") not in done:  # a stage loaded from disk takes no time: not a measure of one
                self.stage_seconds.append(time.time() - started)
            result = self.report(t) if evaluated else self.report_skipped(t, result)
        return result

    def evaluates(self, t: int) -> bool:
        """Whether stage t's row of the score matrix is scored (--eval-every K): after every K-th stage and after
        the last, whose row gives AP. The rule depends on K and the stage count only, so a resumed run skips the
        rows the killed one skipped (they are not recorded in manifest.json, as a stage never evaluated, and
        `verify_stages` has nothing to redo); `sapt learn` moves "the last" on, and the old last row, scored,
        stays. A skipped row is never scored later: it must be scored with the blocks of its own stage."""
        return (t + 1) % self.cfg.eval_every == 0 or t == len(self.stages) - 1

    def load(self, t: int, task: Task, sdir: Path) -> dict[str, Any]:
        b = self.method.block_index(t)
        block, router, summary = load_stage(sdir)
        self.model.load_block(b, block)
        self.model.load_router(b, router)
        drop_checkpoint(sdir)  # left if killed right after the manifest was written
        log(f"sapt: stage {t + 1} ({task.name}) already trained, loaded")
        return summary

    def train(self, t: int, task: Task, sdir: Path) -> dict[str, Any]:
        """Train stage t (resuming its checkpoint), then save its block, router, the method's files and
        stage.json, and record them in the manifest."""
        cfg, method, model = self.cfg, self.method, self.model
        reflection = Reflection(self.replay_sets, self.kl_ratio, cfg.batch_size, stage_seed(cfg.seed, t)) \
            if self.reflect else None
        items, val_items = method.training_items(model, task, self.tasks, cfg.decoding)
        method.prepare_stage(model, task, t, cfg.block, cfg.router, cfg.decoding,
                             [rs.items for rs in self.replay_sets])
        if self.main:  # the training log is appended to in place: not into a directory made anew meanwhile
            io.check_held(self.run_dir)
        summary = train_stage(model, task, t, stage_sections(cfg), self.log_path, reflection,
                              checkpoint=checkpoint_path(sdir), method=method, items=items, val_items=val_items,
                              trackers=self.trackers, step_offset=self.step_offset)
        summary["kl_ratio"] = self.kl_ratio if self.reflect else None
        summary["method"] = method.name
        if self.main:
            b = method.block_index(t)
            save_trained_stage(sdir, t, task.name, model.block_state(b), model.router_state(b), summary, self.manifest,
                               lambda: method.stage_files(sdir, task, cfg.seed))
        self.dist.barrier()  # the others read the method's files (replay's memory.jsonl) next
        return summary

    def reflection_inputs(self, t: int, task: Task, sdir: Path, summary: dict[str, Any], done: bool) -> None:
        """Make (unless `done`) and read back the stage's reflection inputs, replayed in later stages."""
        cfg, model, dist = self.cfg, self.model, self.dist
        if not done:
            # seeded (and the generator is trained under its own forked RNG): redone identically if
            # interrupted. One process generates; the others wait for its files. Under FSDP every
            # process runs the generator in step with the main one, and the main one's samples count.
            if self.main or model.sharded:
                inputs, stats = make_replay_inputs(model, task, t, cfg)
            if self.main:
                write_replay(sdir, t, [{"task": task.name, "definition": task.definition, "input": x} for x in inputs],
                             stats, self.manifest)
                log(f"sapt: {len(inputs)} {stats['source']} replay inputs for {task.name}")
            dist.barrier()
        inputs = read_replay_inputs(sdir)
        # route_without_definition: a seeded share of them also without the definition, for the router fit
        bare = without_definition(model, task.definition, inputs, cfg.route_without_definition,
                                  f"{cfg.seed}:{task.name}:replay-without-definition", cfg.max_source_length)
        self.replay_sets.append(ReplaySet(task.name, summary["routing_target"],
                                          encode_replay(model, task.definition, inputs, cfg.max_source_length), bare))

    def evaluate(self, t: int, sdir: Path) -> None:
        """Score the method's evaluation tasks after stage t: predictions, scores.json, the trackers."""
        scores, routing, files = {}, {}, []
        eval_t0 = time.time()
        for result in evaluate_tasks(self.model, self.method.eval_tasks(self.tasks, t), self.method, self.decoding,
                                     cache=self.eval_items):
            name = result.task.name
            files.append(prediction_file(name))
            if self.main:
                write_predictions(sdir, files[-1], result.records)
                kill_point(f"stage{t}:eval")
            scores[name] = result.score
            if result.routing_accuracy is not None:
                routing[name] = result.routing_accuracy
        seconds = round(time.time() - eval_t0, 2)
        unseen_scores = self.score_unseen(sdir, self.method, files) if self.unseen else {}
        self.trackers.log({**{f"eval/{k}": v for k, v in scores.items()}, "eval/ap": sum(scores.values()) / len(scores),
                           **{f"unseen/{k}": v for k, v in unseen_scores.items() if v is not None},
                           "stage": t + 1}, step=self.step_offset)
        if self.main:
            record_evaluation(sdir, {"scores": scores, "routing_accuracy": routing, "seconds": seconds}, files, self.manifest)
            kill_point(f"stage{t}:metrics")

    def report(self, t: int) -> Report:
        """metrics.json and timing.json after stage t (main process), and the progress line."""
        if self.main:
            result = write_metrics(self.run_dir, self.method, self.tasks, recorded_settings(self.cfg), stages_done=t + 1)
        self.dist.barrier()
        if not self.main:  # the same numbers, read back from what the main process wrote
            result = Report(read_metrics_as_written(self.run_dir), "")
        progress = progress_note(time.time() - self.t0, self.stage_seconds, len(self.stages) - t - 1)
        log(f"sapt: stage {t + 1}/{len(self.stages)} done ({progress}); AP so far {result.metrics['ap']:.1f}"
            + timing_note(result.timing))
        return result

    def report_skipped(self, t: int, last: Report | None) -> Report | None:
        """The progress line of a stage whose evaluation --eval-every skips. metrics.json is left as the last
        evaluated stage wrote it: its matrix ends at a scored row, so its AP is a measured one, and its
        `stages_done` says how far that is (the stage's files and manifest.json say how far training is)."""
        progress = progress_note(time.time() - self.t0, self.stage_seconds, len(self.stages) - t - 1)
        log(f"sapt: stage {t + 1}/{len(self.stages)} done ({progress}); not evaluated (--eval-every "
            f"{self.cfg.eval_every}: the next row is scored after stage {self.next_evaluated(t) + 1})")
        return last

    def next_evaluated(self, t: int) -> int:
        return next(s for s in range(t + 1, len(self.stages)) if self.evaluates(s))


def progress_note(elapsed: float, stage_seconds: list[float], stages_left: int) -> str:
    """The stage line's "4m25s since the start, about 8m50s left": the time since this command started (not
    the stage's own, which the bare "265s" was read as) and an ETA for the whole run, the stages left times
    the mean time of the stages trained so far by this command (none before one was trained here: a resumed
    run's loaded stages take no time and would promise too little)."""
    note = f"{duration(elapsed)} since the start"
    if stages_left and stage_seconds:
        note += f", about {duration(stages_left * sum(stage_seconds) / len(stage_seconds))} left"
    return note


def duration(seconds: float) -> str:
    """42s, 4m25s, 1h02m: a length of time as people read it."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def learn(run_dir: str | Path, task_folder: str | Path) -> Report:
    """Extend a run with one more task (a task folder in any layout sapt.data.formats reads):
    a new block, key and reflection data; every task is re-scored and the matrix gets a row and a column.
    The earlier stages are loaded, not redone (their checksums are verified as on any resume).

    An interrupted learn (kill -9, Ctrl-C, a full disk) is resumed by the same command. The task is in
    config.yaml's `extra_tasks` from the start of its stage (the config is what the run resumes from, as
    for any run), so a task there counts as learned only once metrics.json has its stage's row; until
    then it is in progress, and the same `learn` resumes it. A learned task is refused, and so is another
    task while one is in progress: it would train on top of a half-learned one."""
    cfg = load_run_config(run_dir)
    folder = Path(task_folder).resolve()
    if not has_train(folder):
        raise ConfigError(f"{task_folder}: not a task folder (no train.json, train.jsonl, train.csv or train/)")
    unfinished = [f for f in cfg.extra_tasks if not _learned(Path(run_dir), Path(f).name)]
    cfg.output = str(run_dir)
    if str(folder) in unfinished:
        log(f"sapt: {run_dir}: resuming the interrupted learning of {folder}")
        return run(cfg)
    if str(folder) in cfg.extra_tasks:
        raise ConfigError(f"{run_dir} has already learned {task_folder}")
    if unfinished:
        raise ConfigError(f"{run_dir} is still learning {unfinished[0]} (interrupted): finish it first with "
                          f"`sapt learn --run {run_dir} --task {unfinished[0]}`")
    refused = make_method(cfg.method, cfg.method_options).cannot_extend()
    if refused:
        raise ConfigError(refused)
    cfg.extra_tasks = [*cfg.extra_tasks, str(folder)]
    return run(cfg, allow_changes=("extra_tasks",))


def _learned(run_dir: Path, task: str) -> bool:
    """Whether metrics.json has the row of the stage that learned `task` (an unreadable one: not yet)."""
    try:
        metrics = read_metrics_as_written(run_dir)
        return task in metrics["tasks"][: metrics["stages_done"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---- a finished run or its export, for eval / predict (its stages: sapt.export.stage_tensors) -------
def load_trained(run_dir: str | Path, cfg: RunConfig | None = None) -> tuple[RunConfig, SAPTModel, list[str]]:
    """Rebuild the model of a run from its stages (all that are trained), or of an export of a run (the same
    tensors: sapt.export.stage_tensors). Returns config, model, task names."""
    from sapt.export import stage_tensors

    run_dir = Path(run_dir)
    cfg = cfg or load_run_config(run_dir)
    stages = stage_tensors(run_dir)
    model = build_model(cfg)
    method = make_method(cfg.method, cfg.method_options)
    names = []
    for t, (name, block, router) in enumerate(stages):
        method.add_stage(model, t, name)
        model.load_block(method.block_index(t), block)
        model.load_router(method.block_index(t), router)
        names.append(name)
    place(model)
    model.eval()
    return cfg, model, names


# ---- pieces ------------------------------------------------------------------------------------------
def stage_sections(cfg: RunConfig) -> StageSections:
    """The sections of `cfg` one stage's training reads (`sapt.stage_trainer.train_stage`)."""
    return StageSections(optim=cfg.optim, router=cfg.router, decoding=cfg.decoding, arm=cfg.arm,
                         mixed_precision=cfg.mixed_precision)


def recorded_settings(cfg: RunConfig) -> RecordedSettings:
    """The settings of `cfg` that metrics.json records or is computed from (`sapt.evaluation.report.write_metrics`)."""
    return RecordedSettings(model=cfg.model, reflection=cfg.reflection, eval_every=cfg.eval_every,
                            reference=cfg.reference, unseen=tuple(cfg.unseen))


def build_model(cfg: RunConfig) -> SAPTModel:
    loaded = load_model(cfg.model, seed=cfg.seed, dtype=getattr(torch, cfg.backbone_dtype), quantize=cfg.quantize)
    if cfg.backbone_dtype != "float32" and get_dist().device.type == "cpu":
        eager_attention_on_cpu(loaded.model, cfg.max_source_length + cfg.max_target_length)
    torch.manual_seed(cfg.seed)  # the query MLP's initialisation
    router = SharedAttentionRouter(loaded.model.get_input_embeddings().embedding_dim, cfg.query_hidden)
    return SAPTModel(loaded, block_type=build_block_type(cfg.block, cfg.seed), router=router,
                     template=run_template(cfg, loaded.family))


def run_template(cfg: RunConfig, family: str) -> str | None:
    """The prompt template of the run's model (None: its family's; see sapt.data.prompts)."""
    from sapt.data.prompts import template_key

    return None if cfg.template == "family" else template_key(family, cfg.template, cfg.benchmark)


def place(model: SAPTModel) -> None:
    """Onto this process's device and, under an FSDP launch, the backbone's blocks sharded (the task
    blocks -- `model.blocks.keep_whole()` -- and the router stay whole; see sapt.distributed)."""
    dist = get_dist()
    model.to(dist.device)
    summary = dist.shard_backbone(model.base, keep_whole=model.blocks.keep_whole())
    if summary is not None:
        model.sharded = True
        log(f"sapt: {summary}")


def make_replay_inputs(model: SAPTModel, task: Task, t: int, cfg: RunConfig) -> tuple[list[str], dict[str, Any]]:
    """The reflection inputs of a trained task: generated pseudo inputs, or real ones if asked."""
    n = replay_count(len(task.train), cfg.pseudo_ratio, cfg.pseudo_max)
    if cfg.reflection_source == "real":
        inputs = real_replay_inputs(task, n, cfg.seed)
        return inputs, {"source": "real", "wanted": n, "count": len(inputs)}
    from sapt.pseudo import PseudoConfig, generate_pseudo_inputs

    pcfg = PseudoConfig.from_run(cfg.arm, cfg.optim, seed=stage_seed(cfg.seed, t))
    inputs, stats = generate_pseudo_inputs(model, task, pcfg, cfg.max_source_length, cfg.max_target_length)
    return inputs, {"source": "generated", **stats}
