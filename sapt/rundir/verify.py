"""The stages on disk against manifest.json: what a resumed run may trust (`verify_stages`, which also
deletes what it may not), and the trained stages a finished run offers to eval / predict / export
(`trained_stages`, which refuses a damaged one)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sapt.errors import RunDirError
from sapt.rundir.manifest import PHASES, Manifest
from sapt.rundir.recovery import CHECKPOINT
from sapt.rundir.layout import PHASE_FILES, STAGES, log, stage_dir, stage_folders, stage_name, stage_order, stage_task

if TYPE_CHECKING:
    from sapt.data import Task

__all__ = ["trained_stages", "verify_stages"]


def verify_stages(run_dir: Path, tasks: list[Task], manifest: Manifest, reflection: bool) -> set[tuple[int, str]]:
    """Check the stages against the manifest and make the directory agree with it. Returns the
    (stage, phase) pairs that are done and intact. Stage phases run in the order trained, replay,
    evaluated, stage after stage; the first trained or replay phase that is not done and intact ends
    what is trusted: its files, those of its later phases and every later stage are deleted (a
    checkpoint survives only when the stage's training was simply not finished). An evaluation that is
    damaged is deleted and redone on its own: nothing depends on it."""
    said = True  # whether a line already says that every stage is redone
    if manifest.damaged:
        log(f"sapt: {manifest.path} cannot be read: no stage on disk is trusted, every stage is redone")
        manifest.reset()
    elif not manifest.exists and _finished_phase_files(run_dir / STAGES):
        log(f"sapt: {run_dir} has stage files but no manifest.json (an older sapt, or it was lost): "
            "they are not trusted, every stage is redone (a checkpoint of unfinished training is still used)")
    else:
        said = False
    for sdir in stage_folders(run_dir):
        if (sdir / CHECKPOINT).exists() and not (sdir / CHECKPOINT).is_file():
            raise RunDirError(f"{sdir / CHECKPOINT} is not a file (a sapt checkpoint is); move it away and run "
                              "the same command again")
    chain = ("trained", "replay") if reflection else ("trained",)
    done: set[tuple[int, str]] = set()
    for t, task in enumerate(tasks):
        sdir = stage_dir(run_dir, t, task.name)
        for phase in chain:
            problems = manifest.problems(sdir, phase)
            if problems == []:
                done.add((t, phase))
                continue
            n = len(tasks)
            later = "" if t + 1 >= n else f"; stage {n} is redone too" if t + 2 == n else \
                f"; stages {t + 2}-{n} are redone too"
            if problems:
                log(f"sapt: stage {t + 1} ({task.name}): {', '.join(problems)}; its files are not trusted: "
                    f"the stage is redone from its {phase} phase{later}")
            elif not said and _unrecorded_work(run_dir, sdir, phase):
                # Not recorded, yet its files (or later stages) are on disk: a kill before the manifest
                # recorded them, or a manifest.json restored from an older copy. Deleting them in silence
                # made `sapt learn` retrain a stage without a word; the user should see what is redone.
                log(f"sapt: stage {t + 1} ({task.name}): manifest.json does not record its {phase} phase, so "
                    f"its files on disk are not trusted: the stage is redone from its {phase} phase (from its "
                    f"checkpoint, if it has one){later}")
            _discard(manifest, sdir, PHASES[PHASES.index(phase):], keep_checkpoint=problems is None)
            for later_t in range(t + 1, len(tasks)):
                _discard(manifest, stage_dir(run_dir, later_t, tasks[later_t].name), PHASES, keep_checkpoint=False)
            return done
        problems = manifest.problems(sdir, "evaluated")
        if problems == []:
            done.add((t, "evaluated"))
        else:
            if problems:
                log(f"sapt: stage {t + 1} ({task.name}): {', '.join(problems)}; its evaluation is redone")
            _discard(manifest, sdir, ("evaluated",), keep_checkpoint=True)
    return done


def _finished_phase_files(stages: Path) -> bool:
    """Whether any stage folder holds a file a finished phase writes (a checkpoint alone is training
    that was interrupted before its first phase was recorded, e.g. a kill during stage 1)."""
    names = {name for files in PHASE_FILES.values() for name in files}
    return stages.is_dir() and any(sdir.is_dir() and any(p.name in names for p in sdir.iterdir())
                                   for sdir in stages.iterdir())


def _unrecorded_work(run_dir: Path, sdir: Path, phase: str) -> bool:
    """Whether the stage in `sdir` holds a file of `phase`, or a later stage's folder exists: work that a
    phase the manifest does not record is about to delete (a checkpoint alone is not: training that was
    interrupted resumes from it, and says so)."""
    if any((sdir / name).exists() for name in PHASE_FILES[phase]):
        return True
    return any(stage_order(d.name) > stage_order(sdir.name) for d in stage_folders(run_dir))


def _discard(manifest: Manifest, sdir: Path, phases: tuple[str, ...], keep_checkpoint: bool) -> None:
    """Forget `phases` of a stage in the manifest, then delete their files (and the checkpoint unless kept)."""
    manifest.forget(sdir.name, phases)
    if not sdir.exists():
        return
    if set(phases) == set(PHASES) and not keep_checkpoint:
        shutil.rmtree(sdir)
        return
    for phase in phases:
        for name in PHASE_FILES[phase]:
            path = sdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if not keep_checkpoint:
        (sdir / CHECKPOINT).unlink(missing_ok=True)


def trained_stages(run_dir: str | Path) -> list[tuple[str, Path]]:
    """(task, stage directory) of every trained stage of a run, in order, each verified against the
    manifest's checksums (a damaged file is refused, never loaded or exported). A run written before
    manifests existed has none: its stage.json files are taken as they are."""
    run_dir = Path(run_dir)
    manifest = Manifest(run_dir)
    if manifest.damaged:  # nothing on disk can be verified; `sapt run` would redo every stage
        raise RunDirError(f"{manifest.path} cannot be read, so no stage can be verified; run the same `sapt run` "
                          "command again to redo the run")
    if manifest.exists:  # only the stages the manifest vouches for
        dirs = []
        for name in sorted((k for k, v in manifest.data["stages"].items() if "trained" in v), key=stage_order):
            problems = manifest.problems(run_dir / STAGES / name, "trained")
            if problems:
                raise RunDirError(f"{run_dir}: stage {name}: {', '.join(problems)}; run the same `sapt run` "
                                  "command again to redo it")
            dirs.append(run_dir / STAGES / name)
    else:
        dirs = [p.parent for p in sorted((run_dir / STAGES).glob("*/stage.json"), key=lambda p: stage_order(p.parent.name))]
    if not dirs:
        raise RunDirError(f"{run_dir}: no trained stage yet")
    out = []
    for t, sdir in enumerate(dirs):
        name = stage_task(sdir.name)
        if sdir.name != stage_name(t, name):
            raise RunDirError(f"{run_dir}: stage {t} is missing (found {sdir.name})")
        out.append((name, sdir))
    return out
