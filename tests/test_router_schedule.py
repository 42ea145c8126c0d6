"""The router's schedule and its diagnostics (issue: a new task starved by the router).

- The router warm-up trains the new block exactly as the per-task oracle does: same seed, same draws, no
  router gradient, so the two runs' training losses agree bit for bit until the first routed step.
- learn-then-route: every stage's block *is* the oracle's block (same bytes), then the router fit routes the
  new task's inputs to it.
- `sapt diagnose` reads where each stage started and how its weight moved; `sapt eval --routing oracle`
  gives the routing loss in metrics.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_torch_thread
from sapt.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--model", "tiny-llama", "--tasks", "topic,sentiment,addition", "--max-train-per-task", "16",
          "--max-eval-per-task", "4", "--epochs", "2", "--batch-size", "4", "--max-new-tokens", "3", "--lr", "2e-3"]


def losses(run: Path, stage: int) -> list[float]:
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if json.loads(x)["stage"] == stage]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    variants = {
        "per-task": ["--method", "per-task"],
        "warmup": ["--method", "sapt", "--router-schedule", "joint", "--router-warmup", "0.5"],
        "ltr": ["--method", "sapt", "--router-schedule", "learn-then-route", "--router-fit-steps", "200"],
    }
    with one_torch_thread():  # the killed run below is compared with these bytes, and runs with one thread
        for name, extra in variants.items():
            assert main(["run", *COMMON, *extra, "--output", str(root / name)]) == 0
    return root


def test_the_router_warmup_trains_the_new_block_exactly_as_the_per_task_oracle(runs):
    oracle, sapt = losses(runs / "per-task", 1), losses(runs / "warmup", 1)
    warmup = len(oracle) // 2  # router_warmup 0.5 of the stage's steps (batch 4, 16 - val examples, 2 epochs)
    assert warmup >= 2
    assert sapt[:warmup] == oracle[:warmup]  # bit for bit
    assert sapt[warmup:] != oracle[warmup:]  # where the router starts, the runs part
    assert losses(runs / "warmup", 0) == losses(runs / "per-task", 0)  # stage 1: one block, weight 1 either way


def test_learn_then_route_blocks_are_the_oracles_and_its_tasks_are_routed_to_them(runs):
    for t in (0, 1, 2):
        assert losses(runs / "ltr", t) == losses(runs / "per-task", t)
        [ltr] = (runs / "ltr" / "stages").glob(f"0{t}_*")
        [oracle] = (runs / "per-task" / "stages").glob(f"0{t}_*")
        assert sha(ltr / "adapter.safetensors") == sha(oracle / "adapter.safetensors")
        stage = json.loads((ltr / "stage.json").read_text())
        if t:
            before, after = stage["router_fit"]["new_task_weight"]
            assert after > 0.9 and after > before
            assert stage["router_fit"]["old_tasks_kl"][1] < 0.1
        else:
            assert "router_fit" not in stage  # one block: nothing to route
    metrics = json.loads((runs / "ltr" / "metrics.json").read_text())
    assert all(row[i] == 100.0 for i, row in enumerate(metrics["routing_accuracy"]))


def test_diagnose_reports_each_stages_start_and_weight_over_the_stage(runs, capsys):
    assert main(["diagnose", "--run", str(runs / "warmup"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == ["topic", "sentiment", "addition"]
    assert rows[0]["start_weight"] is None  # stage 1 has no old block to lose to
    for r in rows[1:]:
        assert 0 < r["start_weight"] < 1 and r["logit_gap"] is not None and r["old_kl"] >= 0
        assert len(r["weight_over_stage"]) == 3
        assert r["fit_weight"] is None  # joint schedule: no router fit
    assert main(["diagnose", "--run", str(runs / "ltr")]) == 0
    out = capsys.readouterr().out
    assert "fit w before->after" in out and " -> " in out


def test_eval_with_oracle_routing_writes_the_routing_loss(runs, capsys):
    run = runs / "warmup"
    before = json.loads((run / "metrics.json").read_text())
    assert main(["eval", "--run", str(run), "--routing", "oracle"]) == 0
    assert "routing loss" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    oracle = metrics.pop("oracle_routed")
    assert metrics == before  # nothing else changed
    assert oracle["routing_loss"] == pytest.approx(oracle["ap"] - metrics["ap"], abs=1e-3)
    assert list(oracle["scores"]) == metrics["tasks"]
    assert main(["report", "--run", str(run), "--no-plots"]) == 0
    assert "routing loss" in capsys.readouterr().out


def test_eval_with_oracle_routing_refuses_a_method_without_router(tmp_path, capsys):
    run = tmp_path / "seq"
    assert main(["run", *COMMON[:2], "--tasks", "topic,sentiment", "--max-train-per-task", "8",
                 "--max-eval-per-task", "2", "--epochs", "1", "--max-new-tokens", "2", "--method", "seq-lora",
                 "--output", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--routing", "oracle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--routing oracle" in err[0] and "seq-lora" in err[0]


def test_a_stage_killed_before_its_router_fit_resumes_to_the_same_router(runs, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sapt.cli", "run", *COMMON, "--method", "sapt", "--router-schedule",
           "learn-then-route", "--router-fit-steps", "200", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAPT_TEST_KILL_AT": "stage1:epoch2"}
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode != 0 and (out / "stages" / "01_sentiment" / "checkpoint.pt").exists()
    env.pop("SAPT_TEST_KILL_AT")
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600).returncode == 0
    for name in ("01_sentiment/router.safetensors", "02_addition/router.safetensors", "02_addition/adapter.safetensors"):
        assert sha(out / "stages" / name) == sha(runs / "ltr" / "stages" / name)


def test_routing_supervision_adds_a_router_cross_entropy_after_the_warmup(tmp_path):
    run = tmp_path / "ce"
    assert main(["run", *COMMON, "--method", "sapt", "--router-schedule", "joint", "--router-warmup", "0.5", "--router-ce", "1.0",
                 "--output", str(run)]) == 0
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    stage1 = [r for r in records if r["stage"] == 1]
    half = len(stage1) // 2
    assert all("router_ce" not in r for r in stage1[:half]) and all(r["router_ce"] >= 0 for r in stage1[half:])
    assert all("router_ce" not in r for r in records if r["stage"] == 0)  # one block: nothing to supervise
    assert main(["run", *COMMON, "--router-ce", "-1", "--output", str(tmp_path / "bad")]) == 2
    # the default schedule is learn-then-route: routing supervision alone would change nothing, so it is refused
    assert main(["run", *COMMON, "--router-ce", "1.0", "--output", str(tmp_path / "bad")]) == 2
    assert main(["run", *COMMON, "--router-fit-kl", "-1", "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_learn_then_route_is_the_default_and_a_run_saved_before_the_key_stays_joint(tmp_path):
    """The default schedule is learn-then-route (BENCHMARKS.md, "The default schedule"); a config.yaml written
    before router_schedule existed was trained jointly, and reading it (to resume, evaluate or export) keeps
    the joint schedule instead of today's default."""
    import yaml

    from sapt.config import RunConfig, resolve, to_dict
    from sapt.rundir import load_run_config

    assert RunConfig().router_schedule == "learn-then-route"
    old = to_dict(resolve({"model": "tiny-llama", "output": str(tmp_path)}))
    del old["router_schedule"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_run_config(tmp_path).router_schedule == "joint"
    old["router_schedule"] = "learn-then-route"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_run_config(tmp_path).router_schedule == "learn-then-route"


def test_replay_inputs_per_task_default_by_schedule_and_are_saved_as_used(tmp_path):
    """pseudo_ratio left unset is the schedule's: 0.2 with learn-then-route (the router fit is the replay
    inputs' only use; BENCHMARKS.md, "More replay inputs for the router fit"), the paper's 0.02 with joint.
    A value given, the built-in suite's preset, and the value saved in a run's config.yaml all win."""
    import yaml

    from sapt.config import resolve, to_dict
    from sapt.rundir import load_run_config

    data = {"model": "tiny-llama", "data_dir": str(tmp_path), "benchmark": "Long_Sequence", "tasks": ["a"]}
    assert resolve(data).pseudo_ratio == 0.2
    assert resolve({**data, "router_schedule": "joint"}).pseudo_ratio == 0.02
    assert resolve({**data, "pseudo_ratio": 0.05}).pseudo_ratio == 0.05
    assert resolve({**data, "router_schedule": "joint", "pseudo_ratio": 0.3}).pseudo_ratio == 0.3
    assert resolve({"model": "tiny-llama"}).pseudo_ratio == 0.1  # the built-in suite's preset
    (tmp_path / "c.yaml").write_text("pseudo_ratio: null\nrouter_schedule: joint\n")
    assert resolve(data, str(tmp_path / "c.yaml")).pseudo_ratio == 0.02
    saved = to_dict(resolve({**data, "output": str(tmp_path)}))
    assert saved["pseudo_ratio"] == 0.2  # config.yaml records the value in force
    saved["pseudo_ratio"] = 0.02  # a run saved when the default was the paper's keeps it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_run_config(tmp_path).pseudo_ratio == 0.02
