"""Files and folders sapt writes are readable as the umask says (issue 26, point 4): a run, its plots and
its export under umask 022 are 0644 / 0755 for teammates on shared storage, under 077 private."""
import os
import stat

import pytest

from sapt import io
from sapt.cli import main


def _modes(root):
    """{path relative to root: permission bits} of every file and folder below root (root included)."""
    modes = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            modes[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return modes


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_to(mask):
        os.umask(mask)
        return mask

    yield set_to
    os.umask(old)


def test_current_umask_reads_it_without_changing_it(umask):
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        assert io.current_umask() == mask
        assert io.file_mode() == 0o666 & ~mask
        assert os.umask(mask) == mask  # still set as it was


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_a_run_its_plots_and_its_export_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    run_dir, export = tmp_path / "run", tmp_path / "export"
    assert main(["run", "--model", "tiny-llama", "--output", str(run_dir), "--tasks", "topic,sentiment",
                 "--max-train-per-task", "8", "--max-eval-per-task", "4", "--epochs", "1", "--max-new-tokens", "3",
                 "--reflection-source", "real"]) == 0
    assert main(["report", "--run", str(run_dir)]) == 0
    assert main(["export", "--run", str(run_dir), "--out", str(export)]) == 0
    for root in (run_dir, export):
        modes = _modes(root)
        files = {p: m for p, m in modes.items() if not os.path.isdir(root / p)}
        folders = {p: m for p, m in modes.items() if os.path.isdir(root / p)}
        assert any(p.endswith(".png") for p in files) or root == export  # the plots are among them
        assert files and all(m == file_mode for m in files.values()), {p: oct(m) for p, m in files.items() if m != file_mode}
        assert all(m == dir_mode for m in folders.values()), {p: oct(m) for p, m in folders.items() if m != dir_mode}
