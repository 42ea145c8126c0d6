"""Habits of Hugging Face users at the command line (issue 26, point 8): `sapt --version`, an unknown
model name refused at once with the reserved names (and the closest one), and "did you mean" for a
mistyped option."""
import time

import pytest

import sapt
from sapt.cli import main, package_version
from sapt.config import ConfigError, resolve
from sapt.model_names import RESERVED


def test_version_prints_the_installed_version(capsys, monkeypatch):
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"sapt {package_version()}\n"
    from sapt.version import DISTRIBUTION

    assert package_version() == metadata.version(DISTRIBUTION)  # this checkout is installed as sapt-cl (make install)
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {})  # a source tree, not installed
    assert package_version() == sapt.__version__


@pytest.mark.parametrize("name, closest", [("tiny-lama", "tiny-llama"), ("smollm", "smollm2"), ("tiny_t5", "tiny-t5"),
                                           ("tiny-mistral", "tiny-gemma"), ("no such/model name", None)])
def test_an_unknown_model_name_is_refused_at_once_naming_the_reserved_names(name, closest, capsys, tmp_path):
    t0 = time.time()
    assert main(["run", "--model", name, "--output", str(tmp_path / "out")]) == 2
    assert time.time() - t0 < 10  # no hub retries (they took 28 s)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"model {name!r}" in err and all(r in err for r in RESERVED) and "owner/name" in err
    assert (f"did you mean {closest!r}?" in err) if closest else "did you mean" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="is unknown"):
        sapt.run(model=name, output=str(tmp_path / "api"))


def test_reserved_names_local_paths_and_hub_ids_pass_the_check(tmp_path):
    for name in [*RESERVED, "google-t5/t5-large", "meta-llama/Llama-2-7b-chat-hf", "gpt2", "t5-large", str(tmp_path)]:
        assert resolve({"model": name}).model == name


@pytest.mark.parametrize("argv, said", [
    (["run", "--lrr", "1e-3"], "unrecognized option --lrr; did you mean --lr?"),
    (["run", "--max-train-per-tsk=3"], "unrecognized option --max-train-per-tsk; did you mean --max-train-per-task?"),
    (["predict", "--run", "r", "--defintion", "d", "text"], "unrecognized option --defintion; did you mean --definition?"),
    (["--verison"], "unrecognized option --verison; did you mean --version?"),
    (["run", "--zzqqxx", "1"], "unrecognized option --zzqqxx (see sapt run --help)"),
])
def test_a_mistyped_option_gets_the_closest_one_on_one_line(argv, said, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and said in err
