"""Experiment trackers for `--log-with`, through accelerate's tracker classes.

What goes to them, with the run's optimiser step (counted across stages) as the step:
    train/loss, train/kl        every optimiser step (the loss of its last micro-batch, global over processes)
    val/loss                    every epoch
    eval/<task>, eval/ap        after each stage's evaluation (score 0-100 of every task seen so far)
    stage                       the 1-based stage each value belongs to

`jsonl` (the default) is a small accelerate `GeneralTracker` of ours writing RUN_DIR/trackers/metrics.jsonl,
one JSON object per call; `tensorboard` and `wandb` are accelerate's own (they need the `tensorboard` or
`wandb` package; wandb also its login or WANDB_MODE=offline). Their project is the config's `tracker_project`
(--tracker-project), else the run directory's name: the W&B project (with a project given, the W&B run is
named after the run directory) and the TensorBoard folder RUN_DIR/trackers/<project>/.
With a learning-rate schedule (--lr-scheduler) each optimiser step also logs train/lr, the blocks' rate. train_log.jsonl is written whatever the
trackers: resuming relies on it. Only the main process logs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from sapt.config import TRACKERS, ConfigError


class JSONLTracker(GeneralTracker):
    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    @property
    def tracker(self) -> Any:
        return self._file

    def store_init_configuration(self, values: dict) -> None:
        self._write({"config": values})

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self._write({"step": step, **values})

    def _write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def drop_after(self, step: int) -> None:
        """Drop the rows of steps after `step` (and a row cut short by a kill), atomically; the rows without
        a step (each start's config) stay.

        Called where a stage's training starts, with the step it starts from: what a killed process logged
        after its last checkpoint is logged again by the resumed one, and without this metrics.jsonl held
        those steps twice. Dropped, not skipped when logged again: the resumed process's values are those
        of the parameters the run keeps (the killed one's were discarded with it; on a GPU the two can
        differ in the last bits), and a stage redone because its files were damaged logs its steps anew
        over the old ones. The file is closed, rewritten by an atomic rename (`sapt.io`), and opened again:
        an append handle still on the old file would write into the unlinked copy."""
        kept, dropped = [], False
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                row = json.loads(line) if line.endswith("\n") else None
            except ValueError:
                row = None
            if not isinstance(row, dict) or (isinstance(row.get("step"), int) and row["step"] > step):
                dropped = True
            else:
                kept.append(line)
        if not dropped:
            return
        from sapt import io  # here: sapt.io imports torch, and `check_trackers` is used by light commands

        self._file.close()
        io.atomic_write_text(self.path, "".join(kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def finish(self) -> None:
        self._file.close()


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # the trackers that need one


def check_trackers(names: list[str]) -> None:
    """Refuse, before anything is written, a tracker that is unknown or whose package is missing."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r} (available: {', '.join(TRACKERS)})")
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"--log-with {name} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]}")


def _make(name: str, run_name: str, logging_dir: Path, project: str | None = None) -> GeneralTracker:
    """Tracker `name`; `project` (--tracker-project) replaces `run_name` as the W&B project and the TensorBoard
    folder, and the W&B run is then named `run_name`. accelerate's trackers name both after their run_name."""
    check_trackers([name])
    if name == "jsonl":
        return JSONLTracker(run_name, logging_dir)
    if name == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        return TensorBoardTracker(project or run_name, logging_dir)
    from accelerate.tracking import WandBTracker

    if project is None:
        return WandBTracker(run_name, dir=str(logging_dir))
    return WandBTracker(project, dir=str(logging_dir), name=run_name)


class Trackers:
    """The run's trackers, started on the main process; on the others every call does nothing. `config` is the
    run's (`sapt.config.to_dict`): stored by each tracker, and its `tracker_project` names their project."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], active: bool = True):
        self.trackers: list[GeneralTracker] = []
        if not active:
            return
        logging_dir = run_dir / "trackers"
        for name in dict.fromkeys(names):  # in order, once each
            tracker = _make(name, run_dir.name or "run", logging_dir, config.get("tracker_project"))
            tracker.start()
            # trackers take flat scalars as hyper-parameters
            tracker.store_init_configuration({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                                              for k, v in config.items()})
            self.trackers.append(tracker)

    def log(self, values: dict[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def drop_after(self, step: int) -> None:
        """Forget the logged steps after `step`, where the trackers' files allow it (`JSONLTracker.drop_after`);
        TensorBoard and W&B show a restarted job's steps again, as they do for any job resumed."""
        for tracker in self.trackers:
            if isinstance(tracker, JSONLTracker):
                tracker.drop_after(step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
