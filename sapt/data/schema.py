"""The task-file schema, parsed in one place for the loader and the validator.

    train.json, test.json, dev.json   {"Definition": str | [str], "Instances": [{"input": str, "output": str | [str]}]}
    labels.json                       [str, ...]

The parsers here never stop early: they return every problem of a file, each a `Problem` that carries
two messages, because the file is read in two ways:

- collecting (`sapt.data.validate`): every problem is listed, with a message that names the field
  ("Instances[3].output: expected a string or a list of strings, got int");
- strict (`sapt.data.benchmark.load_task`, through `load_split` and `load_labels`): the first problem the
  loader refuses is raised as a `DataError` ("Instances[3].output must be a string or a non-empty list of
  strings"). Some problems only the validator reports (a blank input, an unpaired surrogate, a file whose
  answers are all empty, duplicate labels): their `loader` message is None and the loader accepts them.

Both messages are written after the file's path and ": ". The JSON Lines, CSV and `datasets` formats
(sapt.data.formats) reuse `parse_instance` and the same two-message `Problem`s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sapt.data.types import DataError, Example

__all__ = ["INSTRUCTION_FIELD", "JsonProblem", "LabelsFile", "Problem", "SplitFile", "all_empty_problem",
           "effective_labels", "load_labels", "load_split", "parse_instance", "parse_labels", "parse_split",
           "raise_first", "read_json", "shared_instruction", "type_name"]

# The loader's messages, one per kind of problem it refuses (after "<path>: ").
_LOADER_DEFINITION = "'Definition' must be a string or a list of strings"
_LOADER_LABELS = "must be a non-empty JSON list of strings"
# The per-example field that many instruction-tuning files carry (Alpaca's {"instruction", "input", "output"}):
# when every example has the same one, it is the task's definition (`shared_instruction`).
INSTRUCTION_FIELD = "instruction"


@dataclass(frozen=True)
class Problem:
    message: str  # the validator's message, naming the field
    loader: str | None  # the loader's message for it; None: the loader accepts the file anyway
    item: int | None = None  # the index of the bad instance (or label) it belongs to
    definition: bool = False  # a problem of the Definition (the loader checks it last, and only in train.json)


class JsonProblem(Exception):
    """A file that cannot be read as JSON; `problem` says why."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


def _bad_text(s: str) -> str | None:
    """Why a string cannot be used as model text, or None if it can."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate escape (not encodable as UTF-8)"
    return None


def read_json(path: Path) -> Any:
    """The parsed file. Raises `JsonProblem` when it is not UTF-8 JSON or cannot be read.

    Other failures of `json.load` (RecursionError on absurd nesting, ValueError on an integer literal
    past Python's digit limit) propagate: the validator reports them, the loader lets them through.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        message = f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        raise JsonProblem(Problem(message, message)) from e
    except UnicodeDecodeError as e:
        raise JsonProblem(Problem(f"not valid UTF-8 text (bad byte at offset {e.start})",
                                  "not valid UTF-8 text")) from e
    except OSError as e:
        raise JsonProblem(Problem(f"cannot read ({e.strerror or e})", f"cannot read ({e.strerror})")) from e


# ----------------------------------------------------------------------------- train / test / dev files


@dataclass
class SplitFile:
    examples: list[Example]  # the instances the loader accepts, in file order (all of them when no problems)
    definition: str | None  # the task definition (stripped; "" for an empty list); None: no Definition key
    n_instances: int = 0  # len(Instances) when it is a list
    problems: list[Problem] = field(default_factory=list)
    instruction: str | None = None  # the `instruction` field every example shares (stripped), see shared_instruction
    instruction_unused: str | None = None  # why examples that carry an `instruction` field give no definition


def shared_instruction(values: list[Any]) -> tuple[str | None, str | None]:
    """(the instruction every example carries, stripped; why there is none although some examples carry one).

    `values` holds each example's `instruction` value, None where it has none. A task has one definition
    (every prompt of the task, its reflection inputs and `sapt predict` use the same one), so only an
    instruction that is the same in every example can become it. Instructions that differ per example, or
    that some examples lack, are not folded into the inputs either: that would change the data the user
    wrote; the caller says why they are unused instead."""
    given = [v for v in values if v is not None]
    if not given:
        return None, None
    texts = {v.strip() for v in given if isinstance(v, str)}
    if len(given) == len(values) and len(texts) == 1 and all(isinstance(v, str) for v in given) and "" not in texts:
        return texts.pop(), None
    if any(not isinstance(v, str) for v in given):
        why = "some values are not strings"
    elif len(given) < len(values):
        why = f"only {len(given)} of the {len(values)} examples have one"
    elif texts == {""}:
        why = "it is empty in every example"
    else:
        why = f"it differs between examples ({len(texts)} different values)"
    return None, (f"the '{INSTRUCTION_FIELD}' field is not used as the task definition: {why} (a task has one "
                  f"definition; write it in definition.txt or put the instruction into the input)")


def _definition(d: Any) -> tuple[str, list[Problem]]:
    if isinstance(d, str):
        bad = _bad_text(d)
        return d.strip(), [Problem(f"Definition: {bad}", None, definition=True)] if bad else []
    if not isinstance(d, list):
        return "", [Problem(f"Definition: expected a string or a list of strings, got {type_name(d)}",
                            _LOADER_DEFINITION, definition=True)]
    loader = None if all(isinstance(s, str) for s in d) else _LOADER_DEFINITION
    value = d[0].strip() if d and loader is None else ""  # Long_Sequence/copa ships an empty list
    for j, s in enumerate(d):  # the first bad element is reported
        if not isinstance(s, str):
            return value, [Problem(f"Definition[{j}]: expected a string, got {type_name(s)}", loader, definition=True)]
        if _bad_text(s):
            return value, [Problem(f"Definition[{j}]: {_bad_text(s)}", loader, definition=True)]
    return value, []


def parse_instance(i: int, inst: Any, where: str | None = None, *, input_key: str = "input", output_key: str = "output",
              sep: str = ".") -> tuple[list[Problem], Example | None]:
    """Problems of one example, and its Example when the loader accepts it.

    `where` names the example (default "Instances[i]"), `sep` joins it to a field name ("Instances[3].input",
    "line 3: input"); `input_key` / `output_key` are the names of its two fields.
    """
    where = f"Instances[{i}]" if where is None else where
    w_in, w_out = f"{where}{sep}{input_key}", f"{where}{sep}{output_key}"
    if not isinstance(inst, dict):
        return [Problem(f"{where}: expected an object with '{input_key}' and '{output_key}', got {type_name(inst)}",
                        f"{where} must be an object", i)], None
    problems = []
    bad_input = f"{w_in} must be a string"
    if input_key not in inst:
        problems.append(Problem(f"{w_in}: missing", bad_input, i))
    else:
        x = inst[input_key]
        if not isinstance(x, str):
            problems.append(Problem(f"{w_in}: expected a string, got {type_name(x)}", bad_input, i))
        elif not x.strip():
            problems.append(Problem(f"{w_in}: empty string", None, i))
        elif _bad_text(x):
            problems.append(Problem(f"{w_in}: {_bad_text(x)}", None, i))
    bad_output = f"{w_out} must be a string or a non-empty list of strings"
    outputs: tuple[str, ...] = ()
    if output_key not in inst:
        problems.append(Problem(f"{w_out}: missing", bad_output, i))
    else:
        out = inst[output_key]
        if isinstance(out, str):
            outputs = (out,)
        elif isinstance(out, list):
            if not out:
                problems.append(Problem(f"{w_out}: empty list (expected at least one reference string)",
                                        bad_output, i))
            for j, o in enumerate(out):
                if not isinstance(o, str):
                    problems.append(Problem(f"{w_out}[{j}]: expected a string, got {type_name(o)}", bad_output, i))
                    break
            else:
                outputs = tuple(out)
        else:
            problems.append(Problem(f"{w_out}: expected a string or a list of strings, got {type_name(out)}",
                                    bad_output, i))
        for j, o in enumerate(outputs):
            if _bad_text(o):
                where_o = w_out if isinstance(out, str) else f"{w_out}[{j}]"
                problems.append(Problem(f"{where_o}: {_bad_text(o)}", None, i))
                break
    if any(p.loader is not None for p in problems):
        return problems, None
    return problems, Example(input=inst[input_key], outputs=outputs)


def all_empty_problem(clean: list[Example], where: str = "Instances", what: str = "instances") -> list[Problem]:
    """The problem of a file whose usable examples (`clean`) all have empty answers, if it is one;
    its message starts with `where` (nothing when it is "") and counts `what`."""
    if clean and all(not o.strip() for ex in clean for o in ex.outputs):
        # Some empty answers are real data (a few in SuperNI task511); only empty ones teach the model to
        # say nothing and score every prediction against "", so the run would silently mean nothing.
        prefix = f"{where}: " if where else ""
        return [Problem(f"{prefix}the output of every one of the {len(clean)} {what} is "
                        "empty; a task with only empty answers can be neither learned nor scored", None)]
    return []


def parse_split(data: Any) -> SplitFile:
    """Parse the JSON value of a train/test/dev file; every problem is in `problems`, in file order."""
    if not isinstance(data, dict):
        return SplitFile([], None, 0, [Problem(f"expected a JSON object at the top level, got {type_name(data)}",
                                               "top level must be a JSON object")])
    definition, problems = _definition(data["Definition"]) if "Definition" in data else (None, [])
    split = SplitFile([], definition, 0, problems)
    if "Instances" not in data:
        problems.append(Problem("Instances: missing", "missing 'Instances'"))
        return split
    instances = data["Instances"]
    if not isinstance(instances, list):
        problems.append(Problem(f"Instances: expected a list, got {type_name(instances)}",
                                "'Instances' must be a list"))
        return split
    if not instances:
        problems.append(Problem("Instances: empty list (no examples)", "'Instances' is empty"))
        return split
    split.n_instances = len(instances)
    clean = []  # the instances without any problem
    for i, inst in enumerate(instances):
        inst_problems, example = parse_instance(i, inst)
        problems += inst_problems
        if example is not None:
            split.examples.append(example)
            if not inst_problems:
                clean.append(example)
    problems += all_empty_problem(clean)
    split.instruction, split.instruction_unused = shared_instruction(
        [inst.get(INSTRUCTION_FIELD) for inst in instances if isinstance(inst, dict)])
    return split


def raise_first(path: Path, problems: list[Problem]) -> None:
    """Raise the first problem the loader refuses as a `DataError` (after "<path>: ")."""
    for p in problems:
        if p.loader is not None:
            raise DataError(f"{path}: {p.loader}")


def load_split(path: Path, *, definition: bool = True) -> SplitFile:
    """Read and parse a split file strictly: raise `DataError` on the first problem the loader refuses.

    The instances are checked before the Definition; `definition=False` (test.json, whose Definition is
    not used) leaves the Definition unchecked. `definition` of the result is None when there is no
    "Definition" key (the loader then reads definition.txt, see sapt.data.formats).
    """
    try:
        split = parse_split(read_json(path))
    except JsonProblem as e:
        raise DataError(f"{path}: {e.problem.loader}") from e.__cause__
    raise_first(path, [p for p in split.problems if not p.definition])
    if definition:
        raise_first(path, [p for p in split.problems if p.definition])
    return split


# ----------------------------------------------------------------------------- labels.json


@dataclass
class LabelsFile:
    labels: list[str] | None  # None when the value is not a non-empty list of strings
    problems: list[Problem] = field(default_factory=list)


def parse_labels(labels: Any) -> LabelsFile:
    """Parse the JSON value of labels.json; every problem is in `problems`."""
    if not isinstance(labels, list):
        return LabelsFile(None, [Problem(f"expected a list of label strings, got {type_name(labels)}", _LOADER_LABELS)])
    if not labels:
        return LabelsFile(None, [Problem("empty list (a classification task needs at least one label)",
                                         _LOADER_LABELS)])
    problems = [Problem(f"labels[{j}]: expected a string, got {type_name(s)}", _LOADER_LABELS, j)
                for j, s in enumerate(labels) if not isinstance(s, str)]
    if problems:
        return LabelsFile(None, problems)
    dupes = sorted({s for s in labels if labels.count(s) > 1})
    if dupes:
        problems.append(Problem(f"labels: duplicate labels {', '.join(map(repr, dupes))}", None))
    return LabelsFile(labels, problems)


def load_labels(path: Path) -> list[str]:
    """Read and parse labels.json strictly (the loader accepts duplicate labels)."""
    try:
        parsed = parse_labels(read_json(path))
    except JsonProblem as e:
        raise DataError(f"{path}: {e.problem.loader}") from e.__cause__
    raise_first(path, parsed.problems)
    assert parsed.labels is not None
    return parsed.labels


def effective_labels(labels: list[str], train: list[Example]) -> tuple[list[str], list[str]]:
    """(the label set a task uses, the train outputs labels.json lacks).

    When labels.json does not cover the train.json outputs (the public qqp labels.json says
    ["False", "True"] while its outputs are "no"/"yes"), the sorted outputs are the label set.
    """
    seen = sorted({ex.outputs[0] for ex in train})
    missing = [s for s in seen if s not in set(labels)]
    return (seen if missing else labels), missing
