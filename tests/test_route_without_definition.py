"""Routing without the definition (issue 26, item 1): `--route-without-definition P` gives the learn-then-route
router fit a share P of each task's inputs (and of the old tasks' replay inputs) also without the task's
definition, so that `predict` without one is routed as trained.

- P = 0 (the default) is the run of before: the same bytes as a run without the option.
- P = 1: the new task's validation inputs without the definition end on its block after the fit, and the
  final model routes the evaluation inputs without definitions better than with P = 0.
- A stage killed halfway through its router fit resumes to the same router.
- predict still warns about a missing definition (the blocks learned with it), in words that say the
  router learned to route without one; `sapt eval --no-definitions` measures it beside
  metrics.json; the option is in config.yaml and the model card's settings; a bad share is refused in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import one_torch_thread

import sapt
from sapt.api import MissingDefinitionWarning
from sapt.cli import main
from sapt.data import builtin_suite
from sapt.router_fit import share_without_definition

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("topic", "sentiment", "addition")
# test_router_schedule.py's tiny setting (three tasks, 200 fit steps), with real replay inputs, 7 per task: the
# first task's inputs without their definition are held in later fits only by its replay inputs, and the tiny
# random model's generated ones (1 per task at the preset's ratio) are noise; with them the first task's bare
# inputs drifted to later blocks whatever P (P=0: 29% of its weight on its block, P=1: 13%)
COMMON = ["--model", "tiny-llama", "--tasks", ",".join(TASKS), "--max-train-per-task", "16",
          "--max-eval-per-task", "4", "--epochs", "2", "--batch-size", "4", "--max-new-tokens", "3", "--lr", "2e-3",
          "--router-fit-steps", "200", "--reflection-source", "real", "--pseudo-ratio", "0.5"]
STAGES = ("01_sentiment", "02_addition")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("route-without-definition")
    with one_torch_thread():  # the killed run below is compared with these bytes, and runs with one thread
        for name, extra in {"default": [], "p0": ["--route-without-definition", "0"],
                            "p1": ["--route-without-definition", "1"]}.items():
            assert main(["run", *COMMON, *extra, "--output", str(root / name)]) == 0
    return root


def own_block_weight_without_definitions(run: Path) -> tuple[float, float]:
    """The final model's mean routing weight on each task's own block, and its routing accuracy (%), over the
    tasks' evaluation inputs given without their definition (as `predict` is asked without one)."""
    trained = sapt.load(run)
    weights, right, n = 0.0, 0, 0
    suite = {t.name: t for t in builtin_suite(seed=42)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingDefinitionWarning)
        for name in TASKS:
            for routing in trained.routing([ex.input for ex in suite[name].eval[:32]]):
                weights += routing[name]
                right += max(routing, key=routing.get) == name
                n += 1
    return weights / n, 100 * right / n


def test_the_share_is_seeded_at_least_one_input_and_none_at_zero():
    assert share_without_definition(10, 0.0, "s") == []
    assert share_without_definition(0, 0.5, "s") == []
    assert share_without_definition(10, 1.0, "s") == list(range(10))
    half = share_without_definition(10, 0.5, "s")
    assert len(half) == 5 and half == sorted(half) and half == share_without_definition(10, 0.5, "s")
    assert len(share_without_definition(3, 0.1, "s")) == 1  # a share of a few replay inputs is still one


def test_p0_writes_the_bytes_of_a_run_without_the_option(runs):
    for name in [f"{s}/{f}" for s in ("00_topic", *STAGES) for f in ("adapter.safetensors", "router.safetensors")]:
        assert sha(runs / "p0" / "stages" / name) == sha(runs / "default" / "stages" / name)
    assert sha(runs / "p0" / "metrics.json") == sha(runs / "default" / "metrics.json")
    for stage in STAGES:
        fit = json.loads((runs / "p0" / "stages" / stage / "stage.json").read_text())["router_fit"]
        assert "new_task_weight_without_definition" not in fit


def test_p1_routes_the_new_tasks_inputs_without_their_definition_to_its_block(runs):
    for stage in STAGES:
        fit = json.loads((runs / "p1" / "stages" / stage / "stage.json").read_text())["router_fit"]
        before, after = fit["new_task_weight_without_definition"]
        assert after > 0.9 and after > before
        assert fit["new_task_weight"][1] > 0.9  # with the definition, still routed
    weight1, accuracy1 = own_block_weight_without_definitions(runs / "p1")
    weight0, accuracy0 = own_block_weight_without_definitions(runs / "p0")
    # measured: P=0 0.74 (75% routed right: the first task's bare inputs go to later blocks), P=1 0.97 (97%)
    assert weight1 > weight0 + 0.1 and accuracy1 > accuracy0
    assert weight1 > 0.9


def test_a_stage_killed_halfway_through_its_router_fit_resumes_to_the_same_router(runs, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sapt.cli", "run", *COMMON, "--route-without-definition", "1", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAPT_TEST_KILL_AT": "stage1:router-fit"}
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode != 0 and not (out / "stages" / "01_sentiment" / "router.safetensors").exists()
    env.pop("SAPT_TEST_KILL_AT")
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600).returncode == 0
    for name in ("01_sentiment/router.safetensors", "02_addition/router.safetensors", "02_addition/adapter.safetensors"):
        assert sha(out / "stages" / name) == sha(runs / "p1" / "stages" / name)


def test_predict_still_warns_without_a_definition_and_says_the_router_learned_to_route_without_one(runs, capsys):
    """The router of a P > 0 run routes inputs without a definition, but its blocks learned each task with it
    (on the built-in suite reverse_words, routed 100%, scored 6 without it): the warning stays, in other words."""
    assert main(["predict", "--run", str(runs / "p1"), "an input"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "route inputs without one" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sapt.load(runs / "p1").predict(["an input"])
    assert [w for w in caught if w.category is MissingDefinitionWarning]
    assert main(["predict", "--run", str(runs / "p0"), "an input"]) == 0  # trained with definitions only: warned
    err = capsys.readouterr().err
    assert "warning" in err and "route inputs without one" not in err


def test_eval_without_definitions_writes_beside_metrics_json(runs, capsys):
    run = runs / "p1"
    before = (run / "metrics.json").read_bytes()
    assert main(["eval", "--run", str(run), "--no-definitions"]) == 0
    assert "without definitions: AP" in capsys.readouterr().out
    assert (run / "metrics.json").read_bytes() == before
    bare = json.loads((run / "metrics_no_definitions.json").read_text())
    assert bare["tasks"] == list(TASKS) and set(bare["routing_accuracy"]) == set(TASKS)
    assert bare["mean_routing_accuracy"] == pytest.approx(sum(bare["routing_accuracy"].values()) / 3)
    records = [json.loads(x) for x in (run / "eval" / "predictions_no_definitions" / "topic.jsonl").read_text().splitlines()]
    definition = builtin_suite(seed=42)[0].definition
    assert records and not any(definition in json.dumps(r) for r in records)


def test_the_option_is_in_config_yaml_and_the_model_cards_settings(runs, tmp_path):
    import yaml

    assert yaml.safe_load((runs / "p1" / "config.yaml").read_text())["route_without_definition"] == 1.0
    for name, listed in (("p1", True), ("p0", False)):
        assert main(["export", "--run", str(runs / name), "--out", str(tmp_path / name)]) == 0
        card = (tmp_path / name / "README.md").read_text(encoding="utf-8")
        assert ("| router: share of inputs also fitted without their definition | 1 " in card) is listed


@pytest.mark.parametrize("extra, words", [
    (["--route-without-definition", "1.5"], "[0, 1]"),
    (["--route-without-definition", "-0.1"], "[0, 1]"),
    (["--route-without-definition", "0.5", "--router-schedule", "joint"], "--router-schedule learn-then-route"),
    (["--route-without-definition", "0.5", "--method", "seq-lora"], "no router"),
])
def test_a_bad_share_is_refused_in_one_line(extra, words, tmp_path, capsys):
    assert main(["run", *COMMON, *extra, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "route_without_definition" in err[0] and words in err[0]
    assert not (tmp_path / "bad").exists()
