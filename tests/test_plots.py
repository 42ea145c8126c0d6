"""Figures of a run (`sapt report`) and of several runs (`sapt compare`): files, and the plotted values."""
import json
import math
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from sapt import io
from sapt.cli import main
from sapt.config import FIELDS
from sapt.plots import plot_compare, plot_routing_weights, plot_score_curves, plot_score_matrix
from sapt.train import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["topic", "sentiment", "addition"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "run"
    settings = {"max_train_per_task": 16, "max_new_tokens": 2, "tasks": TASKS}
    if "reflection" in FIELDS:
        settings["reflection"] = False  # not what is tested here; keeps the run short
    run(tiny_config(out, **settings))
    return out


def assert_png(path, min_side=200):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > min_side and im.size[1] > min_side, im.size


def same_matrix(plotted, matrix):
    assert plotted.shape == (len(matrix), len(matrix[0]))
    for i, row in enumerate(matrix):
        for j, x in enumerate(row):
            if x is None:
                assert math.isnan(plotted[i, j])
            else:
                assert plotted[i, j] == pytest.approx(x, abs=1e-12)


def test_report_prints_the_table_and_writes_three_pngs(run_dir, capsys):
    assert main(["report", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "AP " in out and "after topic" in out
    for name in ("score_matrix", "routing_weights", "score_curves"):
        assert_png(run_dir / "plots" / f"{name}.png")


def test_a_method_without_a_router_gets_no_routing_figure_and_no_complaint(tmp_path, capsys):
    out = tmp_path / "seq"
    run(tiny_config(out, method="seq-lora", max_train_per_task=4, max_new_tokens=2, tasks=TASKS[:2]))
    capsys.readouterr()
    assert main(["report", "--run", str(out)]) == 0
    assert "not drawn" not in capsys.readouterr().err
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["score_curves.png", "score_matrix.png"]


def test_report_no_plots_writes_nothing(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots"))
    assert main(["report", "--run", str(copy), "--no-plots", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == TASKS  # stdout stays pure JSON
    assert not (copy / "plots").exists()


def test_report_of_a_non_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_score_matrix_and_curves_plot_the_metrics_json_values(run_dir, tmp_path):
    metrics = io.read_json(run_dir / "metrics.json")
    plotted = plot_score_matrix(metrics, tmp_path / "m.png")
    same_matrix(plotted, metrics["matrix"])
    assert_png(tmp_path / "m.png")

    scores, ap = plot_score_curves(metrics, tmp_path / "c.png")
    same_matrix(scores, metrics["matrix"])
    assert ap[-1] == pytest.approx(metrics["ap"])
    for i, row in enumerate(metrics["matrix"]):
        seen = [x for x in row if x is not None]
        assert ap[i] == pytest.approx(sum(seen) / len(seen))
    assert_png(tmp_path / "c.png")


def test_score_plots_of_a_run_in_progress_leave_unseen_tasks_blank(tmp_path):
    metrics = {"tasks": ["a", "b", "c"], "matrix": [[80.0, None, None], [60.0, 90.0, None]],
               "method": "sapt", "model": "tiny", "eval_split": "test"}
    plotted = plot_score_matrix(metrics, tmp_path / "m.png")
    same_matrix(plotted, metrics["matrix"])
    _, ap = plot_score_curves(metrics, tmp_path / "c.png")
    assert list(ap) == [80.0, 75.0]


def test_routing_plot_shows_the_mean_prediction_weights_after_the_last_stage(run_dir, tmp_path):
    last = run_dir / "stages" / f"{len(TASKS) - 1:02d}_{TASKS[-1]}" / "predictions"
    expected = []
    for task in TASKS:
        rows = [json.loads(line)["weights"] for line in (last / f"{task}.jsonl").read_text().splitlines()]
        expected.append([sum(r[k] for r in rows) / len(rows) for k in range(len(TASKS))])
    r = plot_routing_weights(run_dir, tmp_path / "r.png")
    assert r.eval_tasks == TASKS and r.blocks == TASKS and r.stage == len(TASKS) - 1
    np.testing.assert_allclose(r.weights, np.array(expected), rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.weights.sum(axis=1), 1.0, atol=1e-4)
    assert_png(tmp_path / "r.png")


def test_compare_plots_ap_and_bwt_of_each_run(run_dir, tmp_path, capsys):
    a, b = tmp_path / "with_arm", tmp_path / "one_stage"
    shutil.copytree(run_dir, a)
    shutil.copytree(run_dir, b)
    mb = io.read_json(b / "metrics.json")
    mb.update(ap=42.5, bwt=None, fra=None)  # a one-stage run has no BWT: drawn as n/a
    io.write_json(b / "metrics.json", mb)
    ma = io.read_json(a / "metrics.json")

    out = tmp_path / "cmp.png"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "with_arm" in table and "one_stage" in table and "42.5" in table and "n/a" in table
    assert_png(out)

    c = plot_compare([a, b], tmp_path / "cmp2.png")
    assert c.names == ["with_arm", "one_stage"]
    assert c.ap[0] == pytest.approx(ma["ap"]) and c.bwt[0] == pytest.approx(ma["bwt"])
    assert c.ap[1] == 42.5 and math.isnan(c.bwt[1])


def test_compare_names_runs_apart_when_directory_names_clash(run_dir, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    shutil.copytree(run_dir, tmp_path / "x" / "run")
    shutil.copytree(run_dir, tmp_path / "y" / "run")
    c = plot_compare([tmp_path / "x" / "run", tmp_path / "y" / "run"], tmp_path / "c.png")
    assert len(set(c.names)) == 2 and all("run" in n for n in c.names)


def test_compare_refuses_an_out_in_a_missing_folder(run_dir, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "c.png"
    assert main(["compare", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sapt: error: --out {out}: folder {tmp_path / 'a' / 'b'} does not exist"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# (--out, the bytes the file starts with; None: refused in one line, nothing written)
COMPARE_OUTS = [("c.png", PNG_MAGIC), ("c.PDF", b"%PDF"), ("c.svg", b"<?xml"), ("chart", PNG_MAGIC),
                ("c.jpg", None), ("c.txt", None)]


@pytest.mark.parametrize("name, magic", COMPARE_OUTS, ids=[n for n, _ in COMPARE_OUTS])
def test_compare_writes_the_format_its_suffix_names(name, magic, run_dir, tmp_path, capsys):
    """`compare --out x.pdf` wrote PNG bytes into x.pdf, which opens nowhere."""
    out = tmp_path / name
    code = main(["compare", str(run_dir), "--out", str(out)])
    if magic is None:
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"sapt: error: --out {out}:") and ".pdf" in err[0]
        assert not out.exists()
        return
    assert code == 0 and out.read_bytes().startswith(magic)
