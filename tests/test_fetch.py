"""`sapt fetch-benchmark` on local zip archives (file:// URLs): extraction, layout checks, no half-written DEST."""
import json
import zipfile

import pytest

from sapt.cli import main
from sapt.config import ConfigError
from sapt.data import load_benchmark
from sapt.fetch import fetch_benchmark


def task_json(n=12, labels=("yes", "no"), prefix="question"):
    return json.dumps({"Definition": ["Answer."],
                       "Instances": [{"input": f"{prefix} {i}", "output": labels[i % len(labels)]} for i in range(n)]})


def make_zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path.as_uri()


def repo_files(top="SAPT-main"):
    return {
        f"{top}/README.md": "# SAPT",
        f"{top}/src/run.py": "print('not wanted')",
        f"{top}/CL_Benchmark/SuperNI/task1_a/train.json": task_json(),
        f"{top}/CL_Benchmark/SuperNI/task2_b/train.json": task_json(),
        f"{top}/CL_Benchmark/SuperNI/task2_b/test.json": task_json(4, prefix="test question"),
        f"{top}/CL_Benchmark/Long_Sequence/sst2/train.json": task_json(),
        f"{top}/CL_Benchmark/Long_Sequence/sst2/labels.json": json.dumps(["yes", "no"]),
        f"{top}/CL_Benchmark/Long_Sequence/yahoo/labels.json": json.dumps(["a"]),  # no train.json
    }


def leftovers(parent, keep):
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def test_fetch_extracts_only_cl_benchmark_and_checks_the_layout(tmp_path, capsys):
    url = make_zip(tmp_path / "repo.zip", repo_files())
    dest = tmp_path / "data" / "CL"
    assert main(["fetch-benchmark", "--dest", str(dest), "--url", url]) == 0
    out = capsys.readouterr().out
    assert "SuperNI: 2 tasks" in out and "Long_Sequence: 1 tasks" in out and "yahoo" in out
    assert sorted(p.name for p in dest.iterdir()) == ["Long_Sequence", "SuperNI"]
    assert (dest / "SuperNI" / "task2_b" / "test.json").is_file()
    assert not (dest / "README.md").exists() and not (dest / "src").exists()
    assert leftovers(dest.parent, {"CL"}) == []  # no temporary file or directory left behind
    tasks = load_benchmark(dest, "SuperNI", tasks=["task1_a", "task2_b"], val_size=2, seed=0)
    assert [t.name for t in tasks] == ["task1_a", "task2_b"]


def test_fetch_refuses_a_non_empty_dest_unless_forced(tmp_path):
    url = make_zip(tmp_path / "repo.zip", repo_files(top="SAPT-52a52b9"))
    dest = tmp_path / "CL"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(ConfigError, match="--force"):
        fetch_benchmark(dest, url)
    assert (dest / "old.txt").read_text() == "old"
    summary = fetch_benchmark(dest, url, force=True)
    assert not (dest / "old.txt").exists() and (dest / "Long_Sequence" / "sst2" / "train.json").is_file()
    assert summary.tasks == {"SuperNI": ["task1_a", "task2_b"], "Long_Sequence": ["sst2"]}
    assert summary.incomplete == {"Long_Sequence": ["yahoo"]}
    assert leftovers(tmp_path, {"CL", "repo.zip"}) == []


def test_an_empty_dest_is_filled(tmp_path):
    dest = tmp_path / "CL"
    dest.mkdir()
    fetch_benchmark(dest, make_zip(tmp_path / "r.zip", repo_files()))
    assert (dest / "SuperNI" / "task1_a" / "train.json").is_file()


@pytest.mark.parametrize("files, message", [
    ({"SAPT-main/README.md": "x", "SAPT-main/data/train.json": "{}"}, "no CL_Benchmark/ folder"),
    ({"SAPT-main/CL_Benchmark/SuperNI/t/train.json": "{}"}, "no Long_Sequence/ folder"),
    ({"SAPT-main/CL_Benchmark/SuperNI/t/train.json": "{}",
      "SAPT-main/CL_Benchmark/Long_Sequence/x/labels.json": "[]"}, "Long_Sequence/ has no task folder"),
    ({"SAPT-main/CL_Benchmark/../../evil.txt": "x"}, "unsafe path"),
])
def test_bad_archives_are_refused_and_leave_nothing(tmp_path, files, message):
    url = make_zip(tmp_path / "bad.zip", files)
    dest = tmp_path / "CL"
    with pytest.raises(ConfigError, match=message):
        fetch_benchmark(dest, url)
    assert leftovers(tmp_path, {"bad.zip"}) == []


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "page.html").write_text("<html>not a zip</html>")
    assert main(["fetch-benchmark", "--dest", str(tmp_path / "CL"), "--url", (tmp_path / "page.html").as_uri()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "sapt: error: the download is not a zip archive"
    assert main(["fetch-benchmark", "--dest", str(tmp_path / "CL"), "--url", (tmp_path / "missing.zip").as_uri()]) == 2
    assert "cannot download" in capsys.readouterr().err
    assert leftovers(tmp_path, {"page.html"}) == []
