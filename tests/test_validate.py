"""Tests for sapt.data.validate: every malformed-input case is reported (file + field), never crashes,
"no errors" means the loader succeeds, the real data validates, and `sapt run` refuses bad data cleanly."""

import json
import string
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import validator_agrees_with_loader

from sapt import cli
from sapt.config import resolve, to_dict
from sapt.data import DataError, load_task
from sapt.data.validate import MAX_INSTANCE_MESSAGES, validate_benchmark, validate_or_raise

REAL = Path(__file__).parents[2] / "shared/data/CL_Benchmark"
BENCH = "Bench"
NAMES = ["alpha", "beta"]


# ----------------------------------------------------------------------------- a small valid benchmark


def alpha_doc(n: int = 12) -> dict:
    """A classification task (with labels.json): outputs pos / neg."""
    return {"Definition": ["Classify the sentiment."], "Positive Examples": [],
            "Instances": [{"id": f"a{i}", "input": f"sentence number {i}", "output": "pos" if i % 2 else "neg"}
                          for i in range(n)]}


def beta_doc(n: int = 12) -> dict:
    """A generation task with several references per instance and a plain-string Definition."""
    return {"Definition": "Write a reply.",
            "Instances": [{"input": f"question {i}", "output": [f"answer {i}", f"reply {i}"]} for i in range(n)]}


def put(path: Path, content: Any) -> None:
    """Write JSON for a Python value, the text itself for str, raw bytes for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")


def make_benchmark(data_dir: Path) -> Path:
    b = data_dir / BENCH
    put(b / "alpha" / "train.json", alpha_doc())
    put(b / "alpha" / "labels.json", ["neg", "pos"])
    put(b / "beta" / "train.json", beta_doc())
    return b


def test_the_base_benchmark_is_valid(tmp_path):
    make_benchmark(tmp_path)
    assert validate_benchmark(tmp_path, BENCH, NAMES) == ([], [])
    for name in NAMES:
        load_task(tmp_path, BENCH, name)


# ----------------------------------------------------------------------------- malformed inputs


def with_instance(i: int, **fields: Any) -> Callable[[Path], None]:
    def mutate(b: Path) -> None:
        doc = alpha_doc()
        doc["Instances"][i] = {**doc["Instances"][i], **fields}
        for k, v in fields.items():
            if v is DELETE:
                del doc["Instances"][i][k]
        put(b / "alpha" / "train.json", doc)
    return mutate


DELETE = object()


def with_train(**top: Any) -> Callable[[Path], None]:
    def mutate(b: Path) -> None:
        doc = alpha_doc()
        for k, v in top.items():
            if v is DELETE:
                del doc[k]
            else:
                doc[k] = v
        put(b / "alpha" / "train.json", doc)
    return mutate


def write(rel: str, content: Any) -> Callable[[Path], None]:
    return lambda b: put(b / rel, content)


def remove(rel: str) -> Callable[[Path], None]:
    return lambda b: (b / rel).unlink()


def train_json_is_a_folder(b: Path) -> None:
    (b / "alpha" / "train.json").unlink()
    (b / "alpha" / "train.json").mkdir()


def surrogate_input(b: Path) -> None:
    text = json.dumps(alpha_doc()).replace('"sentence number 3"', '"bad \\ud800 text"')
    put(b / "alpha" / "train.json", text)


@dataclass
class Case:
    id: str
    mutate: Callable[[Path], None] | None
    file: str  # the path (relative to the benchmark folder) the message must start with; "" = the folder
    fragment: str  # the field / problem the message must name
    names: tuple[str, ...] = tuple(NAMES)
    loader_raises: bool = True  # does the plain loader (what `sapt run` used before validate) refuse it too?


CASES = [
    Case("task-folder-missing", None, "gamma", "task folder not found", names=("alpha", "gamma")),
    Case("train-json-missing", remove("alpha/train.json"), "alpha/train.json", "not found"),
    Case("train-json-is-a-folder", train_json_is_a_folder, "alpha/train.json", "not a file"),
    Case("invalid-json", write("alpha/train.json", '{"Instances": [\n  {"input": "x",}\n]}'),
         "alpha/train.json", "invalid JSON (Expecting property name enclosed in double quotes at line 2, column 17)"),
    Case("truncated-json", write("alpha/train.json", json.dumps(alpha_doc())[:-40]), "alpha/train.json",
         "invalid JSON"),
    Case("not-utf8", write("alpha/train.json", b'{"Instances": [{"input": "caf\xe9", "output": "x"}]}'),
         "alpha/train.json", "not valid UTF-8"),
    Case("utf8-bom", write("alpha/train.json", "\ufeff" + json.dumps(alpha_doc())), "alpha/train.json",
         "invalid JSON (Unexpected UTF-8 BOM"),
    Case("empty-file", write("alpha/train.json", ""), "alpha/train.json", "invalid JSON (Expecting value at line 1"),
    Case("top-level-list", write("alpha/train.json", alpha_doc()["Instances"]), "alpha/train.json",
         "expected a JSON object at the top level, got list"),
    Case("definition-int", with_train(Definition=5), "alpha/train.json",
         "Definition: expected a string or a list of strings, got int"),
    Case("definition-list-with-null", with_train(Definition=["ok", None]), "alpha/train.json",
         "Definition[1]: expected a string, got null"),
    Case("instances-missing", with_train(Instances=DELETE), "alpha/train.json", "Instances: missing"),
    Case("instances-object", with_train(Instances={"input": "x", "output": "y"}), "alpha/train.json",
         "Instances: expected a list, got object"),
    Case("instances-empty", with_train(Instances=[]), "alpha/train.json", "Instances: empty list"),
    Case("instance-not-object", with_train(Instances=alpha_doc()["Instances"][:3] + ["just text"]
                                           + alpha_doc()["Instances"][4:]),
         "alpha/train.json", "Instances[3]: expected an object with 'input' and 'output', got string"),
    Case("input-missing", with_instance(3, input=DELETE), "alpha/train.json", "Instances[3].input: missing"),
    Case("input-int", with_instance(3, input=42), "alpha/train.json", "Instances[3].input: expected a string, got int"),
    Case("input-blank", with_instance(3, input="  \n"), "alpha/train.json", "Instances[3].input: empty string",
         loader_raises=False),
    Case("input-unpaired-surrogate", surrogate_input, "alpha/train.json", "Instances[3].input: contains an unpaired",
         loader_raises=False),
    Case("output-missing", with_instance(3, output=DELETE), "alpha/train.json", "Instances[3].output: missing"),
    Case("output-int", with_instance(3, output=1), "alpha/train.json",
         "Instances[3].output: expected a string or a list of strings, got int"),
    Case("output-object", with_instance(3, output={"text": "pos"}), "alpha/train.json",
         "Instances[3].output: expected a string or a list of strings, got object"),
    Case("output-empty-list", with_instance(3, output=[]), "alpha/train.json", "Instances[3].output: empty list"),
    Case("output-list-with-null", with_instance(3, output=["pos", None]), "alpha/train.json",
         "Instances[3].output[1]: expected a string, got null"),
    Case("outputs-all-empty", with_train(Instances=[{"input": f"s{i}", "output": ["", " "] if i % 2 else ""}
                                                    for i in range(12)]),
         "alpha/train.json", "Instances: the output of every one of the 12 instances is empty", loader_raises=False),
    Case("test-json-outputs-all-empty", write("alpha/test.json", {"Instances": [{"input": "t", "output": ""}]}),
         "alpha/test.json", "Instances: the output of every one of the 1 instances is empty", loader_raises=False),
    Case("labels-not-a-list", write("alpha/labels.json", {"neg": 0, "pos": 1}), "alpha/labels.json",
         "expected a list of label strings, got object"),
    Case("labels-empty", write("alpha/labels.json", []), "alpha/labels.json", "empty list"),
    Case("labels-non-string", write("alpha/labels.json", ["neg", 1]), "alpha/labels.json",
         "labels[1]: expected a string, got int"),
    Case("labels-duplicate", write("alpha/labels.json", ["neg", "pos", "neg"]), "alpha/labels.json",
         "duplicate labels 'neg'", loader_raises=False),
    Case("labels-invalid-json", write("alpha/labels.json", '["neg", "pos"'), "alpha/labels.json", "invalid JSON"),
    Case("test-json-bad-output", write("alpha/test.json", {"Definition": [], "Instances": [{"input": "t", "output": 7}]}),
         "alpha/test.json", "Instances[0].output: expected a string or a list of strings, got int"),
    Case("test-json-top-level-string", write("alpha/test.json", "\"nope\""), "alpha/test.json",
         "expected a JSON object at the top level, got string"),
    Case("dev-json-invalid", write("alpha/dev.json", "{"), "alpha/dev.json", "invalid JSON", loader_raises=False),
    Case("duplicate-task-names", None, "", "duplicate task names in the task list: alpha (2 times)",
         names=("alpha", "beta", "alpha")),
    Case("too-few-instances", with_train(Instances=alpha_doc()["Instances"][:2]), "alpha/train.json",
         "Instances: only 2 instances; at least 3"),
    Case("one-instance-with-test-json",
         lambda b: (put(b / "alpha/train.json", alpha_doc(1)), put(b / "alpha/test.json", beta_doc(4))),
         "alpha/train.json", "Instances: only 1 instance; at least 2"),
    Case("all-inputs-identical", with_train(Instances=[{"input": "same", "output": "pos"}] * 12), "alpha/train.json",
         "all 12 instances have the same input"),
    Case("every-input-in-test-json", lambda b: put(b / "alpha/test.json", alpha_doc()), "alpha/train.json",
         "every one of the 12 instances would be dropped"),
    Case("two-distinct-inputs", with_train(Instances=[{"input": f"s{i % 2}", "output": "pos"} for i in range(12)]),
         "alpha/train.json", "only 2 distinct inputs among 12 instances; at least 3"),
]


def run_case(case: Case, data_dir: Path) -> Path:
    b = make_benchmark(data_dir)
    if case.mutate is not None:
        case.mutate(b)
    return b


def assert_reported(case: Case, b: Path, errors: list[str]) -> None:
    where = str(b / case.file) if case.file else str(b)
    assert any(e.startswith(where + ": ") and case.fragment in e for e in errors), \
        f"no error on {where} mentioning {case.fragment!r}; got:\n" + "\n".join(errors)
    assert all("\n" not in e for e in errors)


def test_there_are_many_distinct_cases():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_reported_with_file_and_field(case, tmp_path):
    b = run_case(case, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # validate_benchmark itself never warns: warnings are returned
        errors, _ = validate_benchmark(tmp_path, BENCH, list(case.names))
    assert_reported(case, b, errors)

    with pytest.raises(DataError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_or_raise(tmp_path, BENCH, list(case.names))
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{len(errors)} problem") and lines[1:] == errors

    if not case.loader_raises:  # a problem only validate catches: the loader takes the task
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_task(tmp_path, BENCH, "alpha")


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    b = make_benchmark(tmp_path)
    put(b / "alpha/train.json", "[" * 100_000 + "]" * 100_000)
    errors, _ = validate_benchmark(tmp_path, BENCH, NAMES)
    assert errors == [f"{b / 'alpha/train.json'}: invalid JSON (nested too deeply to parse)"]


def test_missing_data_dir_and_benchmark(tmp_path):
    errors, _ = validate_benchmark(tmp_path / "nope", BENCH, NAMES)
    assert errors == [f"{tmp_path / 'nope'}: data directory not found"]
    errors, _ = validate_benchmark(tmp_path, "Nope", NAMES)
    assert errors == [f"{tmp_path / 'Nope'}: benchmark folder not found"]


def test_all_problems_are_reported_not_just_the_first(tmp_path):
    b = make_benchmark(tmp_path)
    doc = alpha_doc()
    doc["Definition"] = 3
    doc["Instances"][0]["input"] = None
    doc["Instances"][5]["output"] = []
    put(b / "alpha/train.json", doc)
    put(b / "alpha/labels.json", ["neg", 2])
    put(b / "beta/train.json", "oops")
    errors, _ = validate_benchmark(tmp_path, BENCH, NAMES + ["gamma"])
    expected = [("alpha/train.json", "Definition: expected"), ("alpha/train.json", "Instances[0].input: expected"),
                ("alpha/train.json", "Instances[5].output: empty list"), ("alpha/labels.json", "labels[1]: expected"),
                ("beta/train.json", "invalid JSON (Expecting value"), ("gamma", "task folder not found")]
    assert len(errors) == len(expected)
    for e, (file, start) in zip(errors, expected):
        assert e.startswith(f"{b / file}: {start}"), e
    with pytest.raises(DataError, match=r"^6 problems in the task data of "):
        validate_or_raise(tmp_path, BENCH, NAMES + ["gamma"])


def test_bad_instances_are_capped_per_file(tmp_path):
    b = make_benchmark(tmp_path)
    doc = alpha_doc(20)
    for inst in doc["Instances"][2:10]:  # 8 bad instances
        inst["output"] = 0
    put(b / "alpha/train.json", doc)
    errors, _ = validate_benchmark(tmp_path, BENCH, NAMES)
    path = b / "alpha/train.json"
    assert errors == [f"{path}: Instances[{i}].output: expected a string or a list of strings, got int"
                      for i in range(2, 2 + MAX_INSTANCE_MESSAGES)] + [
        f"{path}: Instances: ... and 3 more bad instances (8 of 20 in all)"]


def test_some_empty_outputs_are_accepted_like_the_public_task511(tmp_path):
    b = make_benchmark(tmp_path)
    doc = beta_doc()
    for inst in doc["Instances"][:6]:
        inst["output"] = ""
    put(b / "beta/train.json", doc)
    assert validate_benchmark(tmp_path, BENCH, NAMES) == ([], [])


def test_labels_not_covering_outputs_is_a_warning_like_the_public_qqp(tmp_path):
    b = make_benchmark(tmp_path)
    doc = alpha_doc()
    for inst in doc["Instances"]:
        inst["output"] = "yes" if inst["output"] == "pos" else "no"
    put(b / "alpha/train.json", doc)
    put(b / "alpha/labels.json", ["False", "True"])
    errors, warns = validate_benchmark(tmp_path, BENCH, NAMES)
    assert errors == []
    assert len(warns) == 1 and warns[0].startswith(f"{b / 'alpha/labels.json'}: labels ['False', 'True'] do not cover")
    with pytest.warns(UserWarning, match="do not cover"):
        assert validate_or_raise(tmp_path, BENCH, NAMES) == warns
    with pytest.warns(UserWarning):
        assert load_task(tmp_path, BENCH, "alpha").labels == ["no", "yes"]


def test_train_inputs_in_test_json_warn_and_missing_definition_warns(tmp_path):
    b = make_benchmark(tmp_path)
    put(b / "alpha/test.json", {"Definition": [], "Instances": alpha_doc()["Instances"][:3]})
    put(b / "beta/train.json", {k: v for k, v in beta_doc().items() if k != "Definition"})
    errors, warns = validate_benchmark(tmp_path, BENCH, NAMES)
    assert errors == []
    assert any(w.startswith(f"{b / 'alpha/train.json'}: Instances: 3 instances whose input also appears in test.json")
               for w in warns)
    assert f"{b / 'beta/train.json'}: Definition: missing; prompts will have no task definition" in warns


def test_split_settings_the_loader_rejects_are_errors(tmp_path):
    b = make_benchmark(tmp_path)
    errors, _ = validate_benchmark(tmp_path, BENCH, ["alpha"], max_eval=11)
    assert len(errors) == 1 and errors[0].startswith(f"{b / 'alpha/train.json'}: 12 instances are too few")
    errors, _ = validate_benchmark(tmp_path, BENCH, ["alpha"], val_size=1.5)
    assert len(errors) == 1 and "val_size" in errors[0]
    assert validate_benchmark(tmp_path, BENCH, ["alpha"], val_size=3, max_eval=4, seed=7) == ([], [])


# ----------------------------------------------------------------------------- through `sapt run`


def existing_run(run_dir: Path, data_dir: Path, names: list[str]) -> dict[str, bytes]:
    """A run directory as `sapt run` leaves it after one stage, with the config the command will resolve."""
    cfg = resolve({"model": "tiny-llama", "data_dir": str(data_dir), "benchmark": BENCH, "tasks": names,
                   "output": str(run_dir)})
    put(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    put(run_dir / "train_log.jsonl", '{"stage": 0, "task": "alpha", "epoch": 0, "step": 0, "loss": 1.5}\n')
    put(run_dir / "stages/00_alpha/stage.json", {"task": "alpha", "best_epoch": 1})
    put(run_dir / "metrics.json", {"tasks": names, "matrix": [[50.0, None]]})
    return tree(run_dir)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


CLI_CASES = CASES  # `sapt run` validates every task file before anything else


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_sapt_run_refuses_bad_data_cleanly_and_leaves_the_run_dir_alone(case, tmp_path, capsys):
    data_dir = tmp_path / "data"
    run_case(case, data_dir)
    run_dir = tmp_path / "run"
    before = existing_run(run_dir, data_dir, list(dict.fromkeys(case.names)))  # a run of each task once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["run", "--model", "tiny-llama", "--data-dir", str(data_dir), "--benchmark", BENCH,
                         "--tasks", ",".join(case.names), "--output", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "error" in err and "Traceback" not in err + out
    assert tree(run_dir) == before


# ----------------------------------------------------------------------------- property: never crashes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
words = st.text(alphabet=string.ascii_lowercase + " ", max_size=6)
inputs = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6)
instances = st.fixed_dictionaries({"input": inputs, "output": words | st.lists(words, min_size=1, max_size=3)})
task_files = st.fixed_dictionaries({"Definition": words | st.lists(words, max_size=2),
                                    "Instances": st.lists(instances, min_size=3, max_size=16,
                                                          unique_by=lambda inst: inst["input"])})


@st.composite
def mutated_task_files(draw) -> Any:
    doc = draw(task_files)
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["instance-field", "top-key", "drop-key", "instance", "duplicate", "truncate"]))
        insts = doc.get("Instances")
        if what == "instance-field" and isinstance(insts, list) and insts and isinstance(insts[0], dict):
            i = draw(st.integers(0, len(insts) - 1))
            if isinstance(insts[i], dict):
                insts[i][draw(st.sampled_from(["input", "output"]))] = draw(json_values)
        elif what == "top-key":
            doc[draw(st.sampled_from(["Definition", "Instances", "Other"]))] = draw(json_values)
        elif what == "drop-key":
            doc.pop(draw(st.sampled_from(["Definition", "Instances"])), None)
        elif what == "instance" and isinstance(insts, list):
            insts.append(draw(json_values))
        elif what == "duplicate" and isinstance(insts, list) and insts:
            insts.extend([insts[0]] * draw(st.integers(1, 10)))
        elif what == "truncate" and isinstance(insts, list):
            del insts[draw(st.integers(0, 3)):]
    return doc


def serialized(doc_strategy) -> st.SearchStrategy[str]:
    """JSON text of a document, sometimes cut short (invalid JSON)."""
    @st.composite
    def build(draw) -> str:
        text = json.dumps(draw(doc_strategy))
        if draw(st.integers(0, 9)) == 7:
            text = text[: draw(st.integers(0, len(text) - 1))]
        return text
    return build()


@st.composite
def task_folders(draw) -> dict[str, str]:
    """train.json (valid, mutated or any JSON value), sometimes with labels.json and / or test.json."""
    files = {"train.json": draw(serialized(st.one_of(task_files, mutated_task_files(), json_values)))}
    extra = draw(st.sampled_from(["none", "none", "labels", "test", "both"]))
    if extra in ("labels", "both"):
        files["labels.json"] = draw(serialized(
            st.lists(st.sampled_from(["a", "b", "yes", "", " "]), min_size=1, max_size=3, unique=True) | json_values))
    if extra in ("test", "both"):
        files["test.json"] = draw(serialized(st.one_of(task_files, mutated_task_files())))
    return files


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=task_folders())
def test_validate_never_crashes_and_no_errors_means_the_loader_succeeds(files):
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            put(Path(d) / BENCH / "t" / name, text)
        validator_agrees_with_loader(d, BENCH)


# ----------------------------------------------------------------------------- the real data


def test_real_benchmarks_validate_without_errors(shared_data):
    for benchmark in ("Long_Sequence", "SuperNI"):
        names = sorted(p.name for p in (shared_data / benchmark).iterdir() if (p / "train.json").is_file())
        errors, warns = validate_benchmark(shared_data, benchmark, names)
        assert errors == [], benchmark
        if benchmark == "Long_Sequence":
            assert any(w.startswith(str(shared_data / "Long_Sequence/qqp/labels.json")) for w in warns)
            assert all("labels.json" in w for w in warns)
