"""The run directory: what lies where in it, and the only code that reads or writes its files.

    RUN_DIR/
    ├── .lock                      held by the one process that writes the run (lock)
    ├── config.yaml                the resolved config (resuming refuses a different one)
    ├── manifest.json              the phases of each stage that are done, with sha256 of their files
    ├── train_log.jsonl            one line per optimiser step: stage, task, epoch, step, loss
    ├── run.log                    the progress lines the commands that ran it printed, with their time
    ├── metrics.json               tasks, matrix, AP, F.Ra, FWT, BWT, routing accuracy, eval split
    ├── timing.json                seconds of training, reflection and evaluation so far, and their total
    ├── tasks.json                 each task's definition, in training order (what `predict` should be given)
    ├── oracle_routing.json        `sapt eval --routing oracle`: each task scored by its own block alone
    ├── eval/                      `sapt eval`: its scores and predictions after the last stage
    ├── unseen_base/               --unseen only: scores.json and predictions/<task>.jsonl of the base model
    └── stages/
        └── NN_<task>/             stage NN (0-based, two digits) learned <task>
            ├── checkpoint.pt      while the stage trains: its state after the last finished epoch
            ├── adapter.safetensors, router.safetensors, memory.jsonl, stage.json   phase "trained"
            ├── replay.jsonl, replay_stats.json                                    phase "replay"
            └── scores.json, predictions/<task>.jsonl                              phase "evaluated"
                (with --unseen: unseen_scores.json, unseen/<task>.jsonl)

Why it is built this way. Every file is written atomically (`sapt.io`: a temporary file renamed into
place), so a killed process leaves the old file or the new one, never half of one. A phase of a stage
counts as done only once manifest.json records it, after its files, with the sha256 of each
(`sapt.rundir.manifest`): a resumed run loads exactly what the manifest vouches for and redoes the rest, and
`eval`, `predict` and `export` refuse a damaged stage instead of using it. The stage folder name
`NN_<task>` is built and parsed here only (`stage_name`, `stage_dir`, `stage_task`, and `stage_order`, which
sorts by the number: from stage 100 on the names are longer, and sorted as strings "100_x" would precede
"10_x").

One owner. Every file above is named, read and written in this package and nowhere else
(tests/test_run_files_owner.py fails otherwise): the rest of sapt asks for what a file holds
(`results.read_metrics`, `stage_files.load_stage`) or hands over what to write (`results.write_metrics_file`,
`stage_files.save_trained_stage`), so a file's name, its checks and the order of a phase's files live in one
place. The one exception is a method's own stage files (replay's memory.jsonl): the method writes them into
the stage folder it is given (`Method.stage_files`), and they are recorded and checksummed here with the
trained phase. A run directory that cannot be used (locked, damaged, not a run) is a `RunDirError`
(sapt.errors).

    layout       file names, PHASE_FILES, stage folder naming and listing; the run log
    plan, lock   choosing and locking the directory of a run (plan_run_dir, lock_run_dir; RunLock)
    manifest     manifest.json: the phases done, with the checksums of their files
    verify       making the stages on disk agree with the manifest (verify_stages); trained_stages
    stage_files  a stage's block, router, stage.json, reflection inputs and checkpoint; the training log
    recovery     the checkpoint's framing and checksum, the log trimmed on resume, the kill-point test hook
    results      scores.json and predictions per stage, metrics.json, timing.json, what `sapt eval` writes
    read         a run's config.yaml and tasks.json, and what its stage files record (scores, timing, replay)
    source       what a model is loaded from: a run's stage files (run_stage_tensors), or an export (is_export),
                 and the run files an export carries (write_export_copies)

An export (`sapt export`, sapt.export) is the other folder a trained model is loaded from: config.yaml and
tasks.json as here, the blocks as PEFT adapters and the router, marked by EXPORT_MARKER (sapt_export.json).
"""
from __future__ import annotations

from sapt.rundir.layout import (
    CONFIG, EXPORT_MARKER, METRICS, ORACLE_ROUTING, PHASE_FILES, STAGES, TASKS, TIMING, TRAIN_LOG, UNSEEN_BASE, UNSEEN_PREDICTIONS,
    UNSEEN_SCORES,
    stage_dir, stage_folders, stage_name, stage_order, stage_task,
)
from sapt.rundir.plan import CHANGEABLE_KEYS, check_run_dir, lock_run_dir, plan_run_dir
from sapt.rundir.read import (
    absolute_data_dir, collect_matrices, collect_unseen, has_run_config, load_run_config, replay_stats, run_timing, saved_config_values,
    task_definitions, write_run_config, write_task_definitions,
)
from sapt.rundir.source import is_export, run_stage_tensors
from sapt.rundir.verify import trained_stages, verify_stages

__all__ = [
    "absolute_data_dir", "CHANGEABLE_KEYS", "CONFIG", "EXPORT_MARKER", "METRICS", "PHASE_FILES", "STAGES", "TASKS", "TIMING", "TRAIN_LOG",
    "UNSEEN_BASE", "UNSEEN_PREDICTIONS", "UNSEEN_SCORES", "check_run_dir", "collect_matrices", "collect_unseen", "is_export", "load_run_config", "lock_run_dir", "plan_run_dir", "replay_stats",
    "has_run_config", "run_timing", "saved_config_values", "write_run_config", "stage_dir", "stage_folders", "stage_name", "stage_order", "stage_task", "run_stage_tensors", "task_definitions",
    "trained_stages", "verify_stages", "write_task_definitions",
]
