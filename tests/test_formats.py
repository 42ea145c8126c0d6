"""A user's own tasks as JSON Lines, CSV or a Hugging Face `datasets` save_to_disk folder (sapt.data.formats):
they load like the same examples in train.json, a two-task `sapt run` works on each, and every broken variant is
one error line (file, line / row / index, field) from the validator and exit 2 from `sapt run`."""

import json
import shutil
import string
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import pytest
from conftest import TINY_RUN, validator_agrees_with_loader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sapt import cli
from sapt.data import DataError, load_task, resolve_task_names
from sapt.data.validate import validate_benchmark, validate_or_raise

datasets.disable_progress_bars()

BENCH = "Mine"
NAMES = ["alpha", "beta"]
FORMATS = ("jsonl", "csv", "datasets")


def alpha_rows(n: int = 12, keys: tuple[str, str] = ("input", "output")) -> list[dict]:
    """A classification task: outputs neg / pos (with labels.json)."""
    return [{keys[0]: f"sentence number {i}", keys[1]: "pos" if i % 2 else "neg"} for i in range(n)]


def beta_rows(n: int = 12, keys: tuple[str, str] = ("input", "output"), start: int = 0) -> list[dict]:
    """A generation task."""
    return [{keys[0]: f"question {i}, with a comma", keys[1]: f"answer {i}"} for i in range(start, start + n)]


def put(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def csv_text(rows: list[dict], header: list[str] | None = None) -> str:
    header = header or list(rows[0])
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join(_cell(r.get(h, "")) for h in header))
    return "\r\n".join(lines) + "\r\n"


def _cell(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def save_dataset(path: Path, rows: list[dict]) -> None:
    datasets.Dataset.from_list(rows).save_to_disk(str(path))


def write_split(task_dir: Path, split: str, fmt: str, rows: list[dict]) -> None:
    if fmt == "jsonl":
        put(task_dir / f"{split}.jsonl", jsonl(rows))
    elif fmt == "csv":
        put(task_dir / f"{split}.csv", csv_text(rows))
    else:
        save_dataset(task_dir / split, rows)


def make_benchmark(data_dir: Path, fmt: str, keys: tuple[str, str] = ("input", "output")) -> Path:
    """alpha: train + labels.json + definition.txt; beta: train + test (for datasets, a DatasetDict)."""
    b = data_dir / BENCH
    write_split(b / "alpha", "train", fmt, alpha_rows(keys=keys))
    put(b / "alpha" / "labels.json", ["neg", "pos"])
    put(b / "alpha" / "definition.txt", "Classify the sentiment.\n")
    if fmt == "datasets":
        datasets.DatasetDict({"train": datasets.Dataset.from_list(beta_rows(keys=keys)),
                              "test": datasets.Dataset.from_list(beta_rows(4, keys=keys, start=100))}
                             ).save_to_disk(str(b / "beta"))
    else:
        write_split(b / "beta", "train", fmt, beta_rows(keys=keys))
        write_split(b / "beta", "test", fmt, beta_rows(4, keys=keys, start=100))
    return b


def make_json_benchmark(data_dir: Path) -> Path:
    """The same examples in CL_Benchmark train.json / test.json files."""
    b = data_dir / BENCH
    put(b / "alpha" / "train.json", {"Definition": ["Classify the sentiment."], "Instances": alpha_rows()})
    put(b / "alpha" / "labels.json", ["neg", "pos"])
    put(b / "beta" / "train.json", {"Instances": beta_rows()})
    put(b / "beta" / "test.json", {"Instances": beta_rows(4, start=100)})
    return b


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_like_the_same_examples_in_train_json(fmt, tmp_path):
    make_benchmark(tmp_path / "fmt", fmt)
    make_json_benchmark(tmp_path / "json")
    assert validate_benchmark(tmp_path / "fmt", BENCH, NAMES) == ([], [])
    assert resolve_task_names(tmp_path / "fmt", BENCH, None, None) == NAMES
    for name in NAMES:
        got = load_task(tmp_path / "fmt", BENCH, name, val_size=2, max_eval=3)
        want = load_task(tmp_path / "json", BENCH, name, val_size=2, max_eval=3)
        assert got == want, name
    alpha = load_task(tmp_path / "fmt", BENCH, "alpha")
    assert alpha.definition == "Classify the sentiment." and alpha.labels == ["neg", "pos"] and alpha.metric == "em"
    assert alpha.eval_split == "heldout-train"
    beta = load_task(tmp_path / "fmt", BENCH, "beta")
    assert beta.definition == "" and beta.eval_split == "test" and len(beta.eval) == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_input_field_and_output_field_name_the_keys_and_columns(fmt, tmp_path):
    make_benchmark(tmp_path, fmt, keys=("text", "label"))
    fields = dict(input_field="text", output_field="label")
    assert validate_benchmark(tmp_path, BENCH, NAMES, **fields) == ([], [])
    task = load_task(tmp_path, BENCH, "alpha", **fields)
    assert {ex.outputs for ex in task.train} == {("neg",), ("pos",)}
    errors, _ = validate_benchmark(tmp_path, BENCH, NAMES)  # the default names are not there
    assert errors and all("input" in e or "output" in e for e in errors)


def test_format_details(tmp_path):
    b = tmp_path / BENCH
    # JSONL: a BOM, blank lines and CRLF line ends are fine, several references per line, extra keys ignored
    rows = [{"id": i, "input": f"s{i}", "output": [f"a{i}", f"b{i}"]} for i in range(6)]
    put(b / "j" / "train.jsonl", "\ufeff" + jsonl(rows[:3]).replace("\n", "\r\n") + "\n\n" + jsonl(rows[3:]))
    # CSV: a BOM (Excel), quoted cells with commas and line breaks, other columns, a blank line
    put(b / "c" / "train.csv",
        "\ufeffid, input ,output\r\n1,\"a, b\nc\",x\r\n\r\n2,d,\"y \"\"z\"\"\"\r\n3,e,\r\n4,f,w\r\n")
    # datasets: a ClassLabel output column gives its label names
    feats = datasets.Features({"input": datasets.Value("string"), "output": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"input": [f"x{i}" for i in range(5)], "output": [0, 1, 1, 0, 1]},
                               features=feats).save_to_disk(str(b / "d" / "train"))
    assert validate_benchmark(tmp_path, BENCH, ["j", "c", "d"]) == ([], [])
    j = load_task(tmp_path, BENCH, "j", val_size=1, max_eval=1)
    assert sorted(ex.outputs for ex in j.train + j.val + j.eval)[0] == ("a0", "b0")
    c = load_task(tmp_path, BENCH, "c", val_size=1, max_eval=1)
    assert sorted((ex.input, ex.outputs) for ex in c.train + c.val + c.eval) == [
        ("a, b\nc", ("x",)), ("d", ('y "z"',)), ("e", ("",)), ("f", ("w",))]
    d = load_task(tmp_path, BENCH, "d", val_size=1, max_eval=1)
    assert sorted(ex.outputs[0] for ex in d.train + d.val + d.eval) == ["neg", "neg", "pos", "pos", "pos"]


def test_definition_txt_fills_in_a_missing_definition_and_is_ignored_beside_one(tmp_path):
    b = make_json_benchmark(tmp_path)
    put(b / "beta" / "definition.txt", "  Answer the question.\n")  # beta's train.json has no Definition
    put(b / "alpha" / "definition.txt", "Something else.")
    errors, warns = validate_benchmark(tmp_path, BENCH, NAMES)
    assert errors == [] and warns == [f"{b / 'alpha/definition.txt'}: ignored: train.json has its own Definition"]
    assert load_task(tmp_path, BENCH, "beta").definition == "Answer the question."
    assert load_task(tmp_path, BENCH, "alpha").definition == "Classify the sentiment."


# ----------------------------------------------------------------------------- `sapt run` on each format


def tiny_run_args() -> list[str]:
    """conftest.TINY_RUN as `sapt run` flags."""
    return [a for k, v in TINY_RUN.items() for a in (f"--{k.replace('_', '-')}", str(v))]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_two_task_sapt_run_from_each_format_works_and_scores(fmt, tmp_path, capsys):
    keys = ("question", "answer") if fmt == "csv" else ("input", "output")  # the CSV names its own columns
    make_benchmark(tmp_path / "data", fmt, keys=keys)
    out = tmp_path / "run"
    argv = ["run", *tiny_run_args(), "--data-dir", str(tmp_path / "data"), "--benchmark", BENCH,
            "--tasks", "alpha,beta", "--output", str(out), "--reflection-source", "real"]
    if fmt == "csv":
        argv += ["--input-field", "question", "--output-field", "answer"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["tasks"] == NAMES
    assert isinstance(m["matrix"][0][0], (int, float)) and all(isinstance(x, (int, float)) for x in m["matrix"][1])
    assert isinstance(m["ap"], (int, float))
    saved = (out / "config.yaml").read_text()
    assert f"input_field: {keys[0]}" in saved and f"output_field: {keys[1]}" in saved


# ----------------------------------------------------------------------------- broken variants


def write(rel: str, content: Any) -> Callable[[Path], None]:
    return lambda b: put(b / rel, content)


def lines_with(k: int, line: str, rows: list[dict] | None = None) -> str:
    """alpha's JSONL with line k (1-based) replaced by `line`."""
    lines = jsonl(rows or alpha_rows()).splitlines()
    lines[k - 1] = line
    return "\n".join(lines) + "\n"


def dataset_with(rel: str, rows: list[dict] | dict,
                 features: datasets.Features | None = None) -> Callable[[Path], None]:
    def mutate(b: Path) -> None:
        shutil.rmtree(b / rel, ignore_errors=True)
        data = datasets.Dataset.from_list(rows) if isinstance(rows, list) else \
            datasets.Dataset.from_dict(rows, features=features)
        data.save_to_disk(str(b / rel))
    return mutate


def corrupt_arrow(b: Path) -> None:
    f = next((b / "alpha" / "train").glob("*.arrow"))
    f.write_bytes(f.read_bytes()[:100])


def junk_folder(b: Path) -> None:
    shutil.rmtree(b / "alpha" / "train")
    put(b / "alpha" / "train" / "notes.txt", "not a dataset")


def datasetdict_in_train(b: Path) -> None:
    shutil.rmtree(b / "alpha" / "train")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(alpha_rows())}).save_to_disk(str(b / "alpha" / "train"))


def no_train_split(b: Path) -> None:
    shutil.rmtree(b / "beta")
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(beta_rows())}).save_to_disk(str(b / "beta"))


@dataclass
class Case:
    id: str
    fmt: str
    mutate: Callable[[Path], None]
    file: str  # the path (relative to the benchmark folder) the message starts with
    fragment: str  # what it must say
    loader_raises: bool = True
    cli: str | None = None  # what `sapt run` says, when it refuses before the validator (a task without train data)


NOT_FOUND = ": tasks not found (no <task>/train.json, train.jsonl, train.csv or train/): "
ROWS_NO_OUTPUT = [{"input": f"s{i}"} if i == 3 else r for i, r in enumerate(alpha_rows())]

CASES = [
    # JSONL
    Case("jsonl-bad-json-line", "jsonl", write("alpha/train.jsonl", lines_with(3, '{"input": "x",}')),
         "alpha/train.jsonl", "line 3: invalid JSON (Expecting property name enclosed in double quotes at column 15)"),
    Case("jsonl-missing-output", "jsonl", write("alpha/train.jsonl", jsonl(ROWS_NO_OUTPUT)), "alpha/train.jsonl",
         "line 4: output: missing"),
    Case("jsonl-missing-input", "jsonl", write("alpha/train.jsonl", lines_with(2, '{"text": "x", "output": "pos"}')),
         "alpha/train.jsonl", "line 2: input: missing"),
    Case("jsonl-output-int", "jsonl", write("alpha/train.jsonl", lines_with(2, '{"input": "x", "output": 1}')),
         "alpha/train.jsonl", "line 2: output: expected a string or a list of strings, got int"),
    Case("jsonl-output-list-with-null", "jsonl",
         write("alpha/train.jsonl", lines_with(5, '{"input": "x", "output": ["pos", null]}')),
         "alpha/train.jsonl", "line 5: output[1]: expected a string, got null"),
    Case("jsonl-line-not-object", "jsonl", write("alpha/train.jsonl", lines_with(1, '["x", "pos"]')),
         "alpha/train.jsonl", "line 1: expected an object with 'input' and 'output', got list"),
    Case("jsonl-empty-file", "jsonl", write("alpha/train.jsonl", ""), "alpha/train.jsonl", "empty file (no examples"),
    Case("jsonl-not-utf8", "jsonl",
         write("alpha/train.jsonl", lines_with(2, '{"input": "caf_", "output": "pos"}').encode().replace(b"_", b"\xe9")),
         "alpha/train.jsonl", "line 2: not valid UTF-8 text (bad byte at offset 14 of the line)"),
    Case("jsonl-test-file-bad", "jsonl", write("beta/test.jsonl", '{"input": "t", "output": 7}\n'), "beta/test.jsonl",
         "line 1: output: expected a string or a list of strings, got int"),
    Case("jsonl-too-few", "jsonl", write("alpha/train.jsonl", jsonl(alpha_rows(2))), "alpha/train.jsonl",
         "only 2 examples; at least 3 are needed"),
    Case("jsonl-blank-input", "jsonl", write("alpha/train.jsonl", lines_with(4, '{"input": " ", "output": "pos"}')),
         "alpha/train.jsonl", "line 4: input: empty string", loader_raises=False),
    # CSV
    Case("csv-no-header", "csv", write("alpha/train.csv", csv_text(alpha_rows())[len("input,output\r\n"):]),
         "alpha/train.csv", "row 1: the header has no 'input' column (found 'sentence number 0', 'neg')"),
    Case("csv-missing-field", "csv", write("alpha/train.csv", csv_text(alpha_rows()).replace(",pos\r\n", "\r\n", 1)),
         "alpha/train.csv", "row 3: output: missing (the row has 1 field, the header 2)"),
    Case("csv-extra-field", "csv",
         write("alpha/train.csv", csv_text(alpha_rows()).replace(",neg\r\n", ",neg,x\r\n", 2)),
         "alpha/train.csv", "row 2: 3 fields but the header has 2 columns"),
    Case("csv-empty-file", "csv", write("alpha/train.csv", ""), "alpha/train.csv", "empty file"),
    Case("csv-header-only", "csv", write("alpha/train.csv", "input,output\n"), "alpha/train.csv",
         "no rows after the header (no examples)"),
    Case("csv-not-utf8", "csv", write("alpha/train.csv", b"input,output\ncaf\xe9,pos\n"), "alpha/train.csv",
         "not valid UTF-8 text (bad byte at offset 16, line 2)"),
    Case("csv-unclosed-quote", "csv", write("alpha/train.csv", 'input,output\n"a,pos\nb,neg\n'), "alpha/train.csv",
         "row 2 (from line 2): malformed CSV (unexpected end of data; an unclosed quote?)"),
    Case("csv-column-twice", "csv", write("alpha/train.csv", "input,output,output\na,pos,neg\n"), "alpha/train.csv",
         "row 1: the header names the 'output' column 2 times"),
    Case("csv-outputs-all-empty", "csv", write("beta/train.csv", csv_text([{**r, "output": ""} for r in beta_rows()])),
         "beta/train.csv", "the output of every one of the 12 rows is empty", loader_raises=False),
    Case("csv-test-file-no-header", "csv", write("beta/test.csv", "q,a\n"), "beta/test.csv",
         "row 1: the header has no 'input' column"),
    # a datasets save_to_disk folder
    Case("datasets-junk-folder", "datasets", junk_folder, "alpha/train",
         "cannot be loaded as a Hugging Face datasets save_to_disk folder (FileNotFoundError"),
    Case("datasets-corrupt-arrow", "datasets", corrupt_arrow, "alpha/train",
         "cannot be loaded as a Hugging Face datasets save_to_disk folder (ArrowInvalid"),
    Case("datasets-missing-column", "datasets", dataset_with("alpha/train", alpha_rows(keys=("input", "label"))),
         "alpha/train", "no 'output' column (columns: 'input', 'label')"),
    Case("datasets-int-column", "datasets",
         dataset_with("alpha/train", {"input": list(range(12)), "output": ["pos"] * 12}), "alpha/train",
         "column 'input' holds int64 values; expected strings"),
    Case("datasets-null-output", "datasets",
         dataset_with("alpha/train", [{**r, "output": None if i == 2 else r["output"]}
                                      for i, r in enumerate(alpha_rows())]),
         "alpha/train", "index 2: output: expected a string or a list of strings, got null"),
    Case("datasets-datasetdict-in-train", "datasets", datasetdict_in_train, "alpha/train",
         "holds a DatasetDict (splits ['train']), not one split"),
    Case("datasets-no-train-split", "datasets", no_train_split, "beta/train.json",
         "its dataset_dict.json lists the splits ['validation'], none named 'train'", cli=NOT_FOUND + "beta"),
    Case("datasets-bad-test-split", "datasets", dataset_with("beta/test", beta_rows(3, keys=("input", "out"))),
         "beta/test", "no 'output' column"),
    # any format
    Case("two-train-sources", "jsonl", write("alpha/train.json", {"Instances": alpha_rows()}), "alpha",
         "several train sources (train.json, train.jsonl); keep only one"),
    Case("two-test-sources", "csv", write("beta/test.jsonl", jsonl(beta_rows(2, start=50))), "beta",
         "several test sources (test.jsonl, test.csv)"),
    Case("train-folder-beside-csv", "csv", write("alpha/train/state.json", "{}"), "alpha",
         "several train sources (train.csv, train/)"),
    Case("definition-not-utf8", "jsonl", write("alpha/definition.txt", b"Classify\nthe caf\xe9"),
         "alpha/definition.txt",
         "not valid UTF-8 text (bad byte at offset 16, line 2)"),
    Case("no-train-at-all", "csv", lambda b: (b / "alpha" / "train.csv").unlink(), "alpha/train.json",
         "not found (every task needs one of train.json, train.jsonl, train.csv, train/", cli=NOT_FOUND + "alpha"),
]


def test_the_cases_cover_every_format():
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(sum(c.fmt == f for c in CASES) >= 6 for f in FORMATS)


def run_case(case: Case, data_dir: Path) -> Path:
    b = make_benchmark(data_dir, case.fmt)
    case.mutate(b)
    return b


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_broken_file_is_one_line_naming_file_and_field(case, tmp_path, capsys):
    b = run_case(case, tmp_path / "data")
    where = str(b / case.file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # validate_benchmark returns its warnings
        errors, _ = validate_benchmark(tmp_path / "data", BENCH, NAMES)
    assert any(e.startswith(where + ": ") and case.fragment in e for e in errors), \
        f"no error on {where} mentioning {case.fragment!r}; got:\n" + "\n".join(errors)
    assert all("\n" not in e for e in errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as e:
            validate_or_raise(tmp_path / "data", BENCH, NAMES)
        assert str(e.value).splitlines()[1:] == errors
        task = case.file.split("/")[0]
        if case.loader_raises:
            with pytest.raises(DataError, match="^" + str(b / task)):
                load_task(tmp_path / "data", BENCH, task)
        else:  # a problem only the validator reports: the loader takes the task
            load_task(tmp_path / "data", BENCH, task)

        # through `sapt run`: exit 2, one line, nothing written
        code = cli.main(["run", "--model", "tiny-llama", "--data-dir", str(tmp_path / "data"), "--benchmark", BENCH,
                         "--tasks", ",".join(NAMES), "--output", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("sapt: error: ") and "Traceback" not in out + err
    if case.cli is None:
        assert where in err and case.fragment in err
    else:
        assert f"{b}{case.cli}" in err
    assert not (tmp_path / "run").exists()


def test_input_field_and_output_field_must_be_two_names(tmp_path, capsys):
    make_benchmark(tmp_path / "data", "jsonl")
    errors, _ = validate_benchmark(tmp_path / "data", BENCH, NAMES, input_field="x", output_field="x")
    assert errors == [f"{tmp_path / 'data' / BENCH}: input_field and output_field must differ, both are 'x'"]
    code = cli.main(["run", "--model", "tiny-llama", "--data-dir", str(tmp_path / "data"), "--benchmark", BENCH,
                     "--input-field", "", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "input_field must be a non-empty field name" in err


def test_bad_lines_are_capped_per_file(tmp_path):
    b = make_benchmark(tmp_path, "jsonl")
    rows = alpha_rows(20)
    text = "".join(json.dumps({**r, "output": 0} if 2 <= i < 10 else r) + "\n" for i, r in enumerate(rows))
    put(b / "alpha/train.jsonl", text)
    errors, _ = validate_benchmark(tmp_path, BENCH, NAMES)
    path = b / "alpha/train.jsonl"
    bad = [f"{path}: line {k}: output: expected a string or a list of strings, got int" for k in range(3, 8)]
    assert errors == bad + [f"{path}: ... and 3 more bad lines (8 of 20 in all)"]


# ----------------------------------------------------------------------------- property: never crashes


cells = st.text(alphabet=string.ascii_lowercase + ' ,"\n\r\\{}[]:', max_size=8)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | cells,
                           lambda children: st.lists(children, max_size=3), max_leaves=6)


@st.composite
def jsonl_files(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["ok", "ok", "ok", "value", "junk", "blank"]))
        if kind == "ok":
            lines.append(json.dumps({"input": draw(cells), "output": draw(cells | st.lists(cells, max_size=2))}))
        elif kind == "value":
            lines.append(json.dumps({draw(st.sampled_from(["input", "output", "x"])): draw(json_values)}))
        elif kind == "junk":
            lines.append(draw(cells).replace("\n", " "))
        else:
            lines.append("")
    return "\n".join(lines)


@st.composite
def csv_files(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(cells)
    header = draw(st.sampled_from([["input", "output"], ["output", "id", "input"], ["input"], ["a", "b"]]))
    buf = [",".join(header)]
    for _ in range(draw(st.integers(0, 14))):
        row = [draw(cells) for _ in range(draw(st.integers(0, len(header) + 1)))]
        buf.append(",".join(_cell(c) if draw(st.booleans()) else c for c in row))
    return "\n".join(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["jsonl", "csv"]), text=st.data())
def test_validate_never_crashes_and_no_errors_means_the_loader_succeeds(fmt, text):
    body = text.draw(jsonl_files() if fmt == "jsonl" else csv_files())
    with tempfile.TemporaryDirectory() as d:
        put(Path(d) / BENCH / "t" / f"train.{fmt}", body)
        validator_agrees_with_loader(d, BENCH)
