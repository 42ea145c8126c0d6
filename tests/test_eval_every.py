"""--eval-every K (reliability issue 27, "Scale"): the score matrix's row is evaluated only after every K-th stage
and after the last; skipped rows are null, metrics.json says which rows exist and what BWT / F.Ra cover, a
killed run resumes without "redoing" a skipped row, and `sapt learn`, `sapt eval` and `sapt report` take such
a run. K = 1 writes the bytes of before: tests/test_golden.py, unchanged, checks it.

Runs: the tiny settings of tests/test_resume.py (tiny-llama, real reflection inputs), in subprocesses killed
with SAPT_TEST_KILL_AT as there."""
import json
import shutil
import signal

import pytest
from test_learn import write_task
from test_resume import assert_same_run, sapt_run

from sapt import io
from sapt.cli import main
from sapt.rundir.manifest import Manifest
from sapt.evaluation.metrics import cl_metrics, evaluated_rows, transfer_tasks
from sapt.train import learn

TASKS = ["topic", "sentiment", "addition"]  # K = 2: row 0 skipped, row 1 (every 2nd) and row 2 (the last) scored


@pytest.fixture(scope="module")
def k2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_every") / "k2"
    p = sapt_run(out, tasks=TASKS, eval_every=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage 1/3 done" in p.stderr and "not evaluated (--eval-every 2: the next row is scored after stage 2)" in p.stderr
    return out


def test_only_every_kth_and_the_last_row_are_evaluated(k2_run):
    m = io.read_json(k2_run / "metrics.json")
    a = m["matrix"]
    assert len(a) == 3 and m["stages_done"] == 3
    assert a[0] == [None, None, None]  # skipped: null, not absent, so row i is still "after task i"
    assert all(x is not None for x in a[1][:2]) and a[1][2] is None and all(x is not None for x in a[2])
    assert m["evaluated_rows"] == [1, 2] and m["eval_every"] == 2
    assert m["routing_accuracy"][0] == [None, None, None]
    # AP from the last row; BWT and F.Ra over the tasks whose own row exists: sentiment only (topic's row 0 skipped)
    assert m["bwt_fra_tasks"] == ["sentiment"]
    assert m["ap"] == pytest.approx(sum(a[2]) / 3)
    assert m["bwt"] == pytest.approx(a[2][1] - a[1][1])
    assert m["fra"] == pytest.approx(a[1][1] - a[2][1])
    assert "BWT and F.Ra over the 1 of 2 earlier tasks" in m["metrics_note"] and "(sentiment)" in m["metrics_note"]
    # a skipped row leaves no evaluation behind, and the manifest records none: nothing for a resume to redo
    manifest = Manifest(k2_run)
    assert not (k2_run / "stages" / "00_topic" / "scores.json").exists()
    assert manifest.phase("00_topic", "evaluated") is None and manifest.phase("00_topic", "trained")
    assert manifest.phase("01_sentiment", "evaluated") and manifest.phase("02_addition", "evaluated")


def test_metrics_over_skipped_rows_are_pure_and_unchanged_when_every_row_exists():
    full = [[50.0, None, None], [40.0, 60.0, None], [30.0, 55.0, 70.0]]
    assert evaluated_rows(full) == [0, 1, 2] and transfer_tasks(full) == [0, 1]
    m = cl_metrics(full, [60.0, 60.0, 60.0])
    assert m == {"ap": (30 + 55 + 70) / 3, "fra": ((50 - 30) + (60 - 55)) / 2, "bwt": ((30 - 50) + (55 - 60)) / 2,
                 "fwt": ((50 - 60) + (60 - 60) + (70 - 60)) / 3}
    skipped = [[None] * 3, [40.0, 60.0, None], [30.0, 55.0, 70.0]]
    m = cl_metrics(skipped, [60.0, 60.0, 60.0])
    assert m["bwt"] == 55 - 60 and m["fra"] == 60 - 55 and m["fwt"] == ((60 - 60) + (70 - 60)) / 2
    only_last = [[None] * 3, [None] * 3, [30.0, 55.0, 70.0]]
    assert cl_metrics(only_last) == {"ap": (30 + 55 + 70) / 3, "fra": None, "bwt": None, "fwt": None}
    with pytest.raises(ValueError, match="missing its last row"):
        cl_metrics([[50.0, None], [None, None]])


def test_killed_anywhere_then_resumed_gives_the_same_run_and_redoes_no_skipped_row(k2_run, tmp_path):
    out = tmp_path / "run"
    points = ["stage0:epoch1:mid",      # training the stage whose row is skipped
              "stage1:epoch1",          # after stage 0 (skipped) is done: no metrics.json yet
              "stage1:eval",            # scoring the first evaluated row
              "stage2:epoch2:mid"]      # the last stage
    for point in points:
        p = sapt_run(out, point, tasks=TASKS, eval_every=2)
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr[-2000:])
        if point == "stage1:epoch1":
            assert not (out / "metrics.json").exists()
        if point == "stage2:epoch2:mid":  # metrics.json ends at the last evaluated row
            assert io.read_json(out / "metrics.json")["stages_done"] == 2
    p = sapt_run(out, tasks=TASKS, eval_every=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "redone" not in p.stderr and "not trusted" not in p.stderr, p.stderr[-3000:]
    assert_same_run(k2_run, out)
    # resumed once more with everything done: nothing is evaluated again, the skipped row stays null
    p = sapt_run(out, tasks=TASKS, eval_every=2)
    assert p.returncode == 0 and "redone" not in p.stderr
    assert not (out / "stages" / "00_topic" / "scores.json").exists()
    assert_same_run(k2_run, out)


def test_learn_eval_and_report_take_a_run_with_skipped_rows(k2_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(k2_run, out, ignore=shutil.ignore_patterns(".lock"))
    before = io.read_json(out / "metrics.json")["matrix"]
    # learn: the new stage is the last, so it is scored; row 0 stays null and the old last row (2) stays
    after = learn(out, write_task(tmp_path)).metrics
    assert after["evaluated_rows"] == [1, 2, 3]
    assert [r[:3] for r in after["matrix"][:3]] == before and after["matrix"][0] == [None] * 4
    assert after["bwt_fra_tasks"] == ["sentiment", "addition"]
    assert not (out / "stages" / "00_topic" / "scores.json").exists()
    capsys.readouterr()
    # eval re-scores the final model; with oracle routing it rewrites metrics.json, which keeps its rows
    assert main(["eval", "--run", str(out), "--routing", "oracle"]) == 0
    m = io.read_json(out / "metrics.json")
    assert m["evaluated_rows"] == [1, 2, 3] and "oracle_routed" in m and m["matrix"] == after["matrix"]
    capsys.readouterr()
    # report: the table with '-' for the skipped row, the note under the metrics line, and the plots
    assert main(["report", "--run", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[lines.index(next(ln for ln in lines if ln.startswith("AP "))) + 1].startswith("--eval-every 2: rows")
    assert (out / "plots").is_dir() and any((out / "plots").iterdir())


def test_k_may_change_on_resume_and_a_row_scored_late_is_the_row_of_a_k1_run(tmp_path):
    """eval_every is free on resume: a row is scored in its own stage's turn of the loop, with that stage's
    blocks, so a K = 2 run killed after skipping row 0 and resumed with K = 1 is the K = 1 run, byte for byte."""
    k1 = tmp_path / "k1"
    p = sapt_run(k1, tasks=TASKS)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((k1 / "metrics.json").read_text())
    assert not {"eval_every", "evaluated_rows", "bwt_fra_tasks", "metrics_note"} & set(m)  # K = 1: nothing new
    out = tmp_path / "run"
    p = sapt_run(out, "stage1:epoch1", tasks=TASKS, eval_every=2)
    assert p.returncode == -signal.SIGKILL
    p = sapt_run(out, tasks=TASKS, eval_every=1)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_run(k1, out)


@pytest.mark.parametrize("args", [["--eval-every", "0"], ["--eval-every", "-3"]])
def test_eval_every_below_one_is_refused_in_one_line(args, tmp_path, capsys):
    assert main(["run", "--model", "tiny-llama", "--output", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "eval_every must be >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_eval_every_in_a_config_file_is_checked_too(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("eval_every: 0\n")
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--model", "tiny-llama",
                 "--output", str(tmp_path / "r")]) == 2
    assert "eval_every must be >= 1" in capsys.readouterr().err
