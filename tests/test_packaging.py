"""Installable as a package (issue 26, point 3): a distribution name free of the unrelated `sapt` on PyPI, a core
install without test tools or the heavy optional packages, extras for them, bounds that requirements/lowest.txt
pins and requirements/lock.txt meets, `sapt --version` from the installed distribution, and a datasets
save_to_disk folder refused in one line naming the extra when `datasets` is not installed."""
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sapt import cli
from sapt.data import DataError, load_task
from sapt.data.validate import validate_benchmark
from sapt.version import DISTRIBUTION, __version__

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
CORE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}
# Optional: test tools, trackers, and datasets with what it brings (pyarrow and pandas, about 265 MB)
NOT_CORE = {"pytest", "hypothesis", "tensorboard", "wandb", "datasets", "pyarrow", "pandas"}


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def pins(path: Path) -> dict[str, str]:
    """name -> version of each `name==version` line."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            found[canonicalize_name(m.group(1))] = m.group(2)
    return found


# ----------------------------------------------------------------------------- pyproject.toml


def test_the_distribution_name_is_not_the_unrelated_sapt_and_the_code_knows_it():
    assert canonicalize_name(PROJECT["name"]) != "sapt"  # sapt on PyPI: another project (3.0.2, 2022)
    assert canonicalize_name(PROJECT["name"]) == canonicalize_name(DISTRIBUTION) == "sapt-cl"
    assert PROJECT["scripts"] == {"sapt": "sapt.cli:main"}  # the command keeps its name
    assert SETUPTOOLS["packages"]["find"]["include"] == ["sapt*"]  # and so does the import name


def test_the_version_is_written_once_in_sapt_version():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "sapt.version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_the_core_dependencies_leave_out_test_tools_trackers_and_datasets():
    core = names(CORE)
    assert not core & NOT_CORE, core & NOT_CORE
    assert {"torch", "transformers", "peft", "accelerate", "rouge-score", "matplotlib"} <= core


def test_each_optional_feature_has_its_extra_and_dev_holds_the_test_tools():
    assert {"tensorboard", "wandb", "datasets", "dev"} <= set(EXTRAS)
    assert names(EXTRAS["tensorboard"]) == {"tensorboard"}
    assert names(EXTRAS["wandb"]) == {"wandb"}
    assert names(EXTRAS["datasets"]) == {"datasets"}
    dev = {canonicalize_name(r.name): r for r in EXTRAS["dev"]}
    assert {"pytest", "hypothesis"} <= set(dev)
    # the tests import tensorboard and datasets: dev takes in those extras, with the same bounds
    for extra in ("tensorboard", "datasets"):
        (req,) = EXTRAS[extra]
        assert str(dev[canonicalize_name(req.name)]) == str(req), extra


def _lower_bound(req: Requirement) -> str | None:
    bounds = [s.version for s in req.specifier if s.operator == ">="]
    return bounds[0] if bounds else None


def test_requirements_lowest_pins_each_lower_bound_of_the_core_and_dev_sets():
    lowest = {name: Version(v) for name, v in pins(ROOT / "requirements" / "lowest.txt").items()}
    want = {canonicalize_name(r.name): _lower_bound(r) for r in CORE + EXTRAS["dev"]}
    assert None not in want.values(), want  # every tested dependency has a lower bound
    assert lowest == {name: Version(v) for name, v in want.items()}  # 1.12 == 1.12.0


def test_requirements_lock_meets_every_core_and_dev_requirement():
    lock = pins(ROOT / "requirements" / "lock.txt")
    for req in CORE + EXTRAS["dev"]:
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} is not in requirements/lock.txt (make lock)"
        assert req.specifier.contains(lock[name], prereleases=True), (str(req), lock[name])
    assert lock["torch"] == "2.13.0"  # the CPU wheel on this machine's disk
    assert "sapt" not in lock and "sapt-cl" not in lock  # the project itself is not locked


# ----------------------------------------------------------------------------- the installed distribution


def test_sapt_version_is_the_installed_distributions(capsys):
    from importlib import metadata

    try:
        installed = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{DISTRIBUTION} is not installed in this venv (one made before the rename from `sapt`): "
                    "make install")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"sapt {installed}\n"
    assert installed == __version__


# ----------------------------------------------------------------------------- without the datasets package


def _benchmark(root: Path) -> Path:
    """Mine/alpha: a datasets folder (never read: the import fails first); Mine/beta: JSON Lines."""
    (root / "Mine" / "alpha" / "train").mkdir(parents=True)
    (root / "Mine" / "alpha" / "train" / "data-00000-of-00001.arrow").write_bytes(b"")
    beta = root / "Mine" / "beta"
    beta.mkdir(parents=True)
    (beta / "train.jsonl").write_text("".join(f'{{"input": "q {i}", "output": "a {i}"}}\n' for i in range(12)))
    return root


@pytest.fixture
def no_datasets(monkeypatch):
    """`datasets` unimportable, as in the core install."""
    for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError):
        import datasets  # noqa: F401


def test_a_datasets_folder_without_the_package_is_one_line_naming_the_extra(no_datasets, tmp_path, capsys):
    data = _benchmark(tmp_path / "data")
    folder = data / "Mine" / "alpha" / "train"
    fix = f"pip install '{DISTRIBUTION}[datasets]'"
    with pytest.raises(DataError) as e:
        load_task(data, "Mine", "alpha")
    assert str(e.value).startswith(f"{folder}: ") and fix in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match=re.escape(fix)):
        validate_benchmark(data, "Mine", ["alpha", "beta"])

    code = cli.main(["run", "--model", "tiny-llama", "--data-dir", str(data), "--benchmark", "Mine",
                     "--tasks", "alpha,beta", "--output", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"sapt: error: {folder}: ") and fix in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "run").exists()


def test_json_lines_tasks_need_no_datasets_package(no_datasets, tmp_path):
    data = _benchmark(tmp_path / "data")
    assert validate_benchmark(data, "Mine", ["beta"]) == ([], [])
    task = load_task(data, "Mine", "beta", val_size=2, max_eval=3)
    assert len(task.train) == 7 and len(task.eval) == 3 and len(task.val) == 2
