"""The tasks' definitions travel with the run (issue 26, point 1): the router learned from prompts holding
them, so a run records them (RUN_DIR/tasks.json), `sapt report`, the export and its model card show them,
and `predict` warns once when a run that trained with definitions is asked without one."""
import json
import warnings

import pytest

import sapt
from sapt.api import MissingDefinitionWarning
from sapt.cli import main
from sapt.data import builtin_suite
from sapt.rundir import task_definitions

DEFINITIONS = {t.name: t.definition for t in builtin_suite(seed=42) if t.name in ("topic", "sentiment")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("definitions") / "run"
    assert main(["run", "--model", "tiny-llama", "--output", str(out), "--tasks", "topic,sentiment",
                 "--max-train-per-task", "8", "--max-eval-per-task", "4", "--epochs", "1", "--max-new-tokens", "3",
                 "--reflection-source", "real"]) == 0
    return out


def test_the_run_records_each_task_s_definition_in_training_order(run_dir):
    assert all(DEFINITIONS.values())  # the built-in tasks have definitions: the point of this file
    recorded = json.loads((run_dir / "tasks.json").read_text())["definitions"]
    assert list(recorded.items()) == [("topic", DEFINITIONS["topic"]), ("sentiment", DEFINITIONS["sentiment"])]
    assert task_definitions(run_dir) == recorded


def test_a_run_made_before_tasks_json_reads_them_from_its_replay_inputs(run_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "tasks.json").unlink()
    assert task_definitions(old) == DEFINITIONS


def test_report_prints_the_definitions(run_dir, capsys):
    assert main(["report", "--run", str(run_dir), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "--definition" in out
    for name, text in DEFINITIONS.items():
        assert f"  {name}: {json.dumps(text)}" in out.splitlines()


def test_the_export_and_its_card_hold_the_definitions(run_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    assert json.loads((out / "router.json").read_text())["definitions"] == DEFINITIONS
    card = (out / "README.md").read_text(encoding="utf-8")
    section = card.split("## Task definitions", 1)[1].split("\n## ", 1)[0]
    for name, text in DEFINITIONS.items():
        assert f"- `{name}`: " in section and text.split()[0] in section


def test_predict_without_a_definition_warns_once_on_one_line(run_dir, capsys):
    assert main(["predict", "--run", str(run_dir), "an input", "another"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and "--definition" in err[0] and f"sapt report --run {run_dir}" in err[0]
    assert main(["predict", "--run", str(run_dir), "--definition", DEFINITIONS["topic"], "an input"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_api_warns_once_per_loaded_run_and_not_with_a_definition(run_dir):
    trained = sapt.load(run_dir)
    assert trained.definitions == DEFINITIONS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained.predict(["Review: flimsy and noisy."], definition=DEFINITIONS["sentiment"])
        assert not [w for w in caught if w.category is MissingDefinitionWarning]
        trained.predict(["Review: flimsy and noisy."])
        trained.predict(["another one"])
        trained.routing(["a third"])
    missing = [w for w in caught if w.category is MissingDefinitionWarning]
    assert len(missing) == 1 and "definition=" in str(missing[0].message)
    assert missing[0].filename == __file__  # it points at the caller's line, not at sapt's


def test_no_warning_when_the_tasks_had_no_definitions(run_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "tasks.json").write_text(json.dumps({"definitions": {"topic": "", "sentiment": ""}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sapt.load(bare).predict(["an input"])
    assert not [w for w in caught if w.category is MissingDefinitionWarning]
