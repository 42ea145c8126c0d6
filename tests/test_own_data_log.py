"""Own data spoken aloud (the ecosystem issue, item 6): at start-up a run says, per task, its split sizes,
where evaluation comes from, the metric and one training prompt with its target as the model gets them, and
the task order with why; an `instruction` field shared by every example becomes the task's definition when
the task gives none. Runs use tiny-llama on tiny folders written here, as tests/test_formats.py does."""
import io as _io
import json
import warnings

import datasets
import pytest
from test_formats import BENCH, alpha_rows, beta_rows, jsonl, put, save_dataset, tiny_run_args, write_split

from sapt.cli import main
from sapt.data import Example, Task, load_task, resolve_task_names
from sapt.data.benchmark import TASK_ORDERS, task_order_reason
from sapt.data.overview import shown, task_lines
from sapt.rundir.layout import RUN_LOG, TASKS

datasets.disable_progress_bars()

INSTRUCTION = "Classify the sentiment.\nAnswer pos or neg."


def with_instruction(rows: list[dict], instruction=INSTRUCTION) -> list[dict]:
    return [{"instruction": instruction, **r} for r in rows]


def own_data(data_dir):
    """alpha: train.jsonl with a shared instruction field and labels.json (no test file); beta: train.csv and
    test.csv, no definition at all."""
    b = data_dir / BENCH
    put(b / "alpha" / "train.jsonl", jsonl(with_instruction(alpha_rows())))
    put(b / "alpha" / "labels.json", ["neg", "pos"])
    write_split(b / "beta", "train", "csv", beta_rows())
    write_split(b / "beta", "test", "csv", beta_rows(6, start=100))
    return b


def run_cli(argv):
    """(exit code, stderr) of `sapt ...`, stderr captured as a pipe would."""
    capture = pytest.MonkeyPatch()
    stdout, stderr = _io.StringIO(), _io.StringIO()
    capture.setattr("sys.stdout", stdout)
    capture.setattr("sys.stderr", stderr)
    try:
        code = main(argv)
    finally:
        capture.undo()
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A two-task run of own data with neither --tasks nor --order: (run dir, stderr)."""
    root = tmp_path_factory.mktemp("own")
    own_data(root / "data")
    out = root / "run"
    code, err = run_cli(["run", *tiny_run_args(), "--data-dir", str(root / "data"), "--benchmark", BENCH,
                         "--output", str(out), "--reflection-source", "real"])
    assert code == 0, err
    return out, err


# ----------------------------------------------------------------------------- 1. the start-up lines


def test_each_task_says_its_splits_evaluation_source_metric_and_a_prompt(own_run):
    _, err = own_run
    lines = err.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("sapt: task 1/2 alpha:")))
    # alpha: 12 examples, max_eval 4 held out (no test file), max_train 8 with 10% validation
    assert lines[at] == ("sapt: task 1/2 alpha: 7 train / 1 validation / 4 evaluation (held out from train.jsonl, "
                         "4 of its 12 examples: no test file); metric em (exact match: labels.json lists the labels)")
    # the instruction is the definition, wrapped by tiny-llama's (causal) template; newlines shown as \n
    assert lines[at + 1].startswith('sapt:   prompt "Classify the sentiment.\\nAnswer pos or neg.\\n\\n'
                                    'Input: sentence number ')
    assert lines[at + 1].endswith('\\nOutput: " (77 tokens)')
    assert lines[at + 2] in ('sapt:   target "neg" + EOS (4 tokens)', 'sapt:   target "pos" + EOS (4 tokens)')
    beta = next(line for line in lines if line.startswith("sapt: task 2/2 beta:"))
    assert beta == ("sapt: task 2/2 beta: 8 train / 1 validation / 4 evaluation (from test.csv, 4 of its 6 examples: "
                    "--max-eval-per-task); metric rougeL (ROUGE-L: no labels.json, so answers are scored as free text)")
    assert lines[lines.index(beta) + 1].startswith('sapt:   prompt "Input: question ')  # no definition: no header
    # said before the first stage trains
    assert lines.index(beta) < lines.index(next(line for line in lines if "epoch 1" in line))


def test_the_start_up_lines_are_in_run_log_too(own_run):
    out, err = own_run
    said = [line for line in err.splitlines() if line.startswith(("sapt: task", "sapt:   "))]
    logged = [line[20:] for line in (out / RUN_LOG).read_text(encoding="utf-8").splitlines()]  # after the time
    assert len(said) == 7 and all(line in logged for line in said)


def test_quiet_keeps_them_off_stderr_and_the_built_in_suite_says_them_too(tmp_path):
    out = tmp_path / "run"
    code, err = run_cli(["run", *tiny_run_args(), "--tasks", "topic,addition", "--output", str(out),
                         "--reflection-source", "real", "--quiet"])
    assert code == 0 and "task order" not in err and "prompt" not in err
    log = (out / RUN_LOG).read_text(encoding="utf-8")
    assert "sapt: task order: topic -> addition (as given by --tasks)" in log
    assert ("sapt: task 2/2 addition: 8 train / 16 validation / 4 evaluation (the built-in suite's generated test "
            "split); metric em (exact match)") in log
    assert 'sapt:   prompt "Answer the arithmetic question with a number.\\n\\nInput: What is ' in log


def test_a_long_prompt_is_shortened_in_the_middle_and_a_cut_is_said():
    text = "Definition line\n" + "x" * 1000 + "\nOutput: "
    short = shown(text)
    assert short.startswith('"Definition line\\nxxx') and short.endswith('xxx\\nOutput: "') and " ... " in short
    assert len(short) < 320 and "\n" not in short
    assert shown('say "hi"\tnow') == '"say \\"hi\\"\\tnow"'  # JSON's escapes: quotes and tabs visible too
    task = Task("t", "Do it.", "rougeL", [Example(text, ("y" * 400,))], [], [Example("e", ("f",))], "test",
                eval_source="test.jsonl", eval_source_size=1)
    lines = task_lines(0, 1, task, "causal", None, "Mine", tokens=(700, 401), max_source=512, max_target=50)
    assert lines[0] == ("sapt: task 1/1 t: 1 train / 0 validation / 1 evaluation (from test.jsonl, all 1 example); "
                        "metric rougeL (ROUGE-L: no labels.json, so answers are scored as free text)")
    assert lines[1].endswith("(700 tokens, cut in the middle to 512: --max-source-length)") and " ... " in lines[1]
    assert lines[2].endswith("+ EOS (401 tokens, cut to 50: --max-target-length)") and " ... " in lines[2]


# ----------------------------------------------------------------------------- 2. the instruction field


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "datasets", "json"])
def test_a_shared_instruction_field_is_the_definition_when_none_is_given(fmt, tmp_path):
    rows = with_instruction(alpha_rows())
    task_dir = tmp_path / BENCH / "t"
    if fmt == "json":  # a CL_Benchmark train.json without a "Definition"
        put(task_dir / "train.json", {"Instances": rows})
    else:
        write_split(task_dir, "train", fmt, rows)
    assert load_task(tmp_path, BENCH, "t").definition == INSTRUCTION.strip()


def test_the_run_records_the_instruction_as_the_definition(own_run):
    out, _ = own_run
    assert json.loads((out / TASKS).read_text())["definitions"] == {"alpha": INSTRUCTION, "beta": ""}


def test_an_explicit_definition_wins_over_the_instruction_field(tmp_path):
    b = tmp_path / BENCH
    put(b / "txt" / "train.jsonl", jsonl(with_instruction(alpha_rows())))
    put(b / "txt" / "definition.txt", "Say neg or pos.\n")
    put(b / "json" / "train.json", {"Definition": ["The file's own."], "Instances": with_instruction(alpha_rows())})
    assert load_task(tmp_path, BENCH, "txt").definition == "Say neg or pos."
    assert load_task(tmp_path, BENCH, "json").definition == "The file's own."


@pytest.mark.parametrize("rows, why", [
    ([{"instruction": f"Variant {i}.", **r} for i, r in enumerate(alpha_rows())], "differs between examples (12 "),
    (with_instruction(alpha_rows(6)) + alpha_rows(6), "only 6 of the 12 examples have one"),
    (with_instruction(alpha_rows(), "  "), "it is empty in every example"),
])
def test_instructions_that_cannot_be_one_definition_are_said_unused(rows, why, tmp_path):
    put(tmp_path / BENCH / "t" / "train.jsonl", jsonl(rows))
    with pytest.warns(UserWarning, match="'instruction' field is not used as the task definition") as caught:
        task = load_task(tmp_path, BENCH, "t")
    assert task.definition == "" and why in str(caught[0].message)
    assert str(tmp_path / BENCH / "t" / "train.jsonl") in str(caught[0].message)


def test_no_instruction_field_no_warning_and_an_instruction_input_is_not_the_definition(tmp_path):
    put(tmp_path / BENCH / "plain" / "train.jsonl", jsonl(alpha_rows()))
    save_dataset(tmp_path / BENCH / "asinput" / "train",
                 [{"instruction": r["input"], "output": r["output"]} for r in alpha_rows()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_task(tmp_path, BENCH, "plain").definition == ""
        task = load_task(tmp_path, BENCH, "asinput", input_field="instruction")
    assert task.definition == "" and task.train[0].input.startswith("sentence number")


def test_the_validator_does_not_call_a_shared_instruction_a_missing_definition(tmp_path):
    from sapt.data.validate import validate_benchmark

    put(tmp_path / BENCH / "t" / "train.json", {"Instances": with_instruction(alpha_rows())})
    put(tmp_path / BENCH / "u" / "train.json", {"Instances": alpha_rows()})
    errors, warns = validate_benchmark(tmp_path, BENCH, ["t", "u"])
    assert errors == [] and warns == [f"{tmp_path / BENCH / 'u' / 'train.json'}: Definition: missing; prompts will "
                                      "have no task definition"]


# ----------------------------------------------------------------------------- 3. the task order


def test_the_order_of_a_folder_without_tasks_or_order_is_said_loudly(own_run):
    _, err = own_run
    assert ("sapt: task order: alpha -> beta (alphabetical: no --tasks or --order given; the benchmark names no "
            "order)") in err.splitlines()


def test_the_order_line_names_the_benchmark_s_order_when_it_has_one(tmp_path):
    for name in ("cb", "mnli"):  # order 4 puts mnli first
        put(tmp_path / "Long_Sequence" / name / "train.jsonl", jsonl(alpha_rows()))
    with pytest.warns(UserWarning, match="skips tasks without train data"):
        assert resolve_task_names(tmp_path, "Long_Sequence", None, None) == ["mnli", "cb"]
    assert next(iter(TASK_ORDERS["Long_Sequence"])) == 4
    assert task_order_reason("Long_Sequence", None, None) == (
        "Long_Sequence order 4: no --tasks or --order given; the benchmark's first named order")
    assert task_order_reason("Long_Sequence", None, 5) == "Long_Sequence order 5, as given by --order"
    assert task_order_reason("Mine", ["b", "a"], None) == "as given by --tasks"

