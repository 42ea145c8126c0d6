"""`sapt fetch-benchmark` on local zip archives (file:// URLs): extraction, layout checks, no half-written DEST."""
import json
import stat
import struct
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


def refused_by_cli(tmp_path, capsys, url, *flags):
    """Run the CLI into an existing DEST with --force; returns the one error line. DEST must be unchanged."""
    dest = tmp_path / "CL"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    assert main(["fetch-benchmark", "--dest", str(dest), "--url", url, "--force", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "error" in line or "Traceback" in line] == err[-1:]  # progress, then one line
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"] and (dest / "old.txt").read_text() == "old"
    assert leftovers(tmp_path, {"CL", "bad.zip"}) == []
    return err[-1]


@pytest.mark.parametrize("extra, member", [
    ({"SAPT-main/CL_Benchmark/SuperNI/x": "a file", "SAPT-main/CL_Benchmark/SuperNI/x/y.json": "{}"},
     "SAPT-main/CL_Benchmark/SuperNI/x is both a file and a folder"),
    ({"SAPT-main/CL_Benchmark/SuperNI/x/y.json": "{}", "SAPT-main/CL_Benchmark/SuperNI/x": "a file"},
     "SAPT-main/CL_Benchmark/SuperNI/x is both a file and a folder"),
    ({"SAPT-main/CL_Benchmark/SuperNI/x/": "", "SAPT-main/CL_Benchmark/SuperNI/x": "a file"},
     "SAPT-main/CL_Benchmark/SuperNI/x is both a file and a folder"),
])
def test_members_that_collide_are_refused_before_writing(tmp_path, capsys, extra, member):
    url = make_zip(tmp_path / "bad.zip", {**repo_files(), **extra})
    line = refused_by_cli(tmp_path, capsys, url)
    assert line.startswith("sapt: error: the archive member " + member)


def test_a_member_used_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "bad.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        make_zip(path, repo_files())
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("SAPT-main/CL_Benchmark/SuperNI/task1_a/train.json", task_json(3))
    line = refused_by_cli(tmp_path, capsys, path.as_uri())
    assert line == ("sapt: error: the archive member SAPT-main/CL_Benchmark/SuperNI/task1_a/train.json appears "
                    "twice; refusing the archive")


def test_a_symlink_member_is_refused(tmp_path, capsys):
    path = tmp_path / "bad.zip"
    make_zip(path, repo_files())
    link = zipfile.ZipInfo("SAPT-main/CL_Benchmark/SuperNI/task1_a/test.json")
    link.create_system = 3  # unix
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(link, "/etc/passwd")
    line = refused_by_cli(tmp_path, capsys, path.as_uri())
    assert line == ("sapt: error: the archive member SAPT-main/CL_Benchmark/SuperNI/task1_a/test.json is a "
                    "symbolic link; refusing the archive")


def zip_bomb(path, size=1 << 20):
    """A small zip (about 1 KB per MB: zeros compress well) that unpacks to `size` bytes more."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in repo_files().items():
            zf.writestr(name, text)
        zf.writestr("SAPT-main/CL_Benchmark/SuperNI/task1_a/big.bin", b"\0" * size)
    return path.as_uri()


def test_the_unpacked_size_is_capped_and_the_cap_can_be_raised(tmp_path, capsys):
    url = zip_bomb(tmp_path / "bad.zip")
    assert (tmp_path / "bad.zip").stat().st_size < 10_000
    line = refused_by_cli(tmp_path, capsys, url, "--max-bytes", "100000")
    assert line == ("sapt: error: the archive's CL_Benchmark/ unpacks to more than 100000 bytes (the cap); "
                    "if that is expected, raise it with --max-bytes N")
    assert main(["fetch-benchmark", "--dest", str(tmp_path / "CL"), "--url", url, "--force",
                 "--max-bytes", str(2 << 20)]) == 0
    assert (tmp_path / "CL" / "SuperNI" / "task1_a" / "big.bin").stat().st_size == 1 << 20


def test_the_cap_counts_the_bytes_written_not_the_declared_sizes(tmp_path, capsys, monkeypatch):
    import sapt.fetch

    monkeypatch.setattr(sapt.fetch, "declared_bytes", lambda members: 0)  # an archive that lies
    line = refused_by_cli(tmp_path, capsys, zip_bomb(tmp_path / "bad.zip"), "--max-bytes", "100000")
    assert "more than 100000 bytes" in line and "--max-bytes" in line


def test_a_member_larger_than_it_claims_is_refused_as_damaged(tmp_path, capsys):
    path = tmp_path / "bad.zip"
    zip_bomb(path, size=1000)
    data = bytearray(path.read_bytes())
    name = b"SAPT-main/CL_Benchmark/SuperNI/task1_a/big.bin"
    entry = data.rindex(name) - 46  # its central directory entry: the uncompressed size is at offset 24
    assert data[entry:entry + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, entry + 24, 500)
    path.write_bytes(bytes(data))
    line = refused_by_cli(tmp_path, capsys, path.as_uri())
    assert line.startswith(f"sapt: error: the archive member {name.decode()} is damaged")
