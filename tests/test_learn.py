"""`sapt learn`: one more task on a finished run, without redoing the earlier stages."""
import json

import pytest
from conftest import tiny_config

from sapt.cli import main
from sapt.config import ConfigError
from sapt.train import learn, run


def write_task(root, name="capitals", n=12):
    folder = root / "MyBench" / name
    folder.mkdir(parents=True)
    countries = ["France", "Spain", "Italy", "Japan", "Peru", "Chad", "Togo", "Iran", "Laos", "Fiji",
                 "Cuba", "Oman", "Mali", "Niger"]
    instances = [{"input": f"Country: {c}", "output": c[::-1]} for c in countries[:n]]
    (folder / "train.json").write_text(json.dumps({"Definition": ["Write the country name backwards."],
                                                   "Instances": instances}))
    return folder


def test_learn_appends_a_row_and_a_column_and_keeps_earlier_stages(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, tasks=["topic", "sentiment"], reflection_source="real")
    before = run(cfg).metrics
    stage_files = {p: p.read_bytes() for p in (out / "stages").rglob("*.safetensors")}
    folder = write_task(tmp_path)

    after = learn(out, folder).metrics
    assert after["tasks"] == ["topic", "sentiment", "capitals"]
    assert len(after["matrix"]) == 3 and all(len(r) == 3 for r in after["matrix"])
    assert [r[:2] for r in after["matrix"][:2]] == before["matrix"]  # earlier rows untouched
    assert after["matrix"][2][2] is not None and after["matrix"][1][2] is None
    assert after["eval_splits"]["capitals"] == "heldout-train"
    assert {p: p.read_bytes() for p in stage_files} == stage_files  # nothing earlier retrained
    assert (out / "stages" / "02_capitals" / "adapter.safetensors").exists()

    with pytest.raises(ConfigError, match="already"):
        learn(out, folder)


def test_learn_refuses_a_folder_without_train_json(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["learn", "--run", str(tmp_path), "--task", str(tmp_path / "empty")]) == 2
    assert "error" in capsys.readouterr().err


def test_learn_takes_a_task_folder_in_jsonl(tmp_path):
    out = tmp_path / "run"
    run(tiny_config(out, tasks=["topic", "sentiment"], reflection_source="real"))
    folder = tmp_path / "MyBench" / "capitals"
    folder.mkdir(parents=True)
    (folder / "definition.txt").write_text("Write the country name backwards.")
    (folder / "train.jsonl").write_text("".join(json.dumps({"input": f"Country: {c}", "output": c[::-1]}) + "\n"
                                                for c in ["France", "Spain", "Italy", "Japan", "Peru", "Chad",
                                                          "Togo", "Iran", "Laos", "Fiji", "Cuba", "Oman"]))
    after = learn(out, folder).metrics
    assert after["tasks"] == ["topic", "sentiment", "capitals"] and after["matrix"][2][2] is not None
