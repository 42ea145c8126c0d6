"""Tests for sapt.data: real benchmark files (when present), a fake benchmark, and the built-in suite."""

import json
import warnings
from pathlib import Path

import pytest

from sapt.data import (
    BUILTIN_TASKS,
    TASK_ORDERS,
    DataError,
    builtin_suite,
    format_prompt,
    load_benchmark,
    load_task,
    resolve_task_names,
)

REAL = Path(__file__).parents[2] / "shared/data/CL_Benchmark"


def inputs(examples):
    return {ex.input for ex in examples}


# ----------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real():
    if not (REAL / "SuperNI").is_dir() or not (REAL / "Long_Sequence").is_dir():
        pytest.skip(f"{REAL} not present")
    return REAL


@pytest.mark.parametrize("benchmark", ["SuperNI", "Long_Sequence"])
def test_real_tasks_parse_and_split(real, benchmark):
    names = sorted(p.name for p in (real / benchmark).iterdir() if (p / "train.json").is_file())
    assert len(names) == {"SuperNI": 15, "Long_Sequence": 13}[benchmark]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the qqp labels.json mismatch warning
        for name in names:
            task = load_task(real, benchmark, name, max_train=64, max_eval=16)
            assert task.eval_split == "heldout-train"
            assert task.metric == {"SuperNI": "rougeL", "Long_Sequence": "em"}[benchmark]
            assert len(task.train) == 64 and len(task.eval) == 16 and len(task.val) >= 1
            assert not inputs(task.val) & inputs(task.train), name
            assert not inputs(task.val) & inputs(task.eval), name
            assert not inputs(task.eval) & inputs(task.train), name
            assert all(ex.outputs and all(isinstance(o, str) for o in ex.outputs) for ex in task.train)
            if task.labels is not None:
                assert {ex.outputs[0] for ex in task.train + task.val + task.eval} <= set(task.labels), name


def test_real_split_is_seeded(real):
    a = load_task(real, "Long_Sequence", "cb", max_train=64, max_eval=16)
    b = load_task(real, "Long_Sequence", "cb", max_train=64, max_eval=16)
    c = load_task(real, "Long_Sequence", "cb", max_train=64, max_eval=16, seed=7)
    assert (a.train, a.val, a.eval) == (b.train, b.val, b.eval)
    assert inputs(a.train) != inputs(c.train) and inputs(a.eval) != inputs(c.eval)


def test_real_validation_is_stratified(real):
    task = load_task(real, "Long_Sequence", "sst2", val_size=20)
    counts = {label: sum(ex.outputs[0] == label for ex in task.val) for label in task.labels}
    assert len(task.val) == 20 and set(counts) == {"Good", "Bad"}
    assert min(counts.values()) >= 8  # roughly balanced like the file, not just "present"


def test_real_list_outputs_kept(real):
    task = load_task(real, "SuperNI", "task002_quoref_answer_generation")
    assert any(len(ex.outputs) > 1 for ex in task.train + task.val + task.eval)


def test_real_order_skips_absent_tasks(real):
    with pytest.warns(UserWarning, match="dbpedia, yahoo"):
        names = resolve_task_names(real, "Long_Sequence", None, 4)
    assert len(names) == 13 and "dbpedia" not in names and "yahoo" not in names
    expected = [n for n in TASK_ORDERS["Long_Sequence"][4] if n not in ("dbpedia", "yahoo")]
    assert names == expected
    assert resolve_task_names(real, "SuperNI", None, 2) == TASK_ORDERS["SuperNI"][2]


# ----------------------------------------------------------------------------- fake benchmark


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def instances(prefix: str, n: int, labels=("yes", "no")):
    return [{"input": f"{prefix} {i}", "output": labels[i % len(labels)]} for i in range(n)]


@pytest.fixture
def bench(tmp_path):
    root = tmp_path / "data"
    write(root / "Mine/alpha/train.json", {"Definition": ["  Say yes or no.\n"], "Instances": instances("a", 50)})
    write(root / "Mine/alpha/labels.json", ["yes", "no"])
    write(root / "Mine/alpha/test.json", {"Instances": instances("test", 30)})
    write(root / "Mine/alpha/dev.json", {"Instances": instances("dev", 30)})
    write(root / "Mine/beta/train.json", {"Definition": "Echo.", "Instances":
                                          [{"input": f"b {i}", "output": [f"b {i}", "B"]} for i in range(40)]})
    return root


def test_fake_test_json_is_eval_and_dev_ignored(bench):
    task = load_task(bench, "Mine", "alpha")
    assert task.eval_split == "test" and task.definition == "Say yes or no."
    assert task.metric == "em" and task.labels == ["yes", "no"]
    assert inputs(task.eval) == {f"test {i}" for i in range(30)}
    assert len(task.train) + len(task.val) == 50  # all of train.json, none held out
    every = inputs(task.train) | inputs(task.val) | inputs(task.eval)
    assert not any(s.startswith("dev") for s in every)
    sub = load_task(bench, "Mine", "alpha", max_eval=5)
    assert len(sub.eval) == 5 and inputs(sub.eval) <= inputs(task.eval)
    assert load_task(bench, "Mine", "alpha", max_eval=5).eval == sub.eval


def test_fake_heldout_and_metric(bench):
    task = load_task(bench, "Mine", "beta", val_size=5, max_train=10)
    assert task.eval_split == "heldout-train" and task.metric == "rougeL" and task.labels is None
    assert (len(task.train), len(task.val), len(task.eval)) == (10, 5, 4)
    assert task.train[0].outputs[1] == "B"


def test_fake_train_inputs_in_test_are_dropped(bench):
    rows = instances("a", 20) + [{"input": "test 3", "output": "no"}]
    write(bench / "Mine/alpha/train.json", {"Definition": [], "Instances": rows})
    with pytest.warns(UserWarning, match="appears in test.json"):
        task = load_task(bench, "Mine", "alpha")
    assert "test 3" not in inputs(task.train) | inputs(task.val)
    assert task.definition == ""


def test_fake_duplicate_inputs_never_cross_splits(bench):
    rows = instances("a", 30) + instances("a", 30)  # every input twice
    write(bench / "Mine/beta/train.json", {"Definition": "x", "Instances": rows})
    for seed in range(5):
        task = load_task(bench, "Mine", "beta", seed=seed)
        assert not inputs(task.train) & inputs(task.val)
        assert not inputs(task.eval) & (inputs(task.train) | inputs(task.val))


def test_fake_validation_is_stratified(bench):
    rows = [{"input": f"r {i}", "output": "no" if i % 10 == 0 else "yes"} for i in range(200)]
    write(bench / "Mine/alpha/train.json", {"Definition": "x", "Instances": rows})
    for seed in range(10):  # a plain random draw of 20 would often get 0 or 4+ "no"
        task = load_task(bench, "Mine", "alpha", val_size=20, seed=seed)
        assert sum(ex.outputs[0] == "no" for ex in task.val) == 2, seed


def test_fake_default_resolution(bench):
    assert resolve_task_names(bench, "Mine", None, None) == ["alpha", "beta"]
    assert [t.name for t in load_benchmark(bench, "Mine", tasks=["beta", "alpha"])] == ["beta", "alpha"]


@pytest.mark.parametrize("content, problem", [
    ("{not json", "invalid JSON"),
    ({"Definition": ["d"]}, "missing 'Instances'"),
    ({"Instances": []}, "'Instances' is empty"),
    ({"Instances": [{"input": "x", "output": "y"}, {"input": "z", "output": 3}]},
     r"Instances\[1\]\.output must be a string or a non-empty list of strings"),
    ({"Instances": [{"input": "x", "output": []}]}, r"Instances\[0\]\.output"),
    ({"Instances": [{"input": 1, "output": "y"}]}, r"Instances\[0\]\.input must be a string"),
    ({"Definition": 5, "Instances": [{"input": "x", "output": "y"}]}, "'Definition' must be"),
])
def test_fake_malformed_train_json(bench, content, problem):
    path = write(bench / "Mine/beta/train.json", content)
    with pytest.raises(DataError, match=problem) as err:
        load_task(bench, "Mine", "beta")
    assert str(err.value).startswith(f"{path}: ")


def test_fake_malformed_test_and_labels(bench):
    write(bench / "Mine/alpha/test.json", {"Instances": [{"input": "x"}]})
    with pytest.raises(DataError, match="alpha/test.json: Instances"):
        load_task(bench, "Mine", "alpha")
    write(bench / "Mine/alpha/test.json", {"Instances": instances("t", 3)})
    write(bench / "Mine/alpha/labels.json", {"yes": 1})
    with pytest.raises(DataError, match="labels.json: must be"):
        load_task(bench, "Mine", "alpha")


def test_fake_resolution_errors(bench):
    with pytest.raises(DataError, match="not found.*gamma, delta"):
        resolve_task_names(bench, "Mine", ["alpha", "gamma", "delta"], None)
    with pytest.raises(DataError, match="duplicate tasks.*alpha"):
        resolve_task_names(bench, "Mine", ["alpha", "beta", "alpha"], None)
    with pytest.raises(DataError, match="unknown task order 3"):
        resolve_task_names(bench, "Mine", None, 3)
    with pytest.raises(DataError, match="benchmark folder not found"):
        resolve_task_names(bench, "Nope", None, None)
    with pytest.raises(DataError, match="data directory not found"):
        load_benchmark(bench / "missing", "Mine")
    with pytest.raises(DataError, match="too few"):
        load_task(bench, "Mine", "beta", val_size=40)


# ----------------------------------------------------------------------------- built-in suite


def test_builtin_suite():
    tasks = builtin_suite()
    assert [t.name for t in tasks] == BUILTIN_TASKS
    assert len({t.definition for t in tasks}) == 4
    again, other = builtin_suite(), builtin_suite(seed=1)
    for t, u, v in zip(tasks, again, other):
        assert (t.train, t.val, t.eval) == (u.train, u.val, u.eval)
        assert t.train != v.train
        assert (len(t.train), len(t.val), len(t.eval)) == (96, 16, 32)
        assert t.metric == "em" and t.eval_split == "test"
        all_inputs = [ex.input for ex in t.train + t.val + t.eval]
        assert len(set(all_inputs)) == len(all_inputs), t.name  # distinct, hence disjoint splits
        assert all(len(s.split()) < 20 for s in all_inputs)
    topic, sentiment, reverse, addition = tasks
    for t in (topic, sentiment):
        assert {ex.outputs[0] for ex in t.train} == set(t.labels)
        assert {ex.outputs[0] for ex in t.val + t.eval} <= set(t.labels)
    assert set(topic.labels) == {"sports", "science", "food", "music"}
    assert set(sentiment.labels) == {"positive", "negative"}
    for ex in reverse.train:
        assert ex.outputs[0].split() == ex.input.split()[::-1] and len(ex.input.split()) == 3
    for ex in addition.train + addition.eval:
        a, b = (int(w.rstrip("?")) for w in ex.input.split() if w.rstrip("?").isdigit())
        assert ex.outputs[0] == str(a + b) and 0 <= a <= 9 and 0 <= b <= 9


def test_builtin_too_many_examples():
    with pytest.raises(ValueError, match="addition"):
        builtin_suite(n_train=400)


# ----------------------------------------------------------------------------- prompts


def test_format_prompt():
    assert format_prompt("Add.", "1 + 2", "seq2seq") == (
        "Definition: Add.\n\nNow complete the following example -\nInput: 1 + 2\nOutput:")
    assert format_prompt("Add.", "1 + 2", "causal") == "Add.\n\nInput: 1 + 2\nOutput: "
    assert format_prompt("", "x", "causal") == "Input: x\nOutput: "
    with pytest.raises(ValueError):
        format_prompt("d", "x", "encoder")


def test_the_release_templates_are_one_per_benchmark_whatever_the_family():
    from sapt.data.prompts import template_key

    for family in ("seq2seq", "causal"):
        long = template_key(family, "release", "Long_Sequence")
        assert format_prompt(" Classify the review. ", "great phone", family, long) == (
            "Classify the review.\ngreat phone\nOutput: ")
        assert format_prompt("", "an input", family, long) == "an input\nOutput: "  # copa: no definition
        superni = template_key(family, "release", "SuperNI")
        assert format_prompt("Add.", "1 + 2", family, superni) == (
            "Definition: Add.\n\nNow complete the following example -\nInput: 1 + 2\nOutput: ")
        assert template_key(family) == family  # "family": the default, unchanged
    with pytest.raises(ValueError, match="Mine"):
        template_key("causal", "release", "Mine")


def test_a_release_template_run_encodes_every_prompt_with_it(tmp_path):
    """Training, evaluation and reflection inputs of a `template: release` model are all in the release's form
    (one template in one place); the default stays the family's; a benchmark the release has no template for
    is refused in one line."""
    from sapt.config import ConfigError, resolve
    from sapt.data import Example, Task
    from sapt.evaluation.generation import encode_task_split
    from sapt.reflection import encode_replay
    from sapt.train import build_model

    settings = {"model": "tiny-llama", "data_dir": str(tmp_path), "benchmark": "Long_Sequence"}
    task = Task(name="t", definition="Say yes.", metric="em", train=[Example("in one", ("yes",))], val=[],
                eval=[Example("in two", ("yes",))], eval_split="test")
    model = build_model(resolve({**settings, "template": "release"}))
    assert model.template == "release:Long_Sequence"
    decode = lambda items: [model.tokenizer.decode(e.prompt, skip_special_tokens=True) for e in items]  # noqa: E731
    assert decode(encode_task_split(model, task, "train", 128, 8)) == ["Say yes.\nin one\nOutput: "]
    assert decode(encode_task_split(model, task, "eval", 128, 8)) == ["Say yes.\nin two\nOutput: "]
    assert decode(encode_replay(model, task.definition, ["in three"], 128)) == ["Say yes.\nin three\nOutput: "]
    family = build_model(resolve(settings))
    assert family.template is None
    assert [family.tokenizer.decode(e.prompt, skip_special_tokens=True)
            for e in encode_task_split(family, task, "train", 128, 8)] == ["Say yes.\n\nInput: in one\nOutput: "]
    with pytest.raises(ConfigError, match="template release.*Mine"):
        resolve({**settings, "benchmark": "Mine", "template": "release"})
    with pytest.raises(ConfigError, match="built-in suite"):
        resolve({"model": "tiny-llama", "template": "release"})
