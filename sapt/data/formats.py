"""Where a task folder keeps its examples, and the formats besides CL_Benchmark's train.json.

A task folder holds its training examples in exactly one of these (and its evaluation examples, optional,
in one of the same names with `test`):

    train.json     the CL_Benchmark file: {"Definition": ..., "Instances": [{"input", "output"}]} (sapt.data.schema)
    train.jsonl    JSON Lines: one {"input": str, "output": str | [str]} object per line; blank lines are skipped
    train.csv      CSV (UTF-8, an optional BOM): a header row naming the columns, then one row per example;
                   other columns are ignored; the output is the cell's text (one reference)
    train/         a folder written by Hugging Face `datasets`' Dataset.save_to_disk; a DatasetDict saved at
                   the task folder itself (<task>/dataset_dict.json, <task>/train/, <task>/test/) is exactly
                   this layout, so both work. A string column, or a list-of-strings column for the output; a
                   ClassLabel output column gives its label names

Two sources of one split (train.json and train.csv, say) are refused rather than one chosen: which one a
run used would otherwise depend on a rule the user may not know, and a stale copy would be trained on
silently. The two splits are found independently (train.csv with test.jsonl is fine). dev.* is not read.

The field (key, column) names are "input" and "output", or the config's `input_field` / `output_field`; they
apply to these three formats only: the CL_Benchmark train.json schema is fixed. The task definition of a
JSONL, CSV or datasets task (and of a train.json without a "Definition") is <task>/definition.txt, stripped,
when present; else the `instruction` field (key, column) of the training examples when every example has
the same one (Alpaca-style files carry one; see `sapt.data.schema.shared_instruction`); else empty.

Every parser here returns all the problems of a source (`SplitFile.problems`), each with the validator's
message and the loader's (see sapt.data.schema), after "<path>: ". JSONL problems name the line (1-based),
CSV problems the row (1-based, the header is row 1, as a spreadsheet shows it), datasets problems the
index of the example (0-based, as `ds[i]`), then the field:

    .../t/train.jsonl: line 3: output: expected a string or a list of strings, got int
    .../t/train.csv: row 1: the header has no 'output' column (found 'text', 'label'); ...
    .../t/train: index 7: input: expected a string, got null
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sapt.data.schema import (
    INSTRUCTION_FIELD,
    Problem,
    SplitFile,
    all_empty_problem,
    load_split,
    parse_instance,
    raise_first,
    shared_instruction,
)
from sapt.data.types import DataError

__all__ = ["DEFINITION_FILE", "FORMATS", "Source", "find_source", "has_train", "load_definition", "load_source",
           "parse_source", "read_definition", "sources"]

FORMATS = ("json", "jsonl", "csv", "datasets")  # in the order the candidates are listed in messages
DEFINITION_FILE = "definition.txt"
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # characters of one CSV cell (the csv module's default is 128 KiB)


@dataclass(frozen=True)
class Source:
    kind: str  # one of FORMATS
    path: Path

    @property
    def name(self) -> str:
        """How messages name it: "train.jsonl", "train/"."""
        return self.path.name + ("/" if self.kind == "datasets" else "")


def _candidates(task_dir: Path, split: str) -> list[Source]:
    return [Source("json", task_dir / f"{split}.json"), Source("jsonl", task_dir / f"{split}.jsonl"),
            Source("csv", task_dir / f"{split}.csv"), Source("datasets", task_dir / split)]


def sources(task_dir: Path, split: str) -> list[Source]:
    """The sources of `split` ("train" or "test") present in `task_dir`: files of those names (a folder
    named train.json too, so that it is reported), and a `split/` folder."""
    return [s for s in _candidates(task_dir, split)
            if (s.path.is_dir() if s.kind == "datasets" else s.path.exists())]


def several_message(split: str, found: list[Source]) -> str:
    return (f"several {split} sources ({', '.join(s.name for s in found)}); keep only one "
            "(a task folder holds its examples in one format)")


def missing_message(task_dir: Path, split: str = "train") -> str:
    names = ", ".join(s.name for s in _candidates(task_dir, split))
    hint = ""
    dd = task_dir / "dataset_dict.json"
    if dd.is_file():  # a DatasetDict without a train split
        try:
            splits = json.loads(dd.read_text(encoding="utf-8")).get("splits")
            hint = f"; its dataset_dict.json lists the splits {splits}, none named '{split}'"
        except (OSError, ValueError, AttributeError):
            pass
    return f"not found (every task needs one of {names} (a folder saved by datasets)){hint}"


def find_source(task_dir: Path, split: str) -> Source | None:
    """The one source of `split`, or None. Raises `DataError` when there are several."""
    found = sources(task_dir, split)
    if len(found) > 1:
        raise DataError(f"{task_dir}: {several_message(split, found)}")
    return found[0] if found else None


def has_train(task_dir: Path) -> bool:
    """Does the folder look like a task: a train.json / .jsonl / .csv file or a train/ folder?"""
    return any(s.path.is_dir() if s.kind == "datasets" else s.path.is_file() for s in _candidates(task_dir, "train"))


# ----------------------------------------------------------------------------- parsing


def _fail(message: str, loader: str | None = None) -> SplitFile:
    return SplitFile([], None, 0, [Problem(message, message if loader is None else loader)])


def _read_bytes(path: Path) -> tuple[bytes | None, SplitFile | None]:
    if not path.is_file():
        return None, _fail("not a file")
    try:
        return path.read_bytes(), None
    except OSError as e:
        return None, _fail(f"cannot read ({e.strerror or e})", f"cannot read ({e.strerror})")


def _decode_error(data: bytes, e: UnicodeDecodeError) -> str:
    line = data[:e.start].count(b"\n") + 1
    return f"not valid UTF-8 text (bad byte at offset {e.start}, line {line})"


class _Collect:
    """The examples and problems of a source, example by example."""

    def __init__(self, input_key: str, output_key: str):
        self.keys = dict(input_key=input_key, output_key=output_key)
        self.split = SplitFile([], None, 0, [])
        self.clean: list = []
        # an `instruction` field is read unless it is the input or the output itself (--input-field instruction)
        self.reads_instruction = INSTRUCTION_FIELD not in (input_key, output_key)
        self.instructions: list[Any] = []  # each example's instruction, None where it has none

    def problem(self, item: int, message: str, loader: str | None) -> None:
        self.split.problems.append(Problem(message, loader, item))

    def example(self, item: int, where: str, value: Any) -> None:
        problems, example = parse_instance(item, value, where, sep=": ", **self.keys)
        self.split.problems += problems
        if self.reads_instruction and isinstance(value, dict):
            self.instructions.append(value.get(INSTRUCTION_FIELD))
        if example is not None:
            self.split.examples.append(example)
            if not problems:
                self.clean.append(example)

    def done(self, what: str) -> SplitFile:
        self.split.problems += all_empty_problem(self.clean, "", what)
        self.split.instruction, self.split.instruction_unused = shared_instruction(self.instructions)
        return self.split


def parse_jsonl(path: Path, input_key: str = "input", output_key: str = "output") -> SplitFile:
    data, failed = _read_bytes(path)
    if failed:
        return failed
    assert data is not None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    c = _Collect(input_key, output_key)
    for k, raw in enumerate(data.split(b"\n"), 1):
        where = f"line {k}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            c.split.n_instances += 1
            c.problem(k, f"{where}: not valid UTF-8 text (bad byte at offset {e.start} of the line)",
                      f"{where}: not valid UTF-8 text")
            continue
        if not text.strip():
            continue
        c.split.n_instances += 1
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            c.problem(k, f"{where}: invalid JSON ({e.msg} at column {e.colno})", f"{where}: invalid JSON")
            continue
        except RecursionError:
            c.problem(k, f"{where}: invalid JSON (nested too deeply to parse)", f"{where}: invalid JSON")
            continue
        except ValueError as e:  # an integer literal longer than Python's digit limit
            c.problem(k, f"{where}: invalid JSON ({e})", f"{where}: invalid JSON")
            continue
        c.example(k, where, value)
    if c.split.n_instances == 0:
        return _fail("empty file (no examples; expected one JSON object per line)", "empty file (no examples)")
    return c.done("lines")


def parse_csv(path: Path, input_key: str = "input", output_key: str = "output") -> SplitFile:
    data, failed = _read_bytes(path)
    if failed:
        return failed
    assert data is not None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _fail(_decode_error(data, e), "not valid UTF-8 text")
    if not text.strip():
        return _fail("empty file (expected a header row naming the columns, then one row per example)",
                     "empty file (no header and no rows)")
    c = _Collect(input_key, output_key)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    old_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        rows: list[list[str]] = []
        while True:
            line = reader.line_num + 1  # where the next row starts
            try:
                rows.append(next(reader))
            except StopIteration:
                break
            except csv.Error as e:  # an unclosed quote, text after a closing quote, a cell past the size limit
                r = len(rows) + 1
                hint = "; an unclosed quote?" if "end of data" in str(e) else ""
                return _fail(f"row {r} (from line {line}): malformed CSV ({e}{hint})", f"row {r}: malformed CSV")
    finally:
        csv.field_size_limit(old_limit)
    header = [h.strip() for h in rows[0]]
    for key in (input_key, output_key):
        if key not in header:
            found = ", ".join(repr(h) for h in header[:8]) + (", ..." if len(header) > 8 else "")
            c.problem(None, f"row 1: the header has no '{key}' column (found {found}); the first row must name "
                            "the columns (input_field / output_field set other names)",
                      f"row 1: the header has no '{key}' column")
        elif header.count(key) > 1:
            c.problem(None, f"row 1: the header names the '{key}' column {header.count(key)} times",
                      f"row 1: the header names the '{key}' column more than once")
    if c.split.problems:
        return c.split
    at = {key: header.index(key) for key in (input_key, output_key)}
    # the instruction column, when there is exactly one (a repeated one is ambiguous: left unread, as before)
    instruction_at = (header.index(INSTRUCTION_FIELD)
                      if c.reads_instruction and header.count(INSTRUCTION_FIELD) == 1 else None)
    for r, row in enumerate(rows[1:], 2):
        if not row:  # a blank line
            continue
        c.split.n_instances += 1
        where = f"row {r}"
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            c.problem(r, f"{where}: {len(row)} fields but the header has {len(header)} columns "
                         "(a comma in an unquoted cell?)", f"{where}: more fields than the header has columns")
            continue
        short = [key for key in at if at[key] >= len(row)]
        for key in short:
            c.problem(r, f"{where}: {key}: missing (the row has {len(row)} field{'s' if len(row) != 1 else ''}, "
                         f"the header {len(header)})", f"{where}: {key} missing")
        if not short:
            value = {key: row[i] for key, i in at.items()}
            if instruction_at is not None:  # a row cut short before the column has none
                value[INSTRUCTION_FIELD] = row[instruction_at] if instruction_at < len(row) else None
            c.example(r, where, value)
    if c.split.n_instances == 0:
        c.problem(None, "no rows after the header (no examples)", "no examples (only a header)")
        return c.split
    return c.done("rows")


_STRING_DTYPES = ("string", "large_string")


def parse_datasets(path: Path, input_key: str = "input", output_key: str = "output") -> SplitFile:
    if not path.is_dir():
        return _fail("not a folder")
    try:
        from datasets import ClassLabel, Dataset, Value, load_from_disk
    except ImportError:  # an optional extra: raised, not listed per folder (the install, not the data, is wrong)
        from sapt.version import DISTRIBUTION

        raise DataError(f"{path}: a folder is read as a Hugging Face datasets save_to_disk folder, which needs the "
                        f"datasets extra (not installed): pip install '{DISTRIBUTION}[datasets]' (or pip install "
                        "datasets)") from None
    what = "a Hugging Face datasets save_to_disk folder"
    if not any(path.iterdir()):
        return _fail(f"an empty folder (read as {what}, none was saved in it)", "an empty folder")
    if _saved_without_rows(path):  # datasets' own reader fails on it with "IndexError: list index out of range"
        return _fail("no examples (the dataset was saved with no rows)", "no examples")
    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, pyarrow errors, ...
        first = (str(e).strip().splitlines() or [""])[0]
        return _fail(f"cannot be loaded as {what} ({type(e).__name__}: {first})", f"cannot be loaded as {what}")
    if not isinstance(ds, Dataset):  # a DatasetDict saved into train/
        return _fail(f"holds a DatasetDict (splits {list(ds)}), not one split: save the DatasetDict at the task "
                     f"folder itself, so that its '{path.name}' split is this folder",
                     "holds a DatasetDict, not one split")
    c = _Collect(input_key, output_key)
    columns = ", ".join(repr(n) for n in ds.column_names[:8]) + (", ..." if len(ds.column_names) > 8 else "")
    for key in dict.fromkeys((input_key, output_key)):
        feature = ds.features.get(key)
        if feature is None:
            c.problem(None, f"no '{key}' column (columns: {columns}); input_field / output_field set other names",
                      f"no '{key}' column")
        elif isinstance(feature, Value) and feature.dtype not in _STRING_DTYPES:
            c.problem(None, f"column '{key}' holds {feature.dtype} values; expected strings"
                            + (" (or a list of strings, or a ClassLabel)" if key == output_key else ""),
                      f"column '{key}' must hold strings")
    if c.split.problems:
        return c.split
    read = [input_key, output_key]
    if c.reads_instruction and isinstance(ds.features.get(INSTRUCTION_FIELD), Value) \
            and ds.features[INSTRUCTION_FIELD].dtype in _STRING_DTYPES:
        read.append(INSTRUCTION_FIELD)  # a string column only: another kind is no definition to read
    try:
        values = ds.select_columns(list(dict.fromkeys(read))).to_dict()
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        return _fail(f"cannot be read ({type(e).__name__}: {first})", "cannot be read")
    labels = ds.features[output_key] if isinstance(ds.features[output_key], ClassLabel) else None
    for i in range(len(ds)):
        where = f"index {i}"
        out = values[output_key][i]
        if labels is not None:
            if not isinstance(out, int) or not 0 <= out < labels.num_classes:
                c.problem(i, f"{where}: {output_key}: {out!r} is not a label of the ClassLabel column "
                             f"(0 to {labels.num_classes - 1})", f"{where}: {output_key} is not a label")
                c.split.n_instances += 1
                continue
            out = labels.int2str(out)
        c.split.n_instances += 1
        value = {input_key: values[input_key][i], output_key: out}
        if INSTRUCTION_FIELD in read[2:]:
            value[INSTRUCTION_FIELD] = values[INSTRUCTION_FIELD][i]
        c.example(i, where, value)
    if c.split.n_instances == 0:
        return _fail("no examples (the dataset has no rows)", "no examples")
    return c.done("examples")


def _saved_without_rows(path: Path) -> bool:
    """Whether `path` holds a Dataset that save_to_disk wrote with no rows: its state.json lists no data
    files (a dataset of columns without rows, or of no columns)."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("_data_files") == []


_PARSERS = {"jsonl": parse_jsonl, "csv": parse_csv, "datasets": parse_datasets}


def parse_source(src: Source, input_key: str = "input", output_key: str = "output") -> SplitFile:
    """Every problem of a JSONL, CSV or datasets source (train.json: `sapt.data.schema`)."""
    return _PARSERS[src.kind](src.path, input_key, output_key)


def load_source(src: Source, input_key: str = "input", output_key: str = "output", *,
                definition: bool = True) -> SplitFile:
    """Read a source strictly: raise `DataError` on the first problem the loader refuses. The result's
    `definition` is None when the source has none of its own (all formats but train.json); `definition=False`
    leaves a train.json's Definition unchecked (a test file's is not used)."""
    if src.kind == "json":
        return load_split(src.path, definition=definition)
    split = parse_source(src, input_key, output_key)
    raise_first(src.path, split.problems)
    return split


# ----------------------------------------------------------------------------- definition.txt


def read_definition(path: Path) -> tuple[str | None, list[Problem]]:
    """(the stripped text of definition.txt or None when there is none, its problems)."""
    if not path.exists():
        return None, []
    data, failed = _read_bytes(path)
    if failed:
        return None, failed.problems
    assert data is not None
    try:
        return data.decode("utf-8-sig").strip(), []
    except UnicodeDecodeError as e:
        return None, [Problem(_decode_error(data, e), "not valid UTF-8 text")]


def load_definition(path: Path) -> str:
    """definition.txt's text ("" when there is none); raises `DataError` when it cannot be read."""
    text, problems = read_definition(path)
    raise_first(path, problems)
    return text or ""
