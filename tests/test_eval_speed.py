"""bench/eval_speed.py: a run's final-row evaluation, timed on a copy, against the answers the run stored."""
import json
from pathlib import Path

import pytest

from conftest import bench_script, tiny_config


def eval_speed():
    return bench_script("eval_speed")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from sapt.train import run

    out = tmp_path_factory.mktemp("eval_speed") / "run"
    run(tiny_config(out, tasks=["topic", "sentiment"], max_eval_per_task=5, max_new_tokens=4))
    return out


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_current_code_gives_the_stored_answers_and_the_run_is_not_written(tiny_run, capsys):
    bench = eval_speed()
    before = tree(tiny_run)
    assert bench.main([str(tiny_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert tree(tiny_run) == before  # read from a copy: nothing written, nothing changed
    stored = json.loads((tiny_run / "stages" / "01_sentiment" / "scores.json").read_text())["scores"]
    assert [r["task"] for r in result["tasks"]] == ["topic", "sentiment"]
    for row in result["tasks"]:
        assert row["n"] == 5 and row["flipped"] == 0
        assert row["score_before"] == row["score_after"] == pytest.approx(stored[row["task"]])
        assert row["seconds"] >= 0
    assert result["n"] == 10 and result["flipped"] == 0 and result["seconds"] > 0


def test_the_table_and_a_smaller_subset_count_a_changed_answer(tiny_run, tmp_path, capsys):
    import shutil

    bench = eval_speed()
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = run / "stages" / "01_sentiment" / "predictions" / "topic.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["prediction"] += " changed"  # one stored answer the code does not give
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.main([str(run), "--max-eval-per-task", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "n", "flipped", "before", "after", "seconds"]
    topic, sentiment, total = (line.split() for line in lines[1:4])
    assert topic[:3] == ["topic", "3", "1"] and sentiment[:3] == ["sentiment", "3", "0"]
    assert total[:3] == ["all", "6", "1"]
    assert "1 of 6 answers differ from the stored ones" in lines[4]
    with pytest.raises(SystemExit):
        bench.main([str(run), "--max-eval-per-task", "0"])
    capsys.readouterr()
    assert bench.main([str(tmp_path / "no-run")]) == 2  # not a run directory: one line, exit 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_the_final_row_is_the_last_stage_by_number_not_by_name(tmp_path):
    for name in ("99_a", "100_b"):  # as strings, "100_b" sorts before "99_a"
        (tmp_path / "stages" / name / "predictions").mkdir(parents=True)
    assert eval_speed().final_row_dir(tmp_path).name == "100_b"
