"""Figures of a run (`sapt report`) and of several runs (`sapt compare`): files, and the plotted values."""
import json
import math
import os
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from sapt import io
from sapt.cli import main
from sapt.config import FIELDS
from sapt.evaluation.plots import (
    FORMAT_MAGIC,
    compare_runs,
    draw_compare,
    draw_score_curves,
    draw_score_matrix,
    draw_unseen_curves,
    plot_compare,
    plot_routing_weights,
    plot_run,
    plot_score_curves,
    plot_score_matrix,
    routing_means,
    save_figure,
)
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
    # the tasks column counts tasks, the stages column what the run did of its stages (issue 27)
    head, row_a = table.splitlines()[0].split(), next(line for line in table.splitlines() if "with_arm" in line).split()
    n = len(ma["tasks"])
    assert head[-5:-3] == ["tasks", "stages"] and row_a[-5:-3] == [str(n), f"{ma['stages_done']}/{n}"]

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


# ---- issue 26, point 5: paper-ready figures -----------------------------------------------------------------
NEAR_TOP = {"tasks": ["topic", "sentiment", "reverse_words", "addition"], "method": "sapt", "model": "tiny",
            "eval_split": "test", "matrix": [[100.0, None, None, None], [100.0, 100.0, None, None],
                                             [100.0, 100.0, 90.6, None], [100.0, 100.0, 96.9, 100.0]]}


def png_dpi(path):
    """The dpi a PNG file records (its pHYs chunk, in whole dots per metre: 150 reads back as 150.012)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.info["dpi"]


def data_lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_report_writes_every_format_asked_for_at_the_dpi_asked_for(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots"))
    assert main(["report", "--run", str(copy), "--format", "png,PDF,svg", "--dpi", "300"]) == 0
    names = ("score_matrix", "routing_weights", "score_curves")
    assert sorted(p.name for p in (copy / "plots").iterdir()) == sorted(f"{n}.{f}" for n in names
                                                                         for f in ("png", "pdf", "svg"))
    for name in names:
        for fmt, magic in FORMAT_MAGIC.items():
            assert (copy / "plots" / f"{name}.{fmt}").read_bytes().startswith(magic), (name, fmt)
        assert png_dpi(copy / "plots" / f"{name}.png") == pytest.approx((300, 300), abs=0.05)
    assert "score_matrix.pdf" in capsys.readouterr().err


def test_report_writes_png_at_150_dpi_by_default(run_dir, tmp_path):
    out = plot_run(run_dir, tmp_path)
    assert sorted(p.suffix for p in out.written) == [".png"] * 3
    assert png_dpi(out.files["score_curves"]) == pytest.approx((150, 150), abs=0.05)


# (command, option, value): each refused at parsing, in one line naming the option, exit 2, nothing written
BAD_FIGURE_OPTIONS = [("report", "--format", "jpg"), ("report", "--format", "png,gif"), ("report", "--format", ","),
                      ("report", "--dpi", "0"), ("report", "--dpi", "-5"), ("report", "--dpi", "abc"),
                      ("report", "--dpi", "nan"), ("compare", "--format", "eps"), ("compare", "--dpi", "0"),
                      ("compare", "--dpi", "1e9")]


@pytest.mark.parametrize("command, option, value", BAD_FIGURE_OPTIONS, ids=["-".join(x) for x in BAD_FIGURE_OPTIONS])
def test_a_bad_format_or_dpi_is_one_line_naming_the_option(command, option, value, run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots"))
    argv = (["report", "--run", str(copy)] if command == "report" else ["compare", str(copy), "--out",
                                                                           str(tmp_path / "c.png")])
    assert main([*argv, f"{option}={value}"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"argument {option}" in err[0] and "Traceback" not in captured.err, err
    assert captured.out == ""  # refused before the table is printed
    assert not (copy / "plots").exists() and not (tmp_path / "c.png").exists()


def test_compare_format_writes_out_with_each_suffix(run_dir, tmp_path, capsys):
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "cmp.png"), "--format", "png,pdf,svg",
                 "--dpi", "72"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.pdf", "cmp.png", "cmp.svg"]
    for fmt, magic in FORMAT_MAGIC.items():
        assert (tmp_path / f"cmp.{fmt}").read_bytes().startswith(magic)
    assert png_dpi(tmp_path / "cmp.png") == pytest.approx((72, 72), abs=0.05)
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "bare"), "--format", "svg"]) == 0
    assert (tmp_path / "bare.svg").read_bytes().startswith(b"<?xml")


def test_compare_refuses_an_out_suffix_that_format_does_not_name(run_dir, tmp_path, capsys):
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "c.pdf"), "--format", "png,svg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--format" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_score_curves_give_each_task_a_panel_of_its_own_so_no_line_hides_another():
    """On one axis, tasks that all stay at 100 were drawn on top of each other: 2 of 4 lines could not be seen."""
    fig = draw_score_curves(NEAR_TOP)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["AP (mean over seen tasks)", "1: topic", "2: sentiment",
                                               "3: reverse_words", "4: addition"]
    for ax in axes:
        assert len(data_lines(ax)) == 1, ax.get_title()  # one curve per panel
    ap = data_lines(axes[0])[0]
    np.testing.assert_allclose(ap.get_ydata(), [100.0, 100.0, 96.866667, 99.225], atol=1e-4)
    for j, ax in enumerate(axes[1:]):
        line = data_lines(ax)[0]
        column = [row[j] for row in NEAR_TOP["matrix"] if row[j] is not None]
        assert list(line.get_xdata()) == list(range(j + 1, 5)) and list(line.get_ydata()) == column
        assert line.get_marker() == "o"  # a task seen at one stage only is still a visible point
    assert {ax.get_ylim() for ax in axes} == {axes[0].get_ylim()}  # one 0-100 scale to compare panels by


def test_unseen_curves_are_small_multiples_too():
    metrics = dict(NEAR_TOP, unseen={"tasks": ["u1", "u2"], "base": [50.0, 50.0],
                                     "matrix": [[50.0, 50.0]] * 4})
    axes = draw_unseen_curves(metrics).get_axes()
    assert [ax.get_title() for ax in axes] == ["mean over unseen tasks", "u1", "u2"]
    assert all(len(data_lines(ax)) == 1 for ax in axes)


def cell_colour(fig, value):
    mesh = fig.get_axes()[0].collections[0]
    return np.array(mesh.cmap(mesh.norm(value))[:3])


def test_score_matrix_colours_tell_90_from_100_and_print_every_value():
    fig = draw_score_matrix(NEAR_TOP)
    far = np.linalg.norm(cell_colour(fig, 90.6) - cell_colour(fig, 100.0))
    linear = np.linalg.norm(np.array(fig.get_axes()[0].collections[0].cmap(0.906)[:3])
                            - np.array(fig.get_axes()[0].collections[0].cmap(1.0)[:3]))
    assert far > 0.5 and far > 3 * linear, (far, linear)  # a linear 0-100 scale put them 0.24 apart
    assert np.linalg.norm(cell_colour(fig, 0.0) - cell_colour(fig, 50.0)) > 0.3  # low scores still apart
    texts = sorted(t.get_text() for t in fig.get_axes()[0].texts)
    assert texts == sorted(["100.0"] * 8 + ["90.6", "96.9"])  # every seen cell, none for the unseen ones


def test_compare_has_f_ra_and_gives_bwt_and_f_ra_axes_of_their_own(run_dir, tmp_path):
    a, b = tmp_path / "forgets", tmp_path / "one_stage"
    for d in (a, b):
        shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("plots"))
    ma = io.read_json(a / "metrics.json")
    ma.update(ap=61.0, bwt=-4.5, fra=6.25)
    io.write_json(a / "metrics.json", ma)
    mb = io.read_json(b / "metrics.json")
    mb.update(ap=42.5, bwt=None, fra=None)
    io.write_json(b / "metrics.json", mb)

    c = compare_runs([a, b])
    assert c.fra[0] == 6.25 and math.isnan(c.fra[1])
    axes = draw_compare(c).get_axes()
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["AP", "BWT", "F.Ra"]
    widths = {ax.get_title().split(" ")[0]: [p.get_width() for p in ax.patches] for ax in axes}
    assert widths == {"AP": [61.0, 42.5], "BWT": [-4.5, 0.0], "F.Ra": [6.25, 0.0]}
    labels = {ax.get_title().split(" ")[0]: [t.get_text() for t in ax.texts] for ax in axes}
    assert labels["F.Ra"] == ["6.2", "n/a"] and labels["BWT"] == ["-4.5", "n/a"]
    ap_ax, bwt_ax, fra_ax = axes
    assert ap_ax.get_xlim()[1] >= 100  # AP on its 0-100 scale
    assert -10 < bwt_ax.get_xlim()[0] < -4.5 and bwt_ax.get_xlim()[1] < 10  # BWT on its own, not AP's, axis
    assert 6.25 < fra_ax.get_xlim()[1] < 12
    assert [t.get_text().split("\n")[0] for t in ap_ax.get_yticklabels()][0].startswith("forgets")


def test_pdf_has_truetype_fonts_and_pdf_and_svg_are_the_same_bytes_each_time(tmp_path):
    """Type 3 fonts (matplotlib's PDF default) are refused by publishers' checkers; no dates: reproducible."""
    fig = draw_score_matrix(NEAR_TOP)
    first = save_figure(fig, tmp_path / "a", ["pdf", "svg"])
    second = save_figure(draw_score_matrix(NEAR_TOP), tmp_path / "b", ["pdf", "svg"])
    assert [p.name for p in first] == ["a.pdf", "a.svg"]
    pdf = first[0].read_bytes()
    assert b"/Type3" not in pdf and b"/FontType 3" not in pdf and b"CIDFontType2" in pdf
    for x, y in zip(first, second):
        assert x.read_bytes() == y.read_bytes(), x.name
    assert b"<image" not in first[1].read_bytes().split(b"<g id=\"axes_2\"")[0]  # heat map cells are vector


def test_figures_are_written_atomically_with_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        paths = save_figure(draw_score_curves(NEAR_TOP), tmp_path / "curves", ["png", "svg"])
    finally:
        os.umask(old)
    assert [oct(p.stat().st_mode & 0o777) for p in paths] == ["0o640", "0o640"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "curves.svg"]  # no temporary left


def test_routing_weights_read_prediction_lines_holding_unicode_line_breaks(run_dir, tmp_path):
    """str.splitlines split JSON Lines inside strings at U+0085 (IMDB reviews): the figure failed on it."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots"))
    path = copy / "stages" / f"{len(TASKS) - 1:02d}_{TASKS[-1]}" / "predictions" / f"{TASKS[0]}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    rows[0]["input"] = "a review\u0085with\u2028breaks"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    r = routing_means(copy)
    assert r.counts[0] == len(rows)
