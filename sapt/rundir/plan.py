"""Choosing the directory of a run and locking it. Nothing here deletes a run: a directory that holds
something else than a run of this config is refused, or (--force-new) left alone for OUTPUT-2, -3, ..."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sapt.config import CHANGEABLE_KEYS, ConfigError, RunConfig, differences
from sapt.errors import RunDirError
from sapt.rundir.lock import LOCK_NAME, RunLock
from sapt.rundir.layout import CONFIG, EXPORT_MARKER, log
from sapt.rundir.read import saved_config_values

__all__ = ["CHANGEABLE_KEYS", "check_run_dir", "drop_if_bare", "lock_run_dir", "plan_run_dir"]

# CHANGEABLE_KEYS: the keys that may differ from the saved config when a run is resumed with
# --allow-config-change (to get past a non-finite loss), from the fields' resume policy in sapt.config.


def _dir_status(run_dir: Path, cfg: RunConfig, allow: set[str]) -> tuple[str | None, dict[str, list]]:
    """(None, allowed changes {key: [saved, new]}) if `run_dir` can take this run: absent, empty, or a run
    of this config up to the keys in `allow`; else (why not, {})."""
    if (run_dir / EXPORT_MARKER).is_file():  # it has a config.yaml too, but no stages to resume from
        return f"{run_dir} holds a sapt export, not a run", {}
    if (run_dir / CONFIG).exists():
        saved = saved_config_values(run_dir)
        if saved is None:
            return f"{run_dir} has an unreadable config.yaml", {}
        diff = differences(saved, cfg)
        refused = [k for k in diff if k not in allow]
        if refused:
            return f"{run_dir} holds a run with a different config ({', '.join(refused)})", {}
        return None, {k: [saved.get(k), getattr(cfg, k)] for k in diff}
    if run_dir.exists() and (not run_dir.is_dir() or any(p.name != LOCK_NAME for p in run_dir.iterdir())):
        return f"{run_dir} exists and is not a sapt run directory", {}
    return None, {}


def plan_run_dir(cfg: RunConfig, force_new: bool = False, allow_changes: Any = ()) -> tuple[Path, dict[str, list]]:
    """The run directory to use and the allowed config changes to record. Writes nothing.

    `cfg.output` if it is new, empty, or holds a run of this config (up to `allow_changes`, a subset of
    CHANGEABLE_KEYS); otherwise refused, unless `force_new`: then the first of OUTPUT-2, OUTPUT-3, ...
    that is new or holds this same run (so that the same command resumes it). Nothing is ever deleted."""
    allow = set(allow_changes or ())
    if allow - set(CHANGEABLE_KEYS) - {"extra_tasks"}:  # extra_tasks: only through `learn`
        raise ConfigError(f"--allow-config-change accepts only {', '.join(CHANGEABLE_KEYS)} "
                          f"(got {', '.join(sorted(allow - set(CHANGEABLE_KEYS)))})")
    run_dir = Path(cfg.output)
    why, changes = _dir_status(run_dir, cfg, allow)
    if why is None:
        return run_dir, changes
    if not force_new:
        hint = ""
        saved = saved_config_values(run_dir)
        if saved is not None and set(differences(saved, cfg)) <= set(CHANGEABLE_KEYS):
            hint = (f"; to resume it with the new learning rate (e.g. after a non-finite loss), add "
                    f"--allow-config-change {','.join(differences(saved, cfg))}")
        raise RunDirError(f"{why}; use another --output, or --force-new to start a fresh directory next to it{hint}")
    base = run_dir if run_dir.name else run_dir.resolve()  # "." has no name to add -2 to
    k = 2
    while True:
        candidate = base.with_name(f"{base.name}-{k}")
        status, changes = _dir_status(candidate, cfg, allow)
        if status is None:
            what = "resuming the run in" if (candidate / CONFIG).exists() else "starting a fresh run in"
            log(f"sapt: {why}; --force-new: {what} {candidate} (the old directory is left as it is)")
            return candidate, changes
        k += 1


def check_run_dir(cfg: RunConfig) -> Path:
    """Refuse an output directory that holds something else than a run of this config. Writes nothing."""
    return plan_run_dir(cfg)[0]


def lock_run_dir(cfg: RunConfig, force_new: bool, allow_changes: Any) -> tuple[RunLock, Path, dict[str, list], bool]:
    """Lock the run directory `plan_run_dir` chooses, and plan again under the lock (what was checked
    is then what is used). Returns the held lock, the directory, the allowed config changes and whether
    taking the lock created the directory."""
    run_dir, _ = plan_run_dir(cfg, force_new, allow_changes)  # refuses before anything is created
    while True:
        existed = run_dir.exists()
        lock = RunLock(run_dir).acquire()
        try:
            again, changes = plan_run_dir(dataclasses.replace(cfg, output=str(run_dir)), False, allow_changes) \
                if not force_new else plan_run_dir(cfg, True, allow_changes)
        except BaseException:
            lock.release()
            if not existed:
                drop_if_bare(run_dir)
            raise
        if again == run_dir:
            return lock, run_dir, changes, not existed
        lock.release()  # under --force-new another run took this directory meanwhile: lock the next one
        if not existed:
            drop_if_bare(run_dir)
        run_dir = again


def drop_if_bare(run_dir: Path) -> None:
    """Remove `run_dir` if it holds nothing but the lock file (made by taking the lock for a run that
    then wrote nothing)."""
    try:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass
