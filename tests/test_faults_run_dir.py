"""The fault probe of issue 27, the run directory's groups: `sapt learn` interrupted at each point and
resumed by its own command; the lock and the run directory tampered with (a symlinked .lock, the
directory deleted, moved or made anew by another run while a run writes it); a run of more than 100
stages; Ctrl-C before the command's modules are imported. The API-type cases are in tests/test_api.py.

Each table row is one case, run through `sapt.cli.main` as a user would (a kill runs in a subprocess that
sends itself the signal, `SAPT_TEST_KILL_AT`), with the helpers of tests/test_faults.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import signal
import sys
from pathlib import Path

import pytest
import yaml
from test_faults import TINY, one_line_error, snapshot

from sapt import io
from sapt.cli import INTERRUPTED, main
from sapt.rundir.recovery import KILL_ENV, KILL_SIGNAL_ENV

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["--tasks", "topic,sentiment"]


def sapt_subprocess(*argv: str, env_extra: dict[str, str] | None = None, code: str | None = None):
    """`sapt ARGV` in a fresh Python (one thread), or the Python `code` with ARGV as sys.argv[1:]."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop(KILL_ENV, None)
    env.pop(KILL_SIGNAL_ENV, None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "sapt.cli", *argv]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=_ctrl_c_as_at_a_terminal)


def _ctrl_c_as_at_a_terminal() -> None:
    """The child starts with SIGINT's default action, whatever pytest inherited. A suite started in the
    background by a shell script (`make test &`) has SIGINT ignored, the child inherits that, Python then
    installs no KeyboardInterrupt handler, and the Ctrl-C kill point went unnoticed: the run finished, rc 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_task(root: Path, name: str = "capitals") -> Path:
    folder = root / "MyBench" / name
    folder.mkdir(parents=True)
    countries = ["France", "Spain", "Italy", "Japan", "Peru", "Chad", "Togo", "Iran", "Laos", "Fiji", "Cuba", "Oman"]
    (folder / "train.json").write_text(json.dumps({"Definition": ["Write the country name backwards."],
                                                   "Instances": [{"input": f"Country: {c}", "output": c[::-1]}
                                                                 for c in countries]}))
    return folder


# ---- learn, interrupted at each point, resumed by the same command ---------------------------------------
@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory) -> tuple[Path, Path, bytes]:
    """A finished two-task run, a third task's folder, and the metrics.json an uninterrupted learn of it gives."""
    root = tmp_path_factory.mktemp("learn")
    run = root / "run"
    assert main(["run", *TINY, *TASKS, "--output", str(run)]) == 0
    task = write_task(root)
    learned = root / "learned"
    shutil.copytree(run, learned)
    assert main(["learn", "--run", str(learned), "--task", str(task)]) == 0
    return run, task, (learned / "metrics.json").read_bytes()


# (where the learn is stopped, by which signal, the exit code the user sees). The new task is stage 2.
LEARN_KILLS = [
    ("stage2:epoch1:mid", "SIGKILL", -9),  # after its first step, before any checkpoint: the stage starts again
    ("stage2:epoch1", "SIGKILL", -9),  # after its epoch's checkpoint: training resumes from it
    ("stage2:router-fit", "SIGKILL", -9),  # halfway through the router fit (learn-then-route, the default)
    ("stage2:between-files", "SIGKILL", -9),
    ("stage2:trained", "SIGKILL", -9),  # its files are written, the manifest does not record them yet
    ("stage2:replay", "SIGKILL", -9),
    ("stage2:eval", "SIGINT", 130),  # Ctrl-C: "run the same command again to resume" must be true
    ("stage2:metrics", "SIGKILL", -9),  # the stage is recorded done, metrics.json has not its row yet
]


@pytest.mark.parametrize("point, sig, code", LEARN_KILLS, ids=[f"{p} {s}" for p, s, _ in LEARN_KILLS])
def test_an_interrupted_learn_is_resumed_by_the_same_command(point, sig, code, two_tasks, tmp_path, capsys):
    """Before, `learn` wrote extra_tasks into config.yaml before the stage trained, and the same command
    then said "RUN has already learned T": the run could not be finished."""
    run, task, uninterrupted = two_tasks
    r = tmp_path / "run"
    shutil.copytree(run, r)
    killed = sapt_subprocess("learn", "--run", str(r), "--task", str(task),
                             env_extra={KILL_ENV: point, KILL_SIGNAL_ENV: sig})
    assert killed.returncode == code, killed.stderr[-2000:]
    if sig == "SIGINT":
        assert killed.stderr.splitlines()[-1] == INTERRUPTED and "Traceback" not in killed.stderr
    assert main(["learn", "--run", str(r), "--task", str(task)]) == 0
    assert (r / "metrics.json").read_bytes() == uninterrupted  # as if never interrupted
    capsys.readouterr()
    one_line_error(capsys, main(["learn", "--run", str(r), "--task", str(task)]), "already learned")


def test_a_learn_stopped_by_a_full_disk_resumes_and_another_task_waits_for_it(two_tasks, monkeypatch, capsys,
                                                                              tmp_path):
    run, task, uninterrupted = two_tasks
    r = tmp_path / "run"
    shutil.copytree(run, r)
    real_mkstemp = io.tempfile.mkstemp

    def full_in_the_new_stage(*args, dir, **kwargs):  # config.yaml already names the new task
        if "02_capitals" in str(dir):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkstemp", full_in_the_new_stage)
    one_line_error(capsys, main(["learn", "--run", str(r), "--task", str(task)]), "no space left")
    assert str(task) in yaml.safe_load((r / "config.yaml").read_text())["extra_tasks"]
    monkeypatch.setattr(io.tempfile, "mkstemp", real_mkstemp)
    other = write_task(tmp_path, "other")
    before = snapshot(r)
    line = one_line_error(capsys, main(["learn", "--run", str(r), "--task", str(other)]), "still learning")
    assert f"--task {task}" in line  # the command that finishes it
    assert snapshot(r) == before
    assert main(["learn", "--run", str(r), "--task", str(task)]) == 0
    assert (r / "metrics.json").read_bytes() == uninterrupted


# ---- the lock and the run directory, tampered with -------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tamper") / "run"
    assert main(["run", *TINY, *TASKS, "--output", str(out)]) == 0
    return out


def _symlink_to_file(r: Path, tmp: Path) -> Path:
    (tmp / "victim.txt").write_text("data\n")
    (r / ".lock").unlink()
    (r / ".lock").symlink_to(tmp / "victim.txt")
    return tmp / "victim.txt"


def _dangling_symlink(r: Path, tmp: Path) -> Path:
    (r / ".lock").unlink()
    (r / ".lock").symlink_to(tmp / "made-by-following.txt")
    return tmp / "made-by-following.txt"


SYMLINKED_LOCKS = {"to a file": _symlink_to_file, "dangling": _dangling_symlink}


@pytest.mark.parametrize("case", SYMLINKED_LOCKS)
@pytest.mark.parametrize("command", ["run", "learn"])
def test_a_symlinked_lock_is_refused_and_its_target_untouched(case, command, finished, tmp_path, capsys):
    """A run directory copied with `cp -rs` (or checked out by DVC, git-annex) has a .lock that links
    elsewhere; following it wrote the pid over the target."""
    r = tmp_path / "run"
    shutil.copytree(finished, r)
    target = SYMLINKED_LOCKS[case](r, tmp_path)
    before = target.read_bytes() if target.exists() else None
    argv = (["run", *TINY, *TASKS, "--output", str(r)] if command == "run"
            else ["learn", "--run", str(r), "--task", str(write_task(tmp_path))])
    snap = snapshot(r)
    one_line_error(capsys, main(argv), "symbolic link")
    assert (target.read_bytes() if target.exists() else None) == before
    assert (r / ".lock").is_symlink() and snapshot(r) == snap


def _delete(r: Path) -> None:
    shutil.rmtree(r)


def _move(r: Path) -> None:
    r.rename(r.with_name("moved"))


def _delete_then_another_run(r: Path) -> None:
    """Issue 27, case 6: another run of another task order takes the path meanwhile (our lock is on the
    deleted file, so it gets a lock of its own) and finishes there."""
    shutil.rmtree(r)
    assert main(["run", *TINY, "--tasks", "sentiment,topic", "--output", str(r)]) == 0


MID_RUN = {"deleted": (_delete, "is gone"), "moved": (_move, "is gone"),
           "deleted, then made anew by another run": (_delete_then_another_run, "was replaced")}


@pytest.mark.parametrize("case", MID_RUN)
def test_a_run_directory_that_vanishes_mid_run_is_not_made_again(case, monkeypatch, tmp_path, capsys):
    """Before, every atomic write made its parents: the directory came back half-way (no config.yaml), the
    run exited 0, and a second run that had made it anew got the first one's files mixed into its own.
    The directory goes while stage 2 of 2 trains (its first optimiser step done, its log open)."""
    from sapt import stage_trainer

    r = tmp_path / "run"
    tamper, needle = MID_RUN[case]
    real_kill_point, done = stage_trainer.kill_point, []

    def kill_point(name, *flush):
        if name == "stage1:epoch1:mid" and not done:
            done.append(name)  # once: the other run passes here too
            tamper(r)
        real_kill_point(name, *flush)

    monkeypatch.setattr(stage_trainer, "kill_point", kill_point)
    line = one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(r)]), needle)
    assert str(r) in line and done
    if case == "moved":  # the moved run is whole up to its last checkpoint: `--output moved` resumes it
        moved = r.with_name("moved")
        assert yaml.safe_load((moved / "config.yaml").read_text())["tasks"] == ["topic", "sentiment"]
        assert [p.name for p in (moved / "stages").iterdir()] == ["00_topic"]
        assert main(["run", *TINY, *TASKS, "--output", str(moved)]) == 0
        assert json.loads((moved / "metrics.json").read_text())["stages_done"] == 2
    if case.startswith("deleted, then"):  # the other run's directory, and nothing of ours in it
        assert yaml.safe_load((r / "config.yaml").read_text())["tasks"] == ["sentiment", "topic"]
        assert json.loads((r / "metrics.json").read_text())["tasks"] == ["sentiment", "topic"]
        assert sorted(p.name for p in (r / "stages").iterdir()) == ["00_sentiment", "01_topic"]
        logged = {(rec["stage"], rec["task"]) for rec in map(json.loads, (r / "train_log.jsonl").read_text().splitlines())}
        assert logged == {(0, "sentiment"), (1, "topic")}
        assert not list(r.rglob("checkpoint.pt"))
    else:
        assert not r.exists()  # not made again half-way


# ---- more than 100 stages ----------------------------------------------------------------------------------
def test_a_run_of_101_stages_is_usable_by_every_command(tmp_path, capsys):
    """Stage folders sorted as strings put 100_x before 10_x: a 101-task run trained and exited 0, then
    predict, export, eval and sapt.load refused it ("stage 10 is missing").

    A real 101-task tiny run takes 1.5 minutes (the evaluation matrix is 101 x 102 / 2 task scorings), so
    this one trains two stages and makes the other 99 from the second one's files, recorded in the
    manifest as a run records them; what is checked, the reading of a run directory, is the same."""
    import sapt
    from sapt.rundir.manifest import Manifest
    from sapt.rundir import stage_folders

    data = tmp_path / "data" / "Many"
    for i in range(101):
        (data / f"t{i}").mkdir(parents=True)
        (data / f"t{i}" / "train.jsonl").write_text("".join(json.dumps({"input": f"q{i} {j}", "output": f"a{j % 2}"})
                                                            + "\n" for j in range(6)))
    r = tmp_path / "run"
    common = ["--model", "tiny-llama", "--data-dir", str(tmp_path / "data"), "--benchmark", "Many", "--epochs", "1",
              "--max-train-per-task", "2", "--max-eval-per-task", "1", "--val-size", "1", "--max-new-tokens", "1",
              "--reflection-source", "real", "--output", str(r)]
    assert main(["run", *common, "--tasks", "t0,t1"]) == 0
    names = [f"t{i}" for i in range(101)]
    manifest = Manifest(r)
    second = r / "stages" / "01_t1"
    for t in range(2, 101):
        sdir = r / "stages" / f"{t:02d}_t{t}"
        sdir.mkdir()
        for name in ("adapter.safetensors", "router.safetensors", "stage.json"):
            shutil.copy(second / name, sdir / name)
        manifest.record(sdir, "trained", ["adapter.safetensors", "router.safetensors", "stage.json"])
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    (r / "config.yaml").write_text(yaml.safe_dump({**cfg, "tasks": names}, sort_keys=False))
    assert sorted(p.name for p in (r / "stages").iterdir())[10] == "100_t100"  # the case: as strings, out of order
    assert [p.name for p in stage_folders(r)] == [f"{t:02d}_t{t}" for t in range(101)]

    assert sapt.load(r).tasks == names
    capsys.readouterr()
    assert main(["predict", "--run", str(r), "--json", "q5 1"]) == 0
    assert list(json.loads(capsys.readouterr().out)["routing"]) == names
    assert main(["export", "--run", str(r), "--out", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "router.json").read_text())["tasks"] == names
    assert main(["eval", "--run", str(r)]) == 0
    assert list(json.loads((r / "eval" / "scores.json").read_text())["scores"]) == names


# ---- Ctrl-C before the command's modules are imported ----------------------------------------------------------
CTRL_C_AT_IMPORT = """
import builtins, sys
real_import = builtins.__import__

def interrupted_import(name, *args, **kwargs):  # Ctrl-C while torch is being imported
    if name == "torch" or name.startswith("torch."):
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)

builtins.__import__ = interrupted_import
from sapt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["run", *TINY, *TASKS, "--output", "OUT"], ["eval", "--run", "OUT"],
                                  ["predict", "--run", "OUT", "hi"]], ids=["run", "eval", "predict"])
def test_ctrl_c_in_the_first_second_is_one_line_and_exit_130(argv, tmp_path):
    """torch was imported before the command's `try:`, so a Ctrl-C then printed a 40-line traceback."""
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    p = sapt_subprocess(*argv, code=CTRL_C_AT_IMPORT)
    assert p.returncode == 130, p.stderr[-2000:]
    assert p.stderr.splitlines() == [INTERRUPTED]
    assert not (tmp_path / "out").exists()


# ---- issue 27's minor cases of the run directory --------------------------------------------------------------
def write_bench(root: Path, sizes: dict[str, int]) -> Path:
    """A data folder root/B/<task>/train.jsonl, `sizes[task]` examples each; returns root."""
    for name, n in sizes.items():
        (root / "B" / name).mkdir(parents=True)
        (root / "B" / name / "train.jsonl").write_text("".join(
            json.dumps({"input": f"{name} question {i}", "output": f"{name}{i % 2}"}) + "\n" for i in range(n)))
    return root


def on_bench(root: Path, tasks: str = "a,b") -> list[str]:
    return ["--data-dir", str(root), "--benchmark", "B", "--tasks", tasks]


@pytest.mark.parametrize("how", ["cli", "api"])
def test_a_relative_data_dir_is_stored_absolute_and_an_older_relative_one_still_works(how, tmp_path, monkeypatch,
                                                                                    capsys):
    """config.yaml kept `data_dir: data` as typed, so `sapt eval --run RUN` from another folder read another
    folder's data (or none). A new run stores it absolute; an older run's relative one is read against the
    current directory, as before, with one warning."""
    import sapt

    write_bench(tmp_path / "data", {"a": 12, "b": 12})
    monkeypatch.chdir(tmp_path)
    if how == "cli":
        assert main(["run", *TINY, *on_bench(Path("data")), "--output", "run"]) == 0
    else:
        sapt.run(model="tiny-llama", max_train_per_task=8, max_eval_per_task=4, epochs=1, max_new_tokens=3,
                 reflection_source="real", data_dir="data", benchmark="B", tasks=["a", "b"], output="run")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data_dir"] == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()  # no `data` here: a relative data_dir was "data: not found" from here
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "run")]) == 0
    assert list(json.loads((tmp_path / "run" / "eval" / "scores.json").read_text())["scores"]) == ["a", "b"]
    assert "warning" not in capsys.readouterr().err
    # an older run: data_dir relative in config.yaml, read against the current directory with one warning
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({**cfg, "data_dir": "data"}, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    from sapt.rundir import read
    monkeypatch.setattr(read, "_WARNED_RELATIVE", set())
    assert main(["eval", "--run", "run"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "is relative" in line]
    assert len(warned) == 1 and str(tmp_path / "data") in warned[0], err


def _edit_outputs(root: Path, task: str) -> None:
    path = root / "B" / task / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "output": r["output"] + " edited"}) + "\n" for r in rows))


# (the stage stopped by a kill, or None: a finished run; the task whose data is edited; the record it is checked against)
DATA_EDITS = [(None, "a", "stage.json"), ("stage1:epoch1", "b", "checkpoint.pt")]


@pytest.mark.parametrize("kill, task, record", DATA_EDITS, ids=[f"{k or 'finished'}: {t}" for k, t, _ in DATA_EDITS])
def test_task_data_edited_before_a_resume_is_refused_and_the_run_left_as_it_is(kill, task, record, tmp_path, capsys):
    """Each stage wrote val_sha256, yet a resume trained on edited data in silence: the finished stages'
    blocks were trained on the old data, the rest on the new."""
    data = write_bench(tmp_path / "data", {"a": 12, "b": 12})
    r = tmp_path / "run"
    argv = ["run", *TINY, "--epochs", "2", *on_bench(data), "--output", str(r)]
    if kill is None:
        assert main(argv) == 0
    else:
        killed = sapt_subprocess(*argv, env_extra={KILL_ENV: kill})
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert (r / "stages" / "01_b" / "checkpoint.pt").is_file()
    _edit_outputs(data, task)
    before = snapshot(r)
    capsys.readouterr()
    line = one_line_error(capsys, main(argv), f"the data of task '{task}' changed")
    assert str(data / "B" / task / "train.jsonl") in line and record in line and "--output" in line
    assert snapshot(r) == before


def test_learn_says_which_stage_it_retrains_when_the_manifest_does_not_record_it(two_tasks, tmp_path, capsys):
    """A manifest.json restored from an older copy lacks stage 2: its files were deleted and it was retrained
    by `sapt learn` without a word."""
    run, task, _ = two_tasks
    r = tmp_path / "run"
    shutil.copytree(run, r)
    manifest = json.loads((r / "manifest.json").read_text())
    del manifest["stages"]["01_sentiment"]
    (r / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["learn", "--run", str(r), "--task", str(task)]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "01_sentiment" in line or "(sentiment)" in line]
    assert any("stage 2 (sentiment)" in line and "does not record its trained phase" in line and "redone" in line
               for line in said), said


def test_metrics_jsonl_holds_each_step_once_after_a_resume(finished, tmp_path):
    """The steps logged after the last checkpoint were logged again by the resumed run."""
    r = tmp_path / "run"
    argv = ["run", *TINY, *TASKS, "--output", str(r)]
    killed = sapt_subprocess(*argv, env_extra={KILL_ENV: "stage1:epoch1:mid"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert main(argv) == 0

    def steps(run_dir: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (run_dir / "trackers" / "metrics.jsonl").read_text().splitlines()]
        return [(row["step"], row["stage"], tuple(sorted(row))) for row in rows if "step" in row]

    assert steps(r) == steps(finished)  # as if never interrupted: no step twice, none lost
    assert len(set(steps(r))) == len(steps(r))


def test_a_re_export_keeps_the_users_files_in_a_task_folder(finished, tmp_path):
    """Re-exporting replaced OUT/<task>/ whole, deleting what the user had put there."""
    out = tmp_path / "export"
    assert main(["export", "--run", str(finished), "--out", str(out)]) == 0
    exported = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "topic" / "NOTES.md").write_text("mine")
    (out / "topic" / "sapt_prompt.safetensors").write_bytes(b"left by an export of another run")  # the export's name
    (out / "topic" / "adapter_config.json").write_text("{}")  # the export's file: replaced
    assert main(["export", "--run", str(finished), "--out", str(out)]) == 0
    now = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expected = {**exported, "topic/NOTES.md": b"mine"}
    assert now.keys() == expected.keys()
    assert all(now[k] == v for k, v in expected.items() if k not in ("router.json", "README.md", "sapt_export.json"))
    assert not list(tmp_path.glob(".export.*"))


def test_an_unseen_task_needs_only_the_examples_its_evaluation_uses(tmp_path):
    """An unseen task is never trained or validated on, yet it was refused unless it had enough examples for
    a validation and a training example besides its evaluation ones."""
    from sapt.data import DataError, load_task

    data = write_bench(tmp_path / "data", {"a": 12, "b": 12, "small": 4})  # 4: exactly the 4 evaluated
    with pytest.raises(DataError, match="too few"):  # what a task that trains needs
        load_task(data, "B", "small", max_eval=4, max_train=8)
    r = tmp_path / "run"
    assert main(["run", *TINY, *on_bench(data), "--unseen", "small", "--output", str(r)]) == 0
    metrics = json.loads((r / "metrics.json").read_text())
    assert metrics["unseen"]["tasks"] == ["small"] and None not in metrics["unseen"]["matrix"][-1]
    assert len((r / "unseen_base" / "predictions" / "small.jsonl").read_text().splitlines()) == 4
