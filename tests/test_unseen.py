"""Issue 16, items 3-4: every standard task order (O-LoRA's numbering), and `--unseen`: tasks never trained
on, scored on the base model and after every stage, in metrics.json only when asked for."""
import json
from functools import partial
from pathlib import Path

import pytest
from conftest import bench_script, tiny_config

from sapt import io
from sapt.cli import main
from sapt.config import ConfigError
from sapt.data import TASK_ORDERS, resolve_task_names
from sapt.rundir.manifest import Manifest
from sapt.evaluation.report import render
from sapt.train import load_run_tasks, load_unseen_tasks, run

tiny = partial(tiny_config, tasks=["topic", "sentiment"], unseen=["addition", "reverse_words"])


# ---- task orders ---------------------------------------------------------------------------------------
def test_o_lora_orders():
    ls = TASK_ORDERS["Long_Sequence"]
    assert sorted(ls) == [1, 2, 3, 4, 5, 6]
    assert next(iter(ls)) == 4  # still the default order
    assert ls[5] == ["multirc", "boolq", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia",
                     "agnews", "yelp", "amazon", "yahoo"]
    assert ls[1] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert ls[2] == ["dbpedia", "amazon", "agnews", "yahoo"]
    assert ls[3] == ["yahoo", "amazon", "agnews", "dbpedia"]
    for n in (4, 5, 6):
        assert sorted(ls[n]) == sorted(ls[4]) and len(ls[n]) == 15
    for n in (1, 2, 3):
        assert sorted(ls[n]) == sorted(ls[1])


def _fake_long_sequence(root: Path, names) -> Path:
    for name in names:
        folder = root / "Long_Sequence" / name
        folder.mkdir(parents=True)
        (folder / "train.json").write_text(json.dumps(
            {"Definition": "Say yes or no.", "Instances": [{"input": f"{name} {i}", "output": "yes"} for i in range(6)]}))
    return root


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_new_orders_resolve_skipping_absent_tasks(tmp_path, order):
    root = _fake_long_sequence(tmp_path, ["amazon", "agnews", "multirc", "boolq", "wic"])
    wanted = TASK_ORDERS["Long_Sequence"][order]
    present = [n for n in wanted if n in {"amazon", "agnews", "multirc", "boolq", "wic"}]
    with pytest.warns(UserWarning, match="skips tasks without train data"):
        assert resolve_task_names(root, "Long_Sequence", None, order) == present


def test_unknown_order_lists_the_known_ones(tmp_path):
    root = _fake_long_sequence(tmp_path, ["amazon"])
    with pytest.raises(Exception, match="known orders: 1, 2, 3, 4, 5, 6"):
        resolve_task_names(root, "Long_Sequence", None, 7)


def test_real_new_orders(shared_data):
    with pytest.warns(UserWarning, match="dbpedia, yahoo"):
        names = resolve_task_names(shared_data, "Long_Sequence", None, 5)
    assert names == [n for n in TASK_ORDERS["Long_Sequence"][5] if n not in ("dbpedia", "yahoo")]
    with pytest.warns(UserWarning, match="yahoo, dbpedia"):
        assert resolve_task_names(shared_data, "Long_Sequence", None, 3) == ["amazon", "agnews"]


# ---- --unseen ------------------------------------------------------------------------------------------
def test_unseen_overlapping_tasks_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--model", "tiny-llama", "--tasks", "topic,sentiment", "--unseen", "addition,topic",
               "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "topic" in err and "unseen" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unseen_overlapping_an_order_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "run", unseen=["topic"])  # no --tasks: the whole built-in suite trains
    with pytest.raises(ConfigError, match="topic"):
        load_unseen_tasks(cfg, load_run_tasks(cfg))
    with pytest.raises(ConfigError, match=r"^unseen \(--unseen\): unknown built-in task\(s\): nope"):
        load_unseen_tasks(tiny_config(tmp_path / "r", tasks=["topic"], unseen=["nope"]), [])  # named by its option


def test_unseen_scores_base_and_every_stage_and_survive_a_resume(tmp_path):
    cfg = tiny(tmp_path / "run")
    m = run(cfg).metrics
    unseen = m["unseen"]
    assert unseen["tasks"] == ["addition", "reverse_words"]
    assert len(unseen["base"]) == 2 and all(isinstance(x, float) for x in unseen["base"])
    assert len(unseen["matrix"]) == 2 and all(len(r) == 2 and None not in r for r in unseen["matrix"])
    run_dir = tmp_path / "run"
    stage = run_dir / "stages" / "01_sentiment"
    scores = io.read_json(stage / "unseen_scores.json")["scores"]
    assert [scores[n] for n in unseen["tasks"]] == unseen["matrix"][1]
    records = [json.loads(line) for line in (stage / "unseen" / "addition.jsonl").read_text().splitlines()]
    assert records and all(len(r["weights"]) == 2 and "routed_to_own" not in r for r in records)
    base = [json.loads(line) for line in (run_dir / "unseen_base/predictions/addition.jsonl").read_text().splitlines()]
    assert base and all(r["weights"] == [] for r in base)
    manifest = Manifest(run_dir)
    assert "unseen/addition.jsonl" in manifest.phase("01_sentiment", "evaluated")
    assert "scores.json" in manifest.phase("unseen_base", "evaluated")
    text = render(m)
    assert "unseen tasks" in text and "base model" in text and "after stage 2" in text

    before = (run_dir / "metrics.json").read_bytes()
    assert run(cfg).metrics == m and (run_dir / "metrics.json").read_bytes() == before  # all loaded
    # a damaged unseen file redoes that stage's evaluation only; a missing base evaluation is redone
    (stage / "unseen" / "addition.jsonl").write_text("damaged\n")
    (run_dir / "unseen_base" / "scores.json").unlink()
    assert run(cfg).metrics == m and (run_dir / "metrics.json").read_bytes() == before
    assert (run_dir / "unseen_base" / "scores.json").exists()

    from sapt.evaluation.plots import plot_run
    plots = plot_run(run_dir, tmp_path / "plots")
    assert plots.files["unseen_curves"].exists()


def test_no_unseen_no_key(tmp_path):
    m = run(tiny_config(tmp_path / "run", tasks=["topic"])).metrics
    assert "unseen" not in m
    assert not (tmp_path / "run" / "unseen_base").exists()
    assert not (tmp_path / "run" / "stages" / "00_topic" / "unseen_scores.json").exists()


def test_per_task_scores_unseen_on_the_base_model_only(tmp_path):
    m = run(tiny(tmp_path / "run", method="per-task")).metrics
    unseen = m["unseen"]
    assert None not in unseen["base"] and unseen["matrix"] == [[None, None], [None, None]]
    assert "task id" in unseen["note"]


def test_bench_quality_unseen_column():
    q = bench_script("quality")
    metrics = {"matrix": [[1.0, None], [2.0, 3.0]], "stages_done": 2,
               "unseen": {"tasks": ["a", "b"], "base": [0.0, 0.0], "matrix": [[5.0, 7.0], [10.0, 20.0]]}}
    assert q.unseen_mean(metrics) == 15.0
    assert q.unseen_mean({**metrics, "unseen": {**metrics["unseen"], "matrix": [[None, None]] * 2}}) is None
    row = {"method": "sapt", "ap": 1.0, "fra": None, "fwt": None, "bwt": None, "routing": None, "seconds": 3,
           "eval_split": "test"}
    assert "unseen" not in q.format_rows("p", [row])
    table = q.format_rows("p", [{**row, "unseen": 15.0}])
    assert "unseen" in table.splitlines()[1] and "15.0" in table.splitlines()[2]
