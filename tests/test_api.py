"""The Python API (sapt.run, sapt.load): the README's example runs as written, and the CLI's `run` and
`predict` give what the API gives."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sapt
from sapt.cli import main
from sapt.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "tiny-llama", "tasks": ["topic", "sentiment"], "epochs": 1, "max_train_per_task": 8,
        "max_eval_per_task": 4, "max_new_tokens": 3, "reflection_source": "real"}


def readme_example() -> str:
    """The ```python block of README.md's "Python API" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python API section should hold one python example"
    return blocks[0]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README example, run as written in a fresh folder (its output is relative: runs/api-demo)."""
    where = tmp_path_factory.mktemp("readme")
    before = os.getcwd()
    os.chdir(where)
    try:
        namespace: dict = {}
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(before)
    namespace["where"] = where
    return namespace


def test_import_sapt_is_light():
    code = ("import sys, sapt; sapt.run, sapt.load, sapt.Answer, sapt.TrainedRun; import sapt.api; "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_readme_example_runs(readme_run):
    result, trained, where = readme_run["result"], readme_run["trained"], readme_run["where"]
    assert result.run_dir == Path("runs/api-demo")
    assert result.metrics == json.loads((where / "runs/api-demo/metrics.json").read_text())
    assert trained.tasks == ["topic", "sentiment"] == result.metrics["tasks"]
    assert trained.config.model == "tiny-llama" and trained.metrics == result.metrics
    assert set(readme_run["answer"].routing) == {"topic", "sentiment"}
    assert sum(readme_run["answer"].routing.values()) == pytest.approx(1.0, abs=1e-5)
    assert [a.routing for a in readme_run["one_block"]] == [{"topic": 1.0, "sentiment": 0.0}]
    assert len(readme_run["sampled"]) == 1 and isinstance(readme_run["sampled"][0].text, str)


def test_predict_gives_what_the_cli_prints(readme_run, capsys):
    trained = readme_run["trained"]
    run_dir = readme_run["where"] / readme_run["result"].run_dir
    texts = ["Review: the headset is well made and excellent.", "There was a video online about the orchestra."]
    assert main(["predict", "--run", str(run_dir), "--json", *texts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answers = trained.predict(texts)
    assert [r["input"] for r in rows] == [a.input for a in answers] == texts
    assert [r["answer"] for r in rows] == [a.text for a in answers]
    assert [r["routing"] for r in rows] == [{k: round(v, 4) for k, v in a.routing.items()} for a in answers]
    # generate is greedy by default: predict's answers, the same routing
    assert [(a.text, a.routing) for a in trained.generate(texts)] == [(a.text, a.routing) for a in answers]
    assert [a.routing for a in answers] == trained.routing(texts)
    assert [a.text for a in trained.predict(texts, merge=True)] == [a.text for a in answers]
    assert len(trained.generate(texts[0], do_sample=True, num_return_sequences=3)) == 3


# (a call on the README's trained run; what the one-line ConfigError says). The API type cases of issue 27 were
# each a raw TypeError/AttributeError or a silent answer: None, bytes, a lone surrogate; a routing that is a
# string, {}, negative or all-zero weights; num_return_sequences=0 returned one answer.
ANSWERING = [
    ("max_new_tokens=0", lambda t: t.predict("x", max_new_tokens=0), "max_new_tokens"),
    ("a list of ints", lambda t: t.predict([1]), "strings"),
    ("an unknown task in routing", lambda t: t.generate("x", routing={"nope": 1.0}), "unknown task(s) nope"),
    ("input_ids", lambda t: t.generate("x", input_ids=[1]), "input_ids"),
    ("None", lambda t: t.predict(None), "got None"),
    ("bytes", lambda t: t.predict(b"bytes"), "got bytes: decode them first"),
    ("a lone surrogate", lambda t: t.predict(["ok", "\ud800"]), "input text 1 holds a lone surrogate (U+D800"),
    ("generate None", lambda t: t.generate(None), "got None"),
    ("routing a string", lambda t: t.generate("x", routing="topic"), "expected a mapping of task name"),
    ("routing {}", lambda t: t.generate("x", routing={}), "an empty mapping"),
    ("a negative weight", lambda t: t.generate("x", routing={"topic": -1.0}), "weights must be >= 0"),
    ("all weights 0", lambda t: t.generate("x", routing={"topic": 0.0}), "at least one above 0"),
    ("a weight that is a string", lambda t: t.generate("x", routing={"topic": "1"}), "weights must be numbers"),
    ("num_return_sequences=0", lambda t: t.generate("x", num_return_sequences=0), "num_return_sequences"),
    ("num_return_sequences=1.5", lambda t: t.generate("x", num_return_sequences=1.5), "num_return_sequences"),
]


@pytest.mark.parametrize("case, call, needle", ANSWERING, ids=[c for c, _, _ in ANSWERING])
def test_answering_refuses_bad_arguments_in_one_line(case, call, needle, readme_run):
    with pytest.raises(ConfigError, match=re.escape(needle)) as e:
        call(readme_run["trained"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, argv, needle", [
    ({"lr": -1.0}, ["--lr", "-1"], "lr must be > 0"),
    ({"epochs": 0}, ["--epochs", "0"], "epochs must be >= 1"),
    ({"method": "nope"}, ["--config", "{file}"], "unknown method 'nope'"),
])
def test_run_refuses_what_sapt_run_refuses_with_the_same_message(kwargs, argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text("method: nope\n")
    with pytest.raises(ConfigError) as api_error:
        sapt.run(**{**TINY, **kwargs, "output": str(out)})
    argv = [a.replace("{file}", str(config)) for a in argv]
    assert main(["run", "--model", "tiny-llama", "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in str(api_error.value) and err.endswith(str(api_error.value))
    assert not out.exists()


def test_run_refuses_unknown_keys_and_reads_config_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key\\(s\\): bogus"):
        sapt.run(bogus=1, output=str(tmp_path / "o"))
    config = tmp_path / "c.yaml"
    config.write_text("lr: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        sapt.run(config_file=config, output=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_force_new_returns_the_directory_it_wrote(readme_run):
    where = readme_run["where"]
    before = os.getcwd()
    os.chdir(where)
    try:
        with pytest.raises(ConfigError, match="different config"):
            sapt.run(**{**TINY, "reflection_source": "generated", "seed": 7, "output": "runs/api-demo"})
        result = sapt.run(**{**TINY, "reflection_source": "generated", "seed": 7, "output": "runs/api-demo"},
                          force_new=True)
        assert result.run_dir == Path("runs/api-demo-2") and (where / "runs/api-demo-2/metrics.json").exists()
        assert sapt.load(result.run_dir).config.seed == 7
        again = sapt.run(**{**TINY, "reflection_source": "generated", "output": "runs/api-demo"}, force_new=True)
        assert again.run_dir == Path("runs/api-demo")  # the README's run itself: resumed, nothing to do
    finally:
        os.chdir(before)


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not a sapt run directory"):
        sapt.load(tmp_path)


def test_a_per_task_run_answers_only_with_a_given_task(tmp_path):
    result = sapt.run(**{**TINY, "method": "per-task", "output": str(tmp_path / "pt")})
    trained = result.load()
    with pytest.raises(ConfigError, match="true task id"):
        trained.predict("x")
    with pytest.raises(ConfigError, match="routing="):
        trained.generate("x")
    [answer] = trained.generate("x", routing={"sentiment": 1.0})
    assert answer.routing == {"topic": 0.0, "sentiment": 1.0}


# ---- API types (issue 27): the values a Python caller passes, taken as meant or refused in one line ----------
def _numpy_values():
    import numpy as np

    return {"lr": np.float64(2e-3), "epochs": np.int64(2), "lora_r": np.int32(4), "kl_ratio": np.float32(0.5),
            "reflection": np.bool_(False), "tasks": [np.str_("topic")]}


# (keywords for sapt.config.resolve, the resolved values expected; or a ConfigError's text)
API_VALUES = [
    ("numpy scalars (an np.logspace sweep)", _numpy_values,
     {"lr": 2e-3, "epochs": 2, "lora_r": 4, "kl_ratio": 0.5, "reflection": False, "tasks": ["topic"]}),
    ("pathlib paths", lambda: {"output": Path("runs/x"), "data_dir": Path("/data"), "benchmark": "B"},
     {"output": "runs/x", "data_dir": "/data"}),
    ("tasks=[]", lambda: {"tasks": []}, "tasks: an empty list names no task"),
    ("np.float64 nan", lambda: {"lr": __import__("numpy").float64("nan")}, "lr: must be a finite number"),
    # None, bytes and lone surrogates: one line naming the key (a surrogate crashed config.yaml's writer)
    ("None for the model", lambda: {"model": None}, "model: a value is required (got null)"),
    ("bytes for the output", lambda: {"output": b"runs/x"}, "output: expected a string, got b'runs/x'"),
    ("bytes in the task list", lambda: {"tasks": [b"topic"]}, "tasks: expected a list of strings"),
    ("a lone surrogate in the output", lambda: {"output": "runs/\udce9"}, "output: holds a lone surrogate (U+DCE9"),
    ("a lone surrogate in a task name", lambda: {"tasks": ["topic", "t\ud800"]},
     "tasks: holds a lone surrogate (U+D800"),
    ("True for a number", lambda: {"epochs": True}, "epochs: expected a number, got True"),
]


@pytest.mark.parametrize("case, values, expected", API_VALUES, ids=[c for c, _, _ in API_VALUES])
def test_api_values_are_taken_as_the_plain_values_they_stand_for(case, values, expected):
    """np.float64 passed every check, then crashed config.yaml's writer after the model had loaded;
    np.int64 was refused as "expected a number"; a Path was refused; tasks=[] meant every task."""
    import yaml

    from sapt.config import resolve, to_dict

    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            resolve({"model": "tiny-llama", **values()})
        return
    cfg = resolve({"model": "tiny-llama", **values()})
    for key, value in expected.items():
        got = getattr(cfg, key)
        assert got == value and type(got) is type(value), (key, got)
        if isinstance(got, list):
            assert all(type(v) is str for v in got)
    yaml.safe_dump(to_dict(cfg))  # what config.yaml's writer does once the model has loaded


def test_a_numpy_learning_rate_runs_to_the_end(tmp_path):
    import numpy as np

    result = sapt.run(**{**TINY, "tasks": ["topic"], "lr": np.float64(2e-3), "epochs": np.int64(1),
                         "output": tmp_path / "np"})
    assert result.run_dir == tmp_path / "np" and (tmp_path / "np" / "config.yaml").read_text().count("lr: 0.002") == 1


@pytest.mark.parametrize("force_new", ["no", "yes", 1, None])
def test_force_new_takes_true_or_false_only(force_new, tmp_path):
    """"no" is a true value: it would have started a fresh OUTPUT-2 beside a run it meant to resume."""
    with pytest.raises(ConfigError, match="force_new: expected True or False"):
        sapt.run(**{**TINY, "output": str(tmp_path / "o")}, force_new=force_new)
    assert not (tmp_path / "o").exists()


def test_progprompt_refuses_a_routing_it_cannot_honour(tmp_path):
    """progprompt puts every prompt before the input whatever the weights: generate(routing=...) gave the
    same answers for every mapping while Answer.routing claimed the requested mix."""
    result = sapt.run(**{**TINY, "method": "progprompt", "prompt_len": 2, "output": str(tmp_path / "pp")})
    trained = result.load()
    with pytest.raises(ConfigError, match="routing=: a progprompt run .* cannot answer with a chosen mixture"):
        trained.generate("x", routing={"topic": 1.0})
    [answer] = trained.generate("x")  # without routing=, its own way of answering
    assert answer.routing is None


# sapt.load and sapt.run given what is not a path: one line, not a TypeError from Path() or b'...' read as a name.
@pytest.mark.parametrize("value", [None, b"runs/x", 3], ids=["None", "bytes", "int"])
def test_load_refuses_what_is_not_a_path_in_one_line(value):
    with pytest.raises(ConfigError, match="run_dir: expected a path"):
        sapt.load(value)
    if value is not None:  # config_file=None is no config file
        with pytest.raises(ConfigError, match="config_file: expected a path"):
            sapt.run(value, model="tiny-llama")
