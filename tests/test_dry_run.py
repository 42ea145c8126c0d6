"""`sapt run --dry-run`: the resolved config and each stage's optimiser steps, from the task data read as the
run reads it, with no model loaded and nothing written; the counts are the ones training then makes."""
import json
import math
from pathlib import Path

import pytest
import yaml

from sapt import io
from sapt.cli import main
from sapt.config import resolve, to_dict

TINY = ["--model", "tiny-llama", "--epochs", "2", "--batch-size", "3", "--grad-accum", "2", "--max-train-per-task", "8",
        "--max-eval-per-task", "4", "--max-new-tokens", "2", "--reflection-source", "real"]


def parse(out: str) -> tuple[dict, list[dict]]:
    """The YAML config (before the first blank line) and the stage table's rows, as printed."""
    config_text, _, rest = out.partition("\n\n")
    lines = [line for line in rest.splitlines() if line and not line.startswith("#")]
    head = [h.strip() for h in lines[0].split("  ") if h.strip()]
    rows = [dict(zip(head, line.split())) for line in lines[1:] if not line.startswith("total")]
    return yaml.safe_load(config_text), rows


def dry(capsys, argv):
    capsys.readouterr()
    assert main(["run", "--dry-run", *argv]) == 0
    return parse(capsys.readouterr().out)


@pytest.mark.parametrize("method", ["sapt", "replay", "mtl"])
def test_the_step_counts_are_those_training_makes(tmp_path, capsys, method):
    """On the built-in suite: the printed config is what config.yaml then holds, and each stage's optimiser
    steps, training items and frozen-router steps are the ones the stage really takes (stage.json)."""
    out = tmp_path / method
    argv = [*TINY, "--tasks", "topic,sentiment,addition", "--method", method, "--output", str(out)]
    config, rows = dry(capsys, argv)
    assert not out.exists()  # nothing written
    assert main(["run", *argv]) == 0
    assert config == yaml.safe_load((out / "config.yaml").read_text())
    stages = sorted((out / "stages").iterdir())
    assert [r["task"] for r in rows] == [s.name.split("_", 1)[1] for s in stages]
    for row, sdir in zip(rows, stages):
        summary = io.read_json(sdir / "stage.json")
        assert int(row["train"]) == summary["n_train"] and int(row["val"]) == summary["n_val"]
        assert int(row["optimiser steps"]) == summary["steps"] == 2 * math.ceil(math.ceil(summary["n_train"] / 3) / 2)
    if method == "sapt":  # learn-then-route: the router frozen for every step; and the replay inputs
        assert all(r["router frozen"] == r["optimiser steps"] for r in rows)
        _, joint = dry(capsys, [*argv, "--router-schedule", "joint"])  # the warm-up: a quarter of each later stage
        assert joint[0]["router frozen"] == "0" and int(joint[1]["router frozen"]) == int(0.25 * int(joint[1]["optimiser steps"]))
        stats = io.read_json(stages[0] / "replay_stats.json")
        assert int(rows[0]["replay inputs"]) == stats["wanted"]
    else:
        assert rows[0]["router frozen"] == "-" and rows[0]["replay inputs"] == "-"


def test_the_generator_steps_are_those_reflection_takes(tmp_path, capsys):
    """With generated replay inputs the plan has a `generator steps` column: by default a quarter of the
    stage's training batches, as replay_stats.json then records; --pseudo-steps overrides it."""
    out = tmp_path / "gen"
    argv = [*TINY[:-2], "--tasks", "topic,sentiment", "--max-train-per-task", "24", "--output", str(out)]
    _, rows = dry(capsys, argv)
    assert main(["run", *argv]) == 0
    stats = io.read_json(sorted((out / "stages").iterdir())[0] / "replay_stats.json")
    n_train = io.read_json(sorted((out / "stages").iterdir())[0] / "stage.json")["n_train"]
    assert int(rows[0]["generator steps"]) == stats["steps"] == math.ceil(0.25 * 2 * math.ceil(n_train / 3))
    _, fixed = dry(capsys, [*argv, "--pseudo-steps", "5"])
    assert fixed[0]["generator steps"] == "5"
    _, real = dry(capsys, [*argv, "--reflection-source", "real"])
    assert "generator steps" not in real[0]


def test_a_task_folder_of_ones_own(tmp_path, capsys):
    """A benchmark folder in two formats: the counts follow the run's split (validation carved from train) and
    subsets, and the data folder is left as it was."""
    data = tmp_path / "data"
    (data / "Mine" / "a").mkdir(parents=True)
    (data / "Mine" / "b").mkdir(parents=True)
    (data / "Mine" / "a" / "train.jsonl").write_text(
        "".join(json.dumps({"input": f"question {i}", "output": str(i % 3)}) + "\n" for i in range(30)))
    (data / "Mine" / "b" / "train.json").write_text(json.dumps(
        {"Definition": ["Echo."], "Instances": [{"input": f"x{i}", "output": f"x{i}"} for i in range(50)]}))
    before = sorted(p.name for p in data.rglob("*"))
    config, rows = dry(capsys, ["--model", "tiny-llama", "--data-dir", str(data), "--benchmark", "Mine", "--tasks", "a,b",
                                "--batch-size", "4", "--epochs", "3", "--output", str(tmp_path / "out")])
    from sapt.train import load_run_tasks

    tasks = load_run_tasks(resolve({"model": "tiny-llama", "data_dir": str(data), "benchmark": "Mine", "tasks": ["a", "b"],
                                    "batch_size": 4, "epochs": 3}))
    assert [(r["task"], int(r["train"]), int(r["val"]), int(r["eval"])) for r in rows] == [
        (t.name, len(t.train), len(t.val), len(t.eval)) for t in tasks]
    assert len(tasks[0].train) < 30  # validation (and, with no test file, evaluation) carved from train
    assert [int(r["optimiser steps"]) for r in rows] == [3 * math.ceil(len(t.train) / 4) for t in tasks]
    assert config["data_dir"] == str(data) and config["tasks"] == ["a", "b"]
    assert sorted(p.name for p in data.rglob("*")) == before and not (tmp_path / "out").exists()


def test_the_printed_config_is_the_resolved_one(tmp_path, capsys):
    out = tmp_path / "o"
    config, _ = dry(capsys, ["--model", "tiny-llama", "--tasks", "topic", "--max-grad-norm", "0.5", "--output", str(out)])
    assert config == to_dict(resolve({"model": "tiny-llama", "tasks": ["topic"], "max_grad_norm": 0.5, "output": str(out)}))


def test_an_absent_data_folder_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "o"
    config = Path(__file__).parents[1] / "configs" / "t5-large-superni.yaml"
    assert main(["run", "--dry-run", "--config", str(config), "--data-dir", str(tmp_path / "nowhere"),
                 "--output", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "data folder" in err[0] and "nowhere" in err[0] and "absent" in err[0]
    assert captured.out == "" and not out.exists()
