"""Continual-learning metrics against numbers worked out by hand."""

import pytest

from sapt.evaluation.metrics import cl_metrics, format_table, short_name

# a[i][j] = score on task j after training through task i.
# Task 0 improves after task 1 (80 -> 85), so its best score is off the diagonal.
A = [
    [80.0, None, None],
    [85.0, 60.0, None],
    [75.0, 54.0, 90.0],
]
SINGLE = [70.0, 65.0, 80.0]


def test_ap():
    # final row: (75 + 54 + 90) / 3 = 219 / 3 = 73
    assert cl_metrics(A)["ap"] == pytest.approx(73.0)


def test_fra_uses_best_earlier_score_not_diagonal():
    # task 0: max(a[0][0], a[1][0]) - a[2][0] = max(80, 85) - 75 = 10
    # task 1: max(a[1][1]) - a[2][1] = 60 - 54 = 6
    # F.Ra = (10 + 6) / 2 = 8   (using the diagonal 80 instead would give 5)
    assert cl_metrics(A)["fra"] == pytest.approx(8.0)


def test_bwt_divides_by_t_minus_1():
    # task 0: 75 - 80 = -5 ; task 1: 54 - 60 = -6
    # BWT = -11 / 2 = -5.5   (the public scorer's -11 / 3 = -3.67 would be wrong)
    assert cl_metrics(A)["bwt"] == pytest.approx(-5.5)


def test_fwt():
    # (80 - 70) + (60 - 65) + (90 - 80) = 10 - 5 + 10 = 15 ; 15 / 3 = 5
    assert cl_metrics(A, SINGLE)["fwt"] == pytest.approx(5.0)
    assert cl_metrics(A)["fwt"] is None


def test_single_task_run():
    m = cl_metrics([[42.0]])
    assert m["ap"] == pytest.approx(42.0)
    assert m["fra"] is None and m["bwt"] is None and m["fwt"] is None
    # 42 - 40 = 2
    assert cl_metrics([[42.0]], [40.0])["fwt"] == pytest.approx(2.0)


def test_partial_run_uses_rows_available():
    # 2 of 3 stages done: T = 2, last row [85, 60, None] is final
    part = A[:2]
    m = cl_metrics(part, SINGLE)
    assert m["ap"] == pytest.approx(72.5)  # (85 + 60) / 2
    assert m["fra"] == pytest.approx(-5.0)  # max(a[0][0]) - a[1][0] = 80 - 85
    assert m["bwt"] == pytest.approx(5.0)  # 85 - 80
    assert m["fwt"] == pytest.approx(2.5)  # ((80 - 70) + (60 - 65)) / 2 = 5 / 2


def test_returns_plain_floats():
    m = cl_metrics([[80, None], [70, 60]], [50, 50])
    assert all(type(v) is float for v in m.values())


def test_errors():
    with pytest.raises(ValueError):
        cl_metrics([])
    with pytest.raises(ValueError):  # a seen task's score is missing
        cl_metrics([[80.0, None], [None, 60.0]])
    with pytest.raises(ValueError):  # fewer single-task scores than tasks
        cl_metrics(A, [70.0, 65.0])


def test_short_name():
    assert short_name("task1572_samsum_summary") == "t1572_samsum"
    assert short_name("dbpedia") == "dbpedia"
    assert len(short_name("a_very_long_task_name_without_number")) == 12


def test_format_table():
    tasks = ["task1572_samsum_summary", "task363_sst2_polarity_classification", "yelp"]
    metrics = cl_metrics(A[:2])
    routing = [[100.0, None, None], [97.5, 88.24, None]]
    out = format_table(tasks, A[:2], metrics, title="demo run", extra={"routing accuracy": routing})
    lines = out.splitlines()
    assert lines[0] == "demo run"
    assert "t1572_samsum" in lines[1] and "t363_sst2_po" in lines[1] and "yelp" in lines[1]
    row0 = lines[2].split()
    assert row0[:2] == ["after", "t1572_samsum"]
    assert row0[2:] == ["80.0", "-", "-"]
    assert lines[3].split()[2:] == ["85.0", "60.0", "-"]
    # AP 72.5, F.Ra -5.0, BWT 5.0, no single-task scores
    assert "AP 72.5  F.Ra -5.0  BWT 5.0  FWT n/a" in out
    assert "routing accuracy" in out
    # 1 decimal: 88.24 -> 88.2
    assert "97.5" in out and "88.2" in out


def test_format_table_single_row_metrics_na():
    out = format_table(["a", "b"], [[50.0, None]], cl_metrics([[50.0, None]]))
    assert "AP 50.0  F.Ra n/a  BWT n/a  FWT n/a" in out
