"""Check a benchmark's task files before a run, reporting every problem at once.

The loader (`sapt.data.benchmark.load_task`) stops at the first problem it meets, which makes fixing a
broken data folder a slow loop of run, fix, run. `validate_benchmark` reads every file of every task
of the run and returns all problems found, each a single line that names the file and the field:

    .../Long_Sequence/sst2/train.json: Instances[3].output: expected a string or a list of strings, got int

Problems come in two kinds:

- errors: the run cannot work (missing or malformed files, too few usable instances, ...);
- warnings: the run works but probably not as intended, e.g. a labels.json that does not cover the
  outputs (the public qqp labels.json says ["False", "True"] while its outputs are "no"/"yes"; the
  loader then uses the outputs as the label set), or train.json inputs that also appear in test.json
  and so are dropped from training.

Tasks kept as JSON Lines, CSV or a `datasets` save_to_disk folder (sapt.data.formats) are checked the same
way, their messages naming the line (JSONL), row (CSV) or index (datasets) and the field:

    .../Mine/sst2/train.jsonl: line 4: output: missing

Guarantee: when `validate_benchmark` returns no errors, `load_task` succeeds on every task with the
same split settings (after the file checks pass, each task is loaded once with those settings and a
loader failure is reported as an error).

`validate_or_raise` is the form for the command line: it raises one `DataError` listing every error
and emits the warnings with `warnings.warn`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

from sapt.data.benchmark import check_fields, load_task
from sapt.data.formats import (
    DEFINITION_FILE,
    Source,
    missing_message,
    parse_source,
    read_definition,
    several_message,
    sources,
)
from sapt.data.schema import JsonProblem, Problem, SplitFile, effective_labels, parse_labels, parse_split, read_json
from sapt.data.types import DataError, Example

__all__ = ["MAX_INSTANCE_MESSAGES", "validate_benchmark", "validate_or_raise"]

# Per file, the problems of this many bad instances (or bad labels) are listed, then a count of the rest.
MAX_INSTANCE_MESSAGES = 5

SPLIT_FILES = ("train.json", "test.json", "dev.json")


def _one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


class _Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: Path | str, message: str) -> None:
        self.errors.append(_one_line(f"{where}: {message}"))

    def warn(self, where: Path | str, message: str) -> None:
        self.warnings.append(_one_line(f"{where}: {message}"))

    def problems(self, path: Path, problems: list[Problem], more: Callable[[int], str]) -> None:
        """Report `problems`, those of only the first MAX_INSTANCE_MESSAGES bad items (instances or labels),
        followed by `more(number of bad items)` where items were left out."""
        bad = list(dict.fromkeys(p.item for p in problems if p.item is not None))
        shown = set(bad[:MAX_INSTANCE_MESSAGES])
        last_item = max((k for k, p in enumerate(problems) if p.item is not None), default=-1)
        for k, p in enumerate(problems):
            if p.item is None or p.item in shown:
                self.error(path, p.message)
            if k == last_item and len(bad) > MAX_INSTANCE_MESSAGES:
                self.error(path, more(len(bad)))


def _read_json(path: Path, report: _Report) -> tuple[bool, Any]:
    """Parse a JSON file the way the loader does. Returns (ok, data); on failure an error is recorded."""
    if not path.is_file():
        report.error(path, "not a file")
        return False, None
    try:
        return True, read_json(path)
    except JsonProblem as e:
        report.error(path, e.problem.message)
    except RecursionError:
        report.error(path, "invalid JSON (nested too deeply to parse)")
    except ValueError as e:  # e.g. an integer literal longer than Python's digit limit
        report.error(path, f"invalid JSON ({e})")
    return False, None


def _check_split_file(path: Path, report: _Report) -> SplitFile | None:
    """Check a train/test/dev .json file. Returns it parsed (its problems reported), or None if unreadable."""
    ok, data = _read_json(path, report)
    if not ok:
        return None
    split = parse_split(data)
    report.problems(path, split.problems, lambda bad: f"Instances: ... and {bad - MAX_INSTANCE_MESSAGES} more bad "
                                                      f"instances ({bad} of {split.n_instances} in all)")
    if not isinstance(data, dict):
        split.definition = ""  # not "missing": the file is wrong already
    return split


_UNITS = {"jsonl": "lines", "csv": "rows", "datasets": "examples"}


def _check_source(src: Source, report: _Report, fields: dict[str, str]) -> SplitFile | None:
    """Check a train or test source of any format. Returns it parsed (its problems reported), or None."""
    if src.kind == "json":
        return _check_split_file(src.path, report)
    split = parse_source(src, **fields)
    unit = _UNITS[src.kind]
    report.problems(src.path, split.problems, lambda bad: f"... and {bad - MAX_INSTANCE_MESSAGES} more bad {unit} "
                                                          f"({bad} of {split.n_instances} in all)")
    return split


def _one_source(task_dir: Path, split: str, report: _Report) -> tuple[Source | None, bool]:
    """(the source of `split`, whether there is any): several sources are an error."""
    found = sources(task_dir, split)
    if len(found) > 1:
        report.error(task_dir, several_message(split, found))
        return None, True
    return (found[0] if found else None), bool(found)


def _check_labels(path: Path, report: _Report) -> list[str] | None:
    """Check labels.json. Returns the labels, or None if the file has errors."""
    ok, data = _read_json(path, report)
    if not ok:
        return None
    parsed = parse_labels(data)
    report.problems(path, parsed.problems,
                    lambda bad: f"labels: ... and {bad - MAX_INSTANCE_MESSAGES} more labels that are not strings")
    return None if parsed.problems else parsed.labels


def _check_sizes(train_src: Source, train: list[Example], test: list[Example] | None, test_name: str | None,
                 report: _Report) -> None:
    """The loader needs at least 2 distinct usable inputs (training + validation), plus 1 held out for
    evaluation when there is no test file; duplicate inputs and inputs that are in the test file are dropped."""
    train_path, has_test = train_src.path, test_name is not None
    # train.json's messages name its Instances; the other formats' name their examples
    at, what = ("Instances: ", "instance") if train_src.kind == "json" else ("", "example")
    n = len(train)
    need = 2 if has_test else 3
    inputs = [ex.input for ex in train]
    distinct = set(inputs)
    if test is not None:
        test_inputs = {ex.input for ex in test}
        overlap = sum(x in test_inputs for x in inputs)
        usable = len(distinct - test_inputs)
    else:
        overlap, usable = 0, len(distinct)
    if n < need:
        purpose = f"training and validation examples ({test_name} gives the evaluation ones)" if has_test else \
            "training, validation and held-out evaluation examples"
        report.error(train_path, f"{at}only {n} {what}{'s' if n != 1 else ''}; at least {need} "
                                 f"are needed to carve {purpose}")
    elif usable == 0:
        report.error(train_path, f"{at}every one of the {n} {what}s would be dropped: "
                                 f"their inputs all appear in {test_name}")
    elif not has_test and len(distinct) == 1:
        report.error(train_path, f"{at}all {n} {what}s have the same input; after one is held out "
                                 "for evaluation every other would be dropped as a duplicate")
    elif usable < need:
        extra = f" that are not in {test_name}" if has_test else ""
        report.error(train_path, f"{at}only {usable} distinct input{'s' if usable != 1 else ''}{extra} "
                                 f"among {n} {what}s; at least {need} are needed (duplicates are dropped)")
    if overlap and usable:
        report.warn(train_path, f"{at}{overlap} {what}{'s' if overlap != 1 else ''} whose input also "
                                f"appears in {test_name} will be dropped from training and validation")


def _check_labels_cover(labels_path: Path, labels: list[str], train: list[Example], train_name: str,
                        test: list[Example] | None, test_name: str | None, report: _Report) -> None:
    used, missing = effective_labels(labels, train)
    if missing:
        report.warn(labels_path, f"labels {labels} do not cover the {train_name} outputs {missing}; "
                                 f"the loader will use the outputs {used} as the label set")
    if test is not None:
        unseen = sorted({ex.outputs[0] for ex in test} - set(used))
        if unseen:
            report.warn(labels_path, f"{test_name} has outputs that are not labels: {unseen[:10]}"
                                     f"{' ...' if len(unseen) > 10 else ''}")


def _check_task(bench_dir: Path, data_dir: Path, benchmark: str, name: str, report: _Report,
                load_kwargs: dict[str, Any], fields: dict[str, str]) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        report.error(bench_dir, f"task name {name!r}: must be the name of a folder in the benchmark")
        return
    task_dir = bench_dir / name
    if not task_dir.is_dir():
        report.error(task_dir, "task folder not found")
        return
    n_errors = len(report.errors)
    train_src, has_train = _one_source(task_dir, "train", report)
    train_file = _check_source(train_src, report, fields) if train_src is not None else None
    if not has_train:
        report.error(task_dir / "train.json", missing_message(task_dir))
    train = train_file.examples if train_file is not None and not train_file.problems else None
    test_src, has_test = _one_source(task_dir, "test", report)
    test_file = _check_source(test_src, report, fields) if test_src is not None else None
    test = test_file.examples if test_file is not None and not test_file.problems else None
    if (task_dir / "dev.json").exists():  # unused by the loader (it equals test.json in the public release)
        _check_split_file(task_dir / "dev.json", report)
    labels_path = task_dir / "labels.json"
    labels = _check_labels(labels_path, report) if labels_path.exists() else None
    # The definition: train.json's, else definition.txt, else a shared instruction field (what the loader reads).
    definition_path = task_dir / DEFINITION_FILE
    if train_file is not None and train_file.definition is not None:
        if definition_path.exists():
            report.warn(definition_path, f"ignored: {train_src.name} has its own Definition")
    else:
        for p in read_definition(definition_path)[1]:
            report.error(definition_path, p.message)
        if train_src is not None and train_src.kind == "json" and train_file is not None \
                and not definition_path.exists() and train_file.instruction is None:
            report.warn(train_src.path, "Definition: missing; prompts will have no task definition")

    # a task only evaluated (--unseen) needs no training or validation examples: the loader's try below
    # says what its evaluation split needs
    if train is not None and (test is not None or not has_test) and not load_kwargs.get("eval_only"):
        assert train_src is not None
        _check_sizes(train_src, train, test, test_src.path.name if test_src is not None else None, report)
    if train is not None and labels is not None:
        assert train_src is not None
        _check_labels_cover(labels_path, labels, train, train_src.path.name, test,
                            test_src.path.name if test_src is not None else None, report)

    if len(report.errors) == n_errors:
        # The file checks passed: load the task once with the run's split settings, so that "no errors"
        # really means the loader succeeds (split sizes also depend on val_size, max_eval and the seed).
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the checks above report the loader's warnings
                load_task(data_dir, benchmark, name, **load_kwargs)
        except DataError as e:  # its message starts with the file's path
            report.errors.append(_one_line(str(e)))
        except ValueError as e:
            report.error(task_dir, f"invalid split settings: {e}")


def validate_benchmark(data_dir: str | Path, benchmark: str, names: list[str], *,
                       val_size: float | int = 0.1, max_train: int | None = None,
                       max_eval: int | None = None, seed: int = 42, input_field: str = "input",
                       output_field: str = "output", eval_only: bool = False) -> tuple[list[str], list[str]]:
    """Check the files of tasks `names` of `data_dir/benchmark`; return `(errors, warnings)`.

    Every problem found is listed, not just the first: each is one line starting with the path of the
    file (or folder) and naming the field, e.g. "<...>/train.json: Instances[3].input: missing". Per
    file, the problems of the first MAX_INSTANCE_MESSAGES bad instances are listed, then a count.

    errors (the run cannot work): a missing data/benchmark/task folder or train.json; a file that is
    not UTF-8 JSON (with line and column); a top level that is not an object; a Definition that is not
    a string or a list of strings; Instances missing, not a list or empty; an instance that is not an
    object, whose "input" is not a non-empty string or whose "output" is not a string or a non-empty
    list of strings; a file whose outputs are all empty (or blank); a labels.json that is not a non-empty list of distinct strings; test.json and
    dev.json (when present) checked like train.json; duplicate names in `names`; too few instances
    (distinct inputs, not in test.json) to carve training, validation and evaluation examples; and any
    failure of `load_task` with the given split settings (`val_size`, `max_train`, `max_eval`, `seed`,
    as in `load_task`), which is tried once the file checks of a task pass.

    The other formats (sapt.data.formats): every problem of a train/test .jsonl, .csv or datasets folder,
    with its line, row or index (a line that is not JSON, a missing field, a non-string output, an empty
    file, bytes that are not UTF-8, a CSV without the header, a folder `datasets` cannot load or that lacks
    the column); two sources of one split; a definition.txt that is not UTF-8 text; `input_field` and
    `output_field` that are empty or equal.

    eval_only: the tasks are only evaluated (`--unseen`): their sizes are checked for the evaluation split
    alone (`load_task`'s eval_only).

    warnings (the run works): labels.json not covering the train.json outputs (the loader then uses
    the outputs as the label set; the public qqp task has this), test.json outputs outside the label
    set, train.json inputs that also appear in test.json (dropped), a train.json without Definition.

    Never raises for bad data; only the messages say what is wrong.
    """
    report = _Report()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        report.error(data_dir, "data directory not found")
        return report.errors, report.warnings
    bench_dir = data_dir / benchmark
    if not benchmark or not bench_dir.is_dir() or bench_dir.resolve() == data_dir.resolve():
        report.error(bench_dir, "benchmark folder not found")
        return report.errors, report.warnings
    if not names:
        report.error(bench_dir, "no tasks given")
    dupes = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if dupes:
        report.error(bench_dir, "duplicate task names in the task list: "
                                + ", ".join(f"{n} ({names.count(n)} times)" for n in dupes))
    try:
        check_fields(input_field, output_field)
    except ValueError as e:
        report.error(bench_dir, str(e))
        return report.errors, report.warnings
    fields = dict(input_key=input_field, output_key=output_field)
    load_kwargs = dict(val_size=val_size, max_train=max_train, max_eval=max_eval, seed=seed,
                       input_field=input_field, output_field=output_field, eval_only=eval_only)
    for name in dict.fromkeys(names):
        _check_task(bench_dir, data_dir, benchmark, name, report, load_kwargs, fields)
    return report.errors, report.warnings


def validate_or_raise(data_dir: str | Path, benchmark: str, names: list[str], **split_settings: Any) -> list[str]:
    """Validate like `validate_benchmark`; emit each warning with `warnings.warn` and return them.

    Raises `DataError` when there are errors: its message's first line says how many problems were
    found, and the following lines list them, one per line.
    """
    errors, warns = validate_benchmark(data_dir, benchmark, names, **split_settings)
    for w in warns:
        warnings.warn(w, UserWarning, stacklevel=2)
    if errors:
        n = len(errors)
        raise DataError(f"{n} problem{'s' if n != 1 else ''} in the task data of {Path(data_dir) / benchmark}:\n"
                        + "\n".join(errors))
    return warns
