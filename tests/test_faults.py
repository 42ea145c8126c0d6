"""The fault probe: every bad input a user can give (an option, a config file, a damaged run directory, a
full disk, two runs racing for one directory) ends in one line naming what is wrong, exit 2, no traceback,
and leaves an existing run directory as it was.

Each table row is one case, run through `sapt.cli.main` as a user would. The run-directory cases work on
copies of one finished tiny run. Cases of other files: tests/test_validate.py (task files), test_fetch.py
(archives), test_export.py (exports), test_lock.py (the lock itself), test_resume.py (kills).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sapt import io
from sapt.cli import main

TINY = ["--model", "tiny-llama", "--max-train-per-task", "8", "--max-eval-per-task", "4", "--epochs", "1",
        "--max-new-tokens", "3", "--reflection-source", "real"]
TASKS = ["--tasks", "topic,sentiment"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (but the lock file, whose content is the last holder's pid, and run.log, which
    records each command that held the directory, this one too) by its sha256, and every folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name in (".lock", "run.log"):
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def one_line_error(capsys, code: int, needle: str) -> str:
    """Exit 2, no traceback, and one error line, the last one (a run that got as far as loading the model
    has logged its progress before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(["run", *TINY, *TASKS, "--output", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


# ---- options: refused before anything is written ------------------------------------------------------
BAD_OPTIONS = [
    (["--lr", "nan"], "lr"), (["--lr", "inf"], "lr"), (["--lr", "-1"], "lr"), (["--lr", "abc"], "--lr"),
    (["--router-lr", "0"], "router_lr"), (["--kl-ratio", "nan"], "kl_ratio"), (["--kl-ratio", "-1"], "kl_ratio"),
    (["--pseudo-lr", "nan"], "pseudo_lr"), (["--pseudo-lr", "0"], "pseudo_lr"),
    (["--pseudo-repetition-penalty", "0"], "pseudo_repetition_penalty"),
    (["--lora-alpha", "inf"], "lora_alpha"), (["--lora-dropout", "1"], "lora_dropout"),
    (["--olora-lambda1", "nan"], "olora_lambda1"), (["--olora-lambda2", "-1"], "olora_lambda2"),
    (["--seed", "99999999999999999999999"], "seed"), (["--seed", "-1"], "seed"),
    (["--val-size", "inf"], "val_size"), (["--val-size", "0"], "val_size"), (["--val-size", "2.5"], "val_size"),
    (["--val-size", "nan"], "val_size"),
    (["--router-warmup", "1"], "router_warmup"), (["--router-warmup", "nan"], "router_warmup"),
    (["--epochs", "0"], "epochs"), (["--batch-size", "0"], "batch_size"), (["--grad-accum", "0"], "grad_accum"),
    (["--lora-r", "0"], "lora_r"), (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--max-source-length", "0"], "max_source_length"), (["--pseudo-steps", "0"], "pseudo_steps"),
    (["--pseudo-ratio", "0"], "pseudo_ratio"), (["--pseudo-ratio", "2"], "pseudo_ratio"),
    (["--pseudo-top-k", "0"], "pseudo_top_k"), (["--replay-memory", "0"], "replay_memory"),
    (["--max-train-per-task", "0"], "max_train_per_task"), (["--epochs", "two"], "--epochs"),
    (["--method", "nope"], "nope"), (["--tasks", "topic,nope"], "nope"), (["--tasks", ","], "--tasks"),
    (["--tasks", "topic,sentiment,topic"], "duplicate task names in the task list: topic (2 times)"), (["--router-ce", "1"], "router_ce"),
    (["--eval-every", "0"], "eval_every"),
    (["--log-with", "nope"], "nope"), (["--router-key-init", "nope"], "--router-key-init"),
    (["--backbone-dtype", "int8"], "--backbone-dtype"), (["--mixed-precision", "fp8"], "--mixed-precision"),
    (["--reflection-source", "both"], "--reflection-source"), (["--no-such-option"], "--no-such-option"),
    (["--reference", "/nonexistent/ref"], "/nonexistent/ref"),
    (["--data-dir", "/nonexistent/data", "--benchmark", "Long_Sequence"], "/nonexistent/data"),
    (["--benchmark", "SuperNI"], "--data-dir"), (["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
    (["--allow-config-change", "epochs"], "--allow-config-change"),
    (["--output", "/proc/sapt-cannot-be-made"], "/proc/sapt-cannot-be-made"),
]


@pytest.mark.parametrize("argv, needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_before_the_run_directory_is_made(argv, needle, capsys, tmp_path):
    out = tmp_path / "out"
    one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(out), *argv]), needle)
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "nan"], "lr"), (["--pseudo-lr", "nan"], "pseudo_lr"), (["--tasks", "sentiment,topic"], "tasks"),
    (["--epochs", "2"], "epochs"), (["--reference", "/nonexistent/ref"], "/nonexistent/ref"),
])
def test_a_bad_option_leaves_an_existing_run_byte_identical(argv, needle, run_copy, capsys):
    before = snapshot(run_copy)
    one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(run_copy), *argv]), needle)
    assert snapshot(run_copy) == before


def test_a_reference_that_is_not_a_matching_per_task_run_is_refused_before_training(finished, capsys, tmp_path):
    out = tmp_path / "out"
    one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(out), "--reference", str(finished)]),
                   str(finished))
    assert not out.exists()


# ---- config files ---------------------------------------------------------------------------------------
BAD_CONFIGS = [
    ('epochs: "three"\n', "epochs"), ("seed: null\n", "seed"), ("lr: .nan\n", "lr"), ("lr: abc\n", "lr"),
    ("epochs: 1.5\n", "epochs"), ("reflection: 3\n", "reflection"), ("tasks: 7\n", "tasks"),
    ("learning_rate: 1\n", "learning_rate"), ("lr: [1, 2]\n", "lr"), ("- a\n- b\n", "mapping"),
    ("lr: [\n", "invalid YAML"), ("notes: 3\n", "notes"), ("1: 2\n", "mapping"), ("model: 3\n", "model"),
]


@pytest.mark.parametrize("text, needle", BAD_CONFIGS, ids=[t.strip() for t, _ in BAD_CONFIGS])
def test_a_bad_config_file_names_the_file_and_key(text, needle, capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    out = tmp_path / "out"
    line = one_line_error(capsys, main(["run", "--config", str(f), "--output", str(out)]), needle)
    assert str(f) in line
    assert not out.exists()


def test_a_config_that_is_a_folder_or_not_utf8_is_one_line(capsys, tmp_path):
    one_line_error(capsys, main(["run", "--config", str(tmp_path), "--output", str(tmp_path / "o")]), "directory")
    f = tmp_path / "latin.yaml"
    f.write_bytes(b"notes: {a: \xe9}\n")
    one_line_error(capsys, main(["run", "--config", str(f), "--output", str(tmp_path / "o")]), "UTF-8")


def test_yaml_1_1_numbers_and_a_single_tracker_are_read_as_meant(tmp_path):
    from sapt.config import resolve

    f = tmp_path / "ok.yaml"
    f.write_text("lr: 1e-4\nrouter_lr: 2E-5\nepochs: '3'\nlog_with: jsonl\nval_size: 20\ntasks: topic,sentiment\n")
    cfg = resolve({}, str(f))
    assert (cfg.lr, cfg.router_lr, cfg.epochs, cfg.log_with) == (1e-4, 2e-5, 3, ["jsonl"])
    assert (cfg.val_size, cfg.tasks) == (20, ["topic", "sentiment"])


# ---- damaged or foreign run directories -----------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {  # name: (how to damage the run, the commands that must refuse it, what the line names)
    "config.yaml with an unknown key": (lambda r: _write(r / "config.yaml", (r / "config.yaml").read_text()
                                                         + "no_such_key: 1\n"),
                                        ["eval", "predict", "export", "learn"], "config.yaml"),
    "config.yaml not YAML": (lambda r: _write(r / "config.yaml", "lr: [\n"), ["eval", "predict", "export"],
                             "config.yaml"),
    "config.yaml a list": (lambda r: _write(r / "config.yaml", "- 1\n"), ["eval", "predict", "export"], "config.yaml"),
    "config.yaml with a bad value": (lambda r: _write(r / "config.yaml", (r / "config.yaml").read_text()
                                                      .replace("epochs: 1", "epochs: many")),
                                     ["eval", "predict", "export"], "epochs"),
    "no config.yaml": (lambda r: (r / "config.yaml").unlink(), ["eval", "predict", "export", "learn"],
                       "no config.yaml"),
    "metrics.json not JSON": (lambda r: _write(r / "metrics.json", "{"), ["report", "compare"], "metrics.json"),
    "metrics.json without keys": (lambda r: _write(r / "metrics.json", '{"ap": 1}'), ["report", "compare"],
                                  "metrics.json"),
    "metrics.json a list": (lambda r: _write(r / "metrics.json", "[1, 2]"), ["report", "compare"], "metrics.json"),
    "metrics.json with a ragged matrix": (lambda r: _write(r / "metrics.json", json.dumps(
        {**json.loads((r / "metrics.json").read_text()), "matrix": [[1.0]]})), ["report", "compare"], "matrix"),
    "no metrics.json": (lambda r: (r / "metrics.json").unlink(), ["report", "compare"], "metrics.json"),
    "a flipped byte in an adapter": (lambda r: _flip_byte(next(r.glob("stages/00_*/adapter.safetensors"))),
                                     ["eval", "predict", "export"], "adapter.safetensors"),
    "a truncated adapter": (lambda r: next(r.glob("stages/01_*/adapter.safetensors")).write_bytes(b"\0" * 10),
                            ["eval", "predict", "export"], "adapter.safetensors"),
    "a flipped byte in a router": (lambda r: _flip_byte(next(r.glob("stages/01_*/router.safetensors"))),
                                   ["eval", "predict", "export"], "router.safetensors"),
    "stage.json edited": (lambda r: _write(next(r.glob("stages/00_*/stage.json")), "{}"), ["eval", "export"],
                          "stage.json"),
    "manifest.json not JSON": (lambda r: _write(r / "manifest.json", "{"), ["eval", "predict", "export"],
                               "manifest.json"),
    "checkpoint.pt a folder": (lambda r: (next(r.glob("stages/01_*")) / "checkpoint.pt").mkdir(), ["run"],
                               "checkpoint.pt"),
}
COMMAND_LINES = {
    "eval": lambda r, tmp: ["eval", "--run", str(r)],
    "predict": lambda r, tmp: ["predict", "--run", str(r), "hello"],
    "export": lambda r, tmp: ["export", "--run", str(r), "--out", str(tmp / "export")],
    "learn": lambda r, tmp: ["learn", "--run", str(r), "--task", str(tmp)],
    "report": lambda r, tmp: ["report", "--run", str(r), "--no-plots"],
    "compare": lambda r, tmp: ["compare", str(r), "--out", str(tmp / "c.png")],
    "run": lambda r, tmp: ["run", *TINY, *TASKS, "--output", str(r)],
}
DAMAGE_CASES = [(name, cmd) for name, (_, cmds, _) in DAMAGE.items() for cmd in cmds]


@pytest.mark.parametrize("damage, command", DAMAGE_CASES, ids=[f"{c}: {d}" for d, c in DAMAGE_CASES])
def test_a_damaged_run_directory_is_one_line_and_left_as_it_is(damage, command, run_copy, capsys, tmp_path):
    spoil, _, needle = DAMAGE[damage]
    spoil(run_copy)
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train.json").write_text(json.dumps({"Definition": "x", "Instances": [
        {"input": f"q{i}", "output": "a"} for i in range(20)]}))
    before = snapshot(run_copy)
    one_line_error(capsys, main(COMMAND_LINES[command](run_copy, tmp_path / "task" if command == "learn" else tmp_path)),
                   needle)
    assert snapshot(run_copy) == before
    assert not (tmp_path / "export").exists() and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["report", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["export", "--run", "/nonexistent/run", "--out", "/tmp/x-never"], "/nonexistent/run"),
    (["learn", "--run", "/nonexistent/run", "--task", "/nonexistent/task"], "/nonexistent"),
    (["compare", "/nonexistent/run"], "/nonexistent/run"),
    (["predict", "--run", "/nonexistent/run", "hi"], "/nonexistent/run"),
    (["eval"], "--run"), (["predict", "--run", "x"], "text"), (["nope"], "nope"),
])
def test_other_commands_refuse_a_missing_run_in_one_line(argv, needle, capsys):
    one_line_error(capsys, main(argv), needle)


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--max-eval-per-task", "0"], "--max-eval-per-task"),
    (["eval", "--max-eval-per-task", "x"], "--max-eval-per-task"),
    (["eval", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["predict", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
    (["predict", "--max-new-tokens", "-3", "hi"], "--max-new-tokens"),
    (["export", "--out"], "--out"),
])
def test_bad_options_of_the_other_commands_leave_the_run_as_it_is(argv, needle, finished, capsys):
    before = snapshot(finished)
    one_line_error(capsys, main([argv[0], "--run", str(finished), *argv[1:]]), needle)
    assert snapshot(finished) == before


def test_a_kill_in_the_first_stage_is_not_reported_as_a_run_without_manifest(tmp_path):
    from sapt.rundir.verify import _finished_phase_files

    stage = tmp_path / "stages" / "00_topic"
    stage.mkdir(parents=True)
    (stage / "checkpoint.pt").write_bytes(b"x")  # what a kill during stage 1's training leaves
    assert not _finished_phase_files(tmp_path / "stages")
    (stage / "adapter.safetensors").write_bytes(b"x")
    assert _finished_phase_files(tmp_path / "stages")


def test_an_output_that_is_a_file_or_a_foreign_folder_is_refused_untouched(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(f)]), str(f))
    assert f.read_text() == "mine"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(tmp_path / "folder")]), "not a sapt run")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["notes.txt"]


def test_predict_refuses_bytes_that_are_not_utf8(finished, capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of a Latin-1 argument
    one_line_error(capsys, main(["predict", "--run", str(finished), bad]), "UTF-8")


def test_report_on_a_run_whose_plots_cannot_be_written_prints_the_table_and_says_why(run_copy, capsys):
    (run_copy / "plots").write_text("a file where the plots folder goes")  # as a read-only folder would refuse
    assert main(["report", "--run", str(run_copy)]) == 0
    captured = capsys.readouterr()
    assert "AP" in captured.out
    assert "plots not written" in captured.err and "Traceback" not in captured.err


def test_learn_refuses_a_folder_without_train_json(finished, capsys, tmp_path):
    before = snapshot(finished)
    one_line_error(capsys, main(["learn", "--run", str(finished), "--task", str(tmp_path)]), "train.json")
    assert snapshot(finished) == before


# ---- writes: a full disk ----------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes_after(monkeypatch, capsys, tmp_path):
    out = tmp_path / "run"
    real_fsync, calls = os.fsync, []

    def fsync_then_full(fd):
        calls.append(fd)
        if len(calls) == 6:  # a few files in: the config and the first stage's writes have happened
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync_then_full)
    line = one_line_error(capsys, main(["run", *TINY, *TASKS, "--output", str(out)]), "no space left")
    assert "bytes free" in line and str(out) in line
    assert not list(out.rglob("*.tmp"))  # the half-written file is gone; the old one (if any) stays
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    assert main(["run", *TINY, *TASKS, "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["stages_done"] == 2


# ---- the lock: two runs racing for one directory -----------------------------------------------------------
def test_two_runs_with_different_tasks_into_one_directory_cannot_mix(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sapt.cli", "run", *TINY, "--output", str(out)]
    procs = [subprocess.Popen([*cmd, "--tasks", tasks], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for tasks in ("topic,sentiment", "sentiment,topic")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results  # one run, the other refused (in use, or a run of another config)
    refused = next(err for code, err in results if code == 2)
    assert "Traceback" not in refused
    tasks = yaml.safe_load((out / "config.yaml").read_text())["tasks"]
    assert json.loads((out / "metrics.json").read_text())["tasks"] == tasks
    assert [p.name.split("_", 1)[1] for p in sorted((out / "stages").iterdir())] == tasks


def test_the_config_is_checked_under_the_lock_so_a_run_that_lands_meanwhile_cannot_mix(monkeypatch, tmp_path):
    """The race, made deterministic: while run B loads its model, run A (other tasks, same directory) tries
    to run to the end. The lock is B's from before its model loads, so A is refused; had B checked the
    directory before taking the lock, A would have finished there and B trained its tasks on top of it."""
    from sapt import train
    from sapt.config import ConfigError, resolve

    out = tmp_path / "run"
    base = dict(model="tiny-llama", max_train_per_task=8, max_eval_per_task=4, epochs=1, max_new_tokens=3,
                reflection_source="real", output=str(out))
    real_build, seen = train.build_model, []

    def build_while_another_run_starts(cfg):
        if not seen:
            seen.append("A")
            try:
                train.run(resolve({**base, "tasks": ["sentiment", "topic"]}))
                seen.append("A finished")
            except ConfigError as e:
                seen.append(str(e))
        return real_build(cfg)

    monkeypatch.setattr(train, "build_model", build_while_another_run_starts)
    train.run(resolve({**base, "tasks": ["topic", "sentiment"]}))
    assert "in use" in seen[1]
    assert yaml.safe_load((out / "config.yaml").read_text())["tasks"] == ["topic", "sentiment"]
    assert json.loads((out / "metrics.json").read_text())["tasks"] == ["topic", "sentiment"]
    assert [p.name for p in sorted((out / "stages").iterdir())] == ["00_topic", "01_sentiment"]
