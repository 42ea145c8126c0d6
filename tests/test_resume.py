"""Crash safety (issue 6): kill anywhere and resume to bit-identical results, a manifest of checksums that
makes damaged stages be redone, a non-finite loss that keeps the last good state and resumes with a lower
learning rate, one process per run directory, --force-new.

The kills are real: `sapt run` runs in a subprocess that SIGKILLs itself at a named point
(SAPT_TEST_KILL_AT, see sapt.train.kill_point), then the same command runs again. Subprocesses run with
one thread each: the machine may be busy, and it keeps every run's arithmetic the same.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from sapt import io
from sapt.cli import build_parser
from sapt.config import ConfigError, to_dict
from sapt.rundir.manifest import Manifest
from sapt.modules.sapt_model import SAPTModel
from sapt.rundir.recovery import CHECKPOINT, KILL_ENV, KILL_SIGNAL_ENV, CheckpointError, load_checkpoint, save_checkpoint, trim_log
from sapt.rundir import plan_run_dir, verify_stages
from sapt.train import TrainingError, run

ROOT = Path(__file__).resolve().parents[1]
TASKS3 = ["topic", "sentiment", "addition"]
COMMON = {"model": "tiny-llama", "epochs": 2, "max_train_per_task": 16, "max_eval_per_task": 6, "max_new_tokens": 3,
          "reflection_source": "real"}


def cli_args(opts: dict) -> list[str]:
    args = []
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, list) else str(v)]
    return args


def sapt_run(out: Path, kill: str | None = None, *, tasks=TASKS3, popen: Path | None = None, sig: str | None = None,
             **opts):
    """`sapt run` in a subprocess; with `popen` (a file for its stderr), started and returned unwaited."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop(KILL_ENV, None)
    env.pop(KILL_SIGNAL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    if sig:
        env[KILL_SIGNAL_ENV] = sig
    cmd = [sys.executable, "-m", "sapt.cli", "run", "--output", str(out), *cli_args({**COMMON, "tasks": tasks, **opts})]
    if popen:
        with open(popen, "w") as err:  # a file, not a pipe: a full pipe would block the child
            return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# Files that legitimately differ between two runs of one config: the output path, wall-clock seconds, the
# checksums of the files holding those seconds, and the trackers' stream and run.log (a resumed run logs its
# redone steps again, as any tracker shows a restarted job, and its log lines carry the time).
def comparable(run_dir: Path) -> dict[str, object]:
    out = {}
    for rel, data in files(run_dir).items():
        if rel in ("config.yaml", "manifest.json") or rel.startswith("trackers/"):
            continue
        if rel in ("timing.json", "run.log"):
            continue
        if rel.endswith(("stage.json", "replay_stats.json", "scores.json")):
            obj = json.loads(data)
            obj.pop("seconds", None)
            out[rel] = obj
        else:
            out[rel] = data
    return out


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = comparable(a), comparable(b)
    assert sorted(ca) == sorted(cb)
    for rel in ca:
        assert ca[rel] == cb[rel], f"{rel} differs"
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    assert not list(b.rglob(CHECKPOINT))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "baseline"
    p = sapt_run(out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_killed_anywhere_then_resumed_gives_the_same_run_as_an_uninterrupted_one(baseline, tmp_path):
    out = tmp_path / "run"
    points = ["stage0:epoch1:mid",      # in training, before any checkpoint: the stage restarts
              "stage1:epoch1",          # right after a checkpoint: resumes at epoch 2
              "stage1:between-files",   # adapter written, router and stage.json not
              "stage1:replay",          # replay.jsonl written, replay_stats.json not
              "stage1:eval",            # one predictions file of two written
              "stage2:epoch2:mid"]      # in epoch 2 of the last stage, resumed from epoch 1's checkpoint
    for point in points:
        p = sapt_run(out, point)
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr[-2000:])
        assert f"SIGKILL at {point}" in p.stderr
    p = sapt_run(out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumes after epoch 1/2 from its checkpoint" in p.stderr
    assert_same_run(baseline, out)
    # the training log reads as if never interrupted: lines of cut-short epochs were dropped, none doubled
    assert (out / "train_log.jsonl").read_text() == (baseline / "train_log.jsonl").read_text()


def test_a_damaged_stage_is_redone_from_there_and_a_damaged_evaluation_is_rescored(baseline, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(baseline, out, ignore=shutil.ignore_patterns(".lock"))
    adapter = out / "stages" / "01_sentiment" / "adapter.safetensors"
    data = bytearray(adapter.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the tensor data: still loads, silently wrong
    adapter.write_bytes(bytes(data))
    (out / "stages" / "00_topic" / "predictions" / "topic.jsonl").write_text("{}\n")
    stage0 = {p.name: p.stat().st_mtime_ns for p in (out / "stages" / "00_topic").iterdir() if p.is_file()}

    p = sapt_run(out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage 2 (sentiment): adapter.safetensors fails its checksum" in p.stderr
    assert "stage 3 is redone too" in p.stderr
    assert "stage 1 (topic): predictions/topic.jsonl fails its checksum; its evaluation is redone" in p.stderr
    assert "stage 1 (topic) already trained, loaded" in p.stderr
    assert_same_run(baseline, out)
    assert (out / "train_log.jsonl").read_text() == (baseline / "train_log.jsonl").read_text()
    # stage 1's training and replay were trusted and kept (not rewritten); only its scores were redone
    now = {p.name: p.stat().st_mtime_ns for p in (out / "stages" / "00_topic").iterdir() if p.is_file()}
    for name in ("adapter.safetensors", "router.safetensors", "stage.json", "replay.jsonl", "replay_stats.json"):
        assert now[name] == stage0[name], name


def test_generated_replay_is_redone_identically_after_a_kill(tmp_path):
    opts = dict(tasks=["topic", "sentiment"], reflection_source="generated", pseudo_max_new_tokens=8)
    base = tmp_path / "base"
    p = sapt_run(base, **opts)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "run"
    for point in ("stage0:replay", "stage1:epoch1:mid", "stage1:replay"):
        p = sapt_run(out, point, **opts)
        assert p.returncode == -signal.SIGKILL, (point, p.stderr[-2000:])
    p = sapt_run(out, **opts)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "stages" / "00_topic" / "replay_stats.json").read_text())["source"] == "generated"
    assert_same_run(base, out)


def test_a_run_directory_in_use_is_refused_with_exit_code_2(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "first.err"
    first = sapt_run(out, "stage0:epoch1", tasks=["topic"], epochs=1, popen=log, sig="SIGSTOP")
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it stopped itself, holding the lock
        assert os.WIFSTOPPED(status), log.read_text()[-2000:]
        before = files(out)
        second = sapt_run(out, tasks=["topic"], epochs=1)
        assert second.returncode == 2
        assert f"is in use by another sapt process (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert files(out) == before
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0, log.read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert json.loads((out / "metrics.json").read_text())["stages_done"] == 1


# ---- in-process: non-finite loss, --force-new, the pieces ----------------------------------------------
@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


tiny = partial(tiny_config, **COMMON, tasks=["topic", "sentiment"], lr=1e-2)


def test_non_finite_loss_keeps_the_last_good_state_and_resumes_with_a_lower_lr(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "run"
    forward = SAPTModel.forward
    calls = {"n": 0}

    def poisoned(self, batch, *a, **kw):
        loss = forward(self, batch, *a, **kw)
        if self.training and self.n_tasks == 2:
            calls["n"] += 1
            if calls["n"] == 3:  # stage 2, epoch 2, first batch (2 batches per epoch)
                return loss * float("nan")
        return loss

    with monkeypatch.context() as m:
        m.setattr(SAPTModel, "forward", poisoned)
        with pytest.raises(TrainingError) as e:
            run(tiny(out))
    msg = str(e.value)
    assert "non-finite loss (nan) in task 'sentiment' (stage 2), epoch 2, batch 1" in msg
    assert "checkpoint of stage 2 after epoch 1" in msg and "--allow-config-change lr" in msg
    manifest = Manifest(out)
    assert manifest.problems(out / "stages" / "00_topic", "trained") == []
    assert manifest.problems(out / "stages" / "00_topic", "evaluated") == []
    assert manifest.phase("01_sentiment", "trained") is None
    assert load_checkpoint(out / "stages" / "01_sentiment" / CHECKPOINT)["epoch"] == 1
    stage0 = files(out / "stages" / "00_topic")

    with pytest.raises(ConfigError, match="--allow-config-change lr"):
        run(tiny(out, lr=1e-3))
    result = run(tiny(out, lr=1e-3), allow_changes=["lr"])
    assert result.metrics["stages_done"] == 2
    assert files(out / "stages" / "00_topic") == stage0
    history = io.read_json(out / "stages" / "01_sentiment" / "stage.json")["history"]
    assert [(h["epoch"], h["lr"]) for h in history] == [(1, 1e-2), (2, 1e-3)]  # epoch 1 was not redone
    assert result.metrics["config_changes"] == [{"stage": 1, "changes": {"lr": [1e-2, 1e-3]}}]
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 1e-3
    assert not (out / "stages" / "01_sentiment" / CHECKPOINT).exists()
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [(0, 0)] * 2 + [(0, 1)] * 2 + [(1, 0)] * 2 + [(1, 1)] * 2


def write_config(run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def test_force_new_starts_a_fresh_directory_next_to_the_old_one(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    small = dict(tasks=["topic"], epochs=1)
    write_config(out, tiny(out, lr=0.5, **small))
    write_config(tmp_path / "run-2", tiny(tmp_path / "run-2", seed=7, **small))
    (tmp_path / "run-3").write_text("a file, not a directory")
    before = files(tmp_path)
    cfg = tiny(out, **small)
    with pytest.raises(ConfigError, match="different config .lr.*--force-new"):
        plan_run_dir(cfg)
    with pytest.raises(ConfigError, match="accepts only lr, router_lr"):
        plan_run_dir(cfg, allow_changes=["epochs"])
    assert plan_run_dir(cfg, force_new=True) == (tmp_path / "run-4", {})

    result = run(cfg, force_new=True)
    assert "--force-new: starting a fresh run in" in capsys.readouterr().err
    assert result.metrics["stages_done"] == 1 and (tmp_path / "run-4" / "metrics.json").exists()
    assert yaml.safe_load((tmp_path / "run-4" / "config.yaml").read_text())["output"] == str(tmp_path / "run-4")
    assert {k: v for k, v in files(tmp_path).items() if not k.startswith("run-4/")} == before  # nothing touched
    # the same command again resumes run-4 instead of starting run-5
    assert plan_run_dir(cfg, force_new=True) == (tmp_path / "run-4", {})

    args = build_parser().parse_args(["run", "--force-new", "--allow-config-change", "lr, router_lr"])
    assert args.force_new is True and args.allow_config_change == ["lr", "router_lr"]
    assert not hasattr(build_parser().parse_args(["run"]), "force_new")


def test_checkpoint_files_carry_their_own_checksum(tmp_path):
    path = tmp_path / CHECKPOINT
    state = {"epoch": 3, "params": [torch.arange(4.0)], "rng": {"torch": torch.get_rng_state()}}
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and torch.equal(back["params"][0], state["params"][0])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_trim_log_drops_what_a_resumed_stage_writes_again(tmp_path):
    log = tmp_path / "train_log.jsonl"
    rows = [{"stage": s, "epoch": e, "step": 0} for s, e in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    log.write_text(text + '{"stage": 1, "ep')  # a line cut by a kill
    trim_log(log, 1, 1)
    assert log.read_text() == "".join(json.dumps(r) + "\n" for r in rows[:3])
    stamp = log.stat().st_mtime_ns
    trim_log(log, 1, 1)  # nothing to drop: not rewritten
    assert log.stat().st_mtime_ns == stamp


class _T:
    def __init__(self, name):
        self.name = name


def fake_run(tmp_path: Path, names=("a", "b", "c")) -> tuple[Path, list, Manifest]:
    run_dir = tmp_path / "run"
    manifest = Manifest(run_dir)
    for t, name in enumerate(names):
        sdir = run_dir / "stages" / f"{t:02d}_{name}"
        for rel in ("adapter.safetensors", "router.safetensors", "stage.json", "replay.jsonl", "replay_stats.json",
                    "scores.json", f"predictions/{name}.jsonl"):
            (sdir / rel).parent.mkdir(parents=True, exist_ok=True)
            (sdir / rel).write_text(f"{name} {rel}")
        manifest.record(sdir, "trained", ["adapter.safetensors", "router.safetensors", "stage.json"])
        manifest.record(sdir, "replay", ["replay.jsonl", "replay_stats.json"])
        manifest.record(sdir, "evaluated", ["scores.json", f"predictions/{name}.jsonl"])
    return run_dir, [_T(n) for n in names], manifest


def test_verify_stages_trusts_only_what_the_manifest_vouches_for(tmp_path, capsys):
    run_dir, tasks, manifest = fake_run(tmp_path)
    assert len(verify_stages(run_dir, tasks, Manifest(run_dir), True)) == 9

    # damaged replay of stage 2: its training is kept, its replay and everything after it is not
    (run_dir / "stages" / "01_b" / "replay.jsonl").write_text("tampered")
    (run_dir / "stages" / "01_b" / CHECKPOINT).write_text("stale")
    done = verify_stages(run_dir, tasks, Manifest(run_dir), True)
    assert done == {(0, "trained"), (0, "replay"), (0, "evaluated"), (1, "trained")}
    assert "stage 2 (b): replay.jsonl fails its checksum" in capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "stages" / "01_b").iterdir()) == [
        "adapter.safetensors", "router.safetensors", "stage.json"]
    assert not (run_dir / "stages" / "02_c").exists()
    assert set(Manifest(run_dir).data["stages"]) == {"00_a", "01_b"}

    # unfinished training (not in the manifest): its checkpoint is kept, its stray files are not
    (run_dir / "stages" / "01_b" / CHECKPOINT).write_text("in progress")
    Manifest(run_dir).forget("01_b")
    done = verify_stages(run_dir, tasks, Manifest(run_dir), True)
    assert done == {(0, "trained"), (0, "replay"), (0, "evaluated")}
    assert [p.name for p in (run_dir / "stages" / "01_b").iterdir()] == [CHECKPOINT]

    # no manifest at all: nothing on disk is trusted
    (run_dir / "manifest.json").unlink()
    assert verify_stages(run_dir, tasks, Manifest(run_dir), True) == set()
    assert "no manifest.json" in capsys.readouterr().err
    assert not (run_dir / "stages" / "00_a" / "adapter.safetensors").exists()


def test_an_unreadable_manifest_vouches_for_nothing(tmp_path, capsys):
    run_dir, tasks, _ = fake_run(tmp_path, names=("a",))
    (run_dir / "manifest.json").write_text("{not json")
    assert verify_stages(run_dir, tasks, Manifest(run_dir), True) == set()
    assert "cannot be read" in capsys.readouterr().err
    assert Manifest(run_dir).data["stages"] == {}
