"""Load the SAPT continual-learning benchmarks from the CL_Benchmark folder layout.

    <data_dir>/<benchmark>/<task>/train.json    {"Definition": [str], "Instances": [{"input", "output"}]}
    <data_dir>/<benchmark>/<task>/labels.json   optional: the label strings of a classification task
    <data_dir>/<benchmark>/<task>/test.json     optional: used only for the final evaluation

A task may keep its examples as train.jsonl, train.csv or a train/ folder saved by Hugging Face `datasets`
instead (and test.* likewise), with its definition in definition.txt: see `sapt.data.formats`.

Why the splitting is careful: continual-learning results are only meaningful if checkpoints and
hyper-parameters are chosen without looking at evaluation data. So validation is always carved from
train.json (seeded, stratified by label), evaluation is test.json or, when that is absent, a held-out
slice of train.json, and no input text appears in two splits. dev.json is ignored on purpose: in the
public SAPT/O-LoRA release it is the same file as test.json, so selecting on it would select on test.

The files are parsed by `sapt.data.schema`, strictly here: the first problem is raised as a `DataError`.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sapt.data.formats import DEFINITION_FILE, find_source, has_train, load_source, missing_message, read_definition
from sapt.data.schema import SplitFile, effective_labels, load_labels, raise_first
from sapt.data.types import DataError, Example, Task

# The standard task orders of the public release's launch scripts.
TASK_ORDERS: dict[str, dict[int, list[str]]] = {
    "SuperNI": {
        1: [
            "task1572_samsum_summary",
            "task363_sst2_polarity_classification",
            "task1290_xsum_summarization",
            "task181_outcome_extraction",
            "task002_quoref_answer_generation",
            "task1510_evalution_relation_extraction",
            "task639_multi_woz_user_utterance_generation",
            "task1729_personachat_generate_next",
            "task073_commonsenseqa_answer_generation",
            "task1590_diplomacy_text_generation",
            "task748_glucose_reverse_cause_event_detection",
            "task511_reddit_tifu_long_text_summarization",
            "task591_sciq_answer_generation",
            "task1687_sentiment140_classification",
            "task875_emotion_classification",
        ],
        2: [
            "task748_glucose_reverse_cause_event_detection",
            "task073_commonsenseqa_answer_generation",
            "task1590_diplomacy_text_generation",
            "task639_multi_woz_user_utterance_generation",
            "task1572_samsum_summary",
            "task1687_sentiment140_classification",
            "task591_sciq_answer_generation",
            "task363_sst2_polarity_classification",
            "task1510_evalution_relation_extraction",
            "task1729_personachat_generate_next",
            "task181_outcome_extraction",
            "task511_reddit_tifu_long_text_summarization",
            "task002_quoref_answer_generation",
            "task1290_xsum_summarization",
            "task875_emotion_classification",
        ],
    },
    # O-LoRA's numbering: 4-6 are the 15-task long sequences, 1-3 the 4-task Standard CL benchmark (its
    # tasks live in the same folder). Order 4 stays first: it is the default when no order is given. The
    # public SAPT release calls the yelp-first list (6 here) "Order 4" and the mnli-first one (4 here)
    # "Order 5" or "Order 3" (README "Task orders").
    "Long_Sequence": {
        4: ["mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon", "sst2",
            "dbpedia", "agnews", "multirc", "yahoo"],
        5: ["multirc", "boolq", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia",
            "agnews", "yelp", "amazon", "yahoo"],
        6: ["yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews",
            "yahoo", "multirc", "boolq", "wic"],
        1: ["dbpedia", "amazon", "yahoo", "agnews"],
        2: ["dbpedia", "amazon", "agnews", "yahoo"],
        3: ["yahoo", "amazon", "agnews", "dbpedia"],
    },
}

# Other benchmark folders: "em" when the task has labels.json, else "rougeL".
BENCHMARK_METRIC: dict[str, str] = {"SuperNI": "rougeL", "Long_Sequence": "em"}


def _benchmark_dir(data_dir: str | Path, benchmark: str) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    bench_dir = data_dir / benchmark
    if not bench_dir.is_dir():
        raise DataError(f"{bench_dir}: benchmark folder not found")
    return bench_dir


def _has_task(bench_dir: Path, name: str) -> bool:
    return has_train(bench_dir / name)


def _why_missing(bench_dir: Path, name: str) -> str:
    """A missing task's name, with what stands in the way when it is not plain absence: a user whose
    train.jsonl is a broken link or a folder reads the cause, not only "not found"."""
    task_dir = bench_dir / name
    if not task_dir.is_dir():
        return name + (" (a broken symbolic link)" if task_dir.is_symlink() else "")
    for split_file in (task_dir / f"train.{ext}" for ext in ("json", "jsonl", "csv")):
        if split_file.is_symlink() and not split_file.exists():
            try:  # a loop and a dangling link both fail exists(); resolving tells them apart
                split_file.resolve(strict=True)
            except RuntimeError:
                return f"{name} ({split_file.name} is a symbolic link loop)"
            except OSError as e:
                if "loop" in str(e).lower():
                    return f"{name} ({split_file.name} is a symbolic link loop)"
            return f"{name} ({split_file.name} is a broken symbolic link to {os.readlink(split_file)})"
        if split_file.is_dir():
            return f"{name} ({split_file.name} is a folder, not a file)"
    return name


def _order_names(bench_dir: Path, benchmark: str, order: int) -> list[str]:
    orders = TASK_ORDERS.get(benchmark, {})
    if order not in orders:
        known = ", ".join(map(str, sorted(orders))) or "none"
        raise DataError(f"{bench_dir}: unknown task order {order} for {benchmark} (known orders: {known})")
    names = orders[order]
    missing = [n for n in names if not _has_task(bench_dir, n)]
    if missing:
        warnings.warn(f"{bench_dir}: order {order} skips tasks without train data: {', '.join(missing)}",
                      stacklevel=3)
    present = [n for n in names if n not in missing]
    if not present:
        raise DataError(f"{bench_dir}: no task of order {order} has train data (train.json, .jsonl, .csv or train/)")
    return present


def resolve_task_names(data_dir: str | Path, benchmark: str, tasks: list[str] | None,
                       order: int | None) -> list[str]:
    """Return the task sequence to train on: explicit `tasks`, a standard `order`, or the default.

    Explicit tasks must all exist; tasks of a standard order that are absent are skipped with a
    warning. With neither, the benchmark's first standard order is used if it has one, else every
    task folder sorted by name.
    """
    bench_dir = _benchmark_dir(data_dir, benchmark)
    if tasks is not None and order is not None:
        raise DataError(f"{bench_dir}: give either a task list (--tasks) or a task order (--order), not both")
    if tasks is not None:
        if not tasks:
            raise DataError(f"{bench_dir}: the task list is empty")
        dupes = sorted({t for t in tasks if tasks.count(t) > 1})
        if dupes:
            raise DataError(f"{bench_dir}: duplicate tasks in the task list: {', '.join(dupes)}")
        missing = [t for t in tasks if not _has_task(bench_dir, t)]
        if missing:
            raise DataError(f"{bench_dir}: tasks not found (no <task>/train.json, train.jsonl, train.csv or "
                            f"train/): {', '.join(_why_missing(bench_dir, t) for t in missing)}")
        return list(tasks)
    if order is not None:
        return _order_names(bench_dir, benchmark, order)
    if TASK_ORDERS.get(benchmark):
        return _order_names(bench_dir, benchmark, next(iter(TASK_ORDERS[benchmark])))
    names = sorted(p.name for p in bench_dir.iterdir() if _has_task(bench_dir, p.name))
    if not names:
        raise DataError(f"{bench_dir}: no task folders with a train.json, train.jsonl, train.csv or train/")
    return names


def task_order_reason(benchmark: str, tasks: list[str] | None, order: int | None) -> str:
    """Why `resolve_task_names` put the tasks in the order it did, for the run's "task order:" line.

    Stated rather than refused: a data folder without `--tasks` or `--order` has always trained its tasks
    in alphabetical order, and refusing now would break commands that work. But the order changes what a
    continual-learning run measures (which task is forgotten, which one is learned on top of which), and
    alphabetical is an accident of the folder names, so the run says it loudly, and says when the order is
    the benchmark's own instead."""
    if tasks is not None:
        return "as given by --tasks"
    if order is not None:
        return f"{benchmark} order {order}, as given by --order"
    if TASK_ORDERS.get(benchmark):
        first = next(iter(TASK_ORDERS[benchmark]))
        return f"{benchmark} order {first}: no --tasks or --order given; the benchmark's first named order"
    return "alphabetical: no --tasks or --order given; the benchmark names no order"


# ----------------------------------------------------------------------------- splitting


def _stratified(pool: list[int], label_of: list[str], n: int) -> list[int]:
    """Pick n of `pool` (already shuffled) with each label in proportion to its share.

    Systematic sampling: line the pool up grouped by label and take n evenly spaced items, so every
    label gets its share up to rounding and the choice within a label follows the shuffle.
    """
    by_label: dict[str, list[int]] = {}
    for i in pool:
        by_label.setdefault(label_of[i], []).append(i)
    lined_up = [i for label in sorted(by_label) for i in by_label[label]]
    return [lined_up[int((j + 0.5) * len(lined_up) / n)] for j in range(n)]


def load_task(data_dir: str | Path, benchmark: str, name: str, *, val_size: float | int = 0.1,
              max_train: int | None = None, max_eval: int | None = None, seed: int = 42,
              input_field: str = "input", output_field: str = "output", eval_only: bool = False) -> Task:
    """Load one task with seeded train / validation / evaluation splits.

    val_size: an int is a count, a float a fraction of the training pool (after `max_train`).
    max_train, max_eval: seeded subsets, to keep runs small. Splits depend only on
    (seed, task name, file contents, sizes), never on global random state.
    input_field, output_field: the names of the two fields in train/test .jsonl, .csv and datasets folders.
    eval_only: a task that is only evaluated (`--unseen`) needs only its evaluation examples. The splits are
    the same as without it wherever those work (the evaluation split never depends on the others), so an
    unseen task scores exactly as before; where the file is too small for a validation and a training
    example besides, the task is not refused: it gets what is left as training examples (its answers still
    decide the one-line rule, `sapt.evaluation.generation.one_line_answers`) and no validation ones.
    """
    _check_split_args(val_size, max_train, max_eval)
    check_fields(input_field, output_field)
    fields = dict(input_key=input_field, output_key=output_field)

    task_dir = _benchmark_dir(data_dir, benchmark) / name
    train_src = find_source(task_dir, "train")
    if train_src is None:
        raise DataError(f"{task_dir / 'train.json'}: {missing_message(task_dir)}")
    train_file = load_source(train_src, **fields)
    examples, definition = train_file.examples, train_file.definition
    if definition is None:  # no definition of its own: definition.txt, else a shared instruction field
        definition = _definition_without_own(task_dir, train_file, train_src.path.name)
    labels = _task_labels(task_dir, examples, train_src.path.name)
    metric = BENCHMARK_METRIC.get(benchmark, "em" if labels is not None else "rougeL")

    rng = random.Random(f"{seed}:{name}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    held = _evaluation_split(task_dir, train_src.path, examples, order, rng, max_eval, fields, eval_only)
    pool = _training_pool(examples, order, held, train_src.path)
    train_idx, val_idx = _train_val(pool, examples, labels, val_size, max_train, train_src.path, eval_only)
    return Task(
        name=name,
        definition=definition,
        metric=metric,
        train=[examples[i] for i in sorted(train_idx)],
        val=[examples[i] for i in sorted(val_idx)],
        eval=held.examples,
        eval_split=held.split,
        labels=labels,
        eval_source=held.source,
        eval_source_size=held.source_size,
    )


def _definition_without_own(task_dir: Path, train_file: SplitFile, train_name: str) -> str:
    """The definition of a task whose train file has none of its own: definition.txt when present (even
    empty), else the `instruction` field every training example shares, else "".

    Why the explicit definition wins over the instruction field: definition.txt (like train.json's
    "Definition") is written for one purpose, to be the task's definition, while an instruction field is
    example data that merely happens to be the same throughout. A user who writes definition.txt beside
    such a file means it (to shorten or correct the instruction, say), and every folder that had
    definition.txt before the field was read keeps its definition, so its runs stay as they were."""
    path = task_dir / DEFINITION_FILE
    text, problems = read_definition(path)
    raise_first(path, problems)
    if text is not None:
        return text
    if train_file.instruction_unused is not None:  # examples carry instructions that cannot be the definition
        warnings.warn(f"{task_dir / train_name}: {train_file.instruction_unused}", stacklevel=3)
    return train_file.instruction or ""


def _check_split_args(val_size: float | int, max_train: int | None, max_eval: int | None) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be an int or a float, got {val_size!r}")
    if (isinstance(val_size, int) and val_size < 0) or (isinstance(val_size, float) and not 0 <= val_size < 1):
        raise ValueError(f"val_size must be a count >= 0 or a fraction in [0, 1), got {val_size!r}")
    for arg, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be at least 1, got {value}")


def _task_labels(task_dir: Path, examples: list[Example], train_name: str) -> list[str] | None:
    """The label set from labels.json (or the outputs themselves, when labels.json does not cover them)."""
    if not (task_dir / "labels.json").is_file():
        return None
    listed = load_labels(task_dir / "labels.json")
    labels, missing = effective_labels(listed, examples)
    if missing:  # the public qqp labels.json says False/True, its outputs are no/yes
        warnings.warn(f"{task_dir / 'labels.json'}: labels {listed} do not cover the {train_name} "
                      f"outputs {labels}; using the outputs as the label set", stacklevel=3)
    return labels


@dataclass
class _HeldOut:
    examples: list[Example]  # what is evaluated
    split: str  # "test" or "heldout-train"
    taken: list[int]  # positions of `order` used for evaluation (heldout-train)
    blocked: set[str]  # inputs that must not be trained or validated on
    source: str  # the evaluation file's name, for warnings
    source_size: int  # how many examples that file holds (the start-up lines say "N of its M")


def _evaluation_split(task_dir: Path, train_path: Path, examples: list[Example], order: list[int],
                      rng: random.Random, max_eval: int | None, fields: dict[str, str],
                      eval_only: bool = False) -> _HeldOut:
    """The test split (a seeded subset of max_eval) when the task has one, else a held-out part of train."""
    test_src = find_source(task_dir, "test")
    if test_src is not None:
        test = load_source(test_src, **fields, definition=False).examples
        keep = sorted(rng.sample(range(len(test)), max_eval)) if max_eval and max_eval < len(test) else None
        chosen = test if keep is None else [test[i] for i in keep]
        # all of the test file is kept out of training, whatever subset is evaluated
        return _HeldOut(chosen, "test", [], {ex.input for ex in test}, test_src.path.name, len(test))
    heldout = max_eval if max_eval is not None else max(1, len(examples) // 10)
    if heldout > len(examples) - (0 if eval_only else 2):  # eval_only: no validation or training example needed
        raise DataError(f"{train_path}: {len(examples)} instances are too few to hold out {heldout} "
                        + ("for evaluation" if eval_only else "for evaluation and keep validation and training data"))
    taken = order[:heldout]
    chosen = [examples[i] for i in sorted(taken)]
    return _HeldOut(chosen, "heldout-train", taken, {ex.input for ex in chosen}, train_path.name, len(examples))


def _training_pool(examples: list[Example], order: list[int], held: _HeldOut, train_path: Path) -> list[int]:
    """The pool for validation and training: no input that is evaluated, and no input twice, so
    validation and training can never share an input either."""
    pool, dropped, blocked = [], 0, set(held.blocked)
    for i in order[len(held.taken):]:
        if examples[i].input in blocked:
            dropped += 1
            continue
        blocked.add(examples[i].input)
        pool.append(i)
    if dropped and held.split == "test":
        warnings.warn(f"{train_path}: dropped {dropped} instances whose input also appears in {held.source}",
                      stacklevel=3)
    return pool


def _train_val(pool: list[int], examples: list[Example], labels: list[str] | None, val_size: float | int,
               max_train: int | None, train_path: Path, eval_only: bool = False) -> tuple[list[int], list[int]]:
    """Validation (stratified by label where there are labels) and training indices from the pool; with
    `eval_only`, a pool too small for them is all training examples, and no validation (`load_task`)."""
    if isinstance(val_size, int):
        n_val = val_size
    else:
        n_val = max(1, round(val_size * min(len(pool), max_train or len(pool))))
    if n_val >= len(pool) and eval_only:
        return pool[:max_train], []
    if n_val >= len(pool):
        raise DataError(f"{train_path}: {len(pool)} usable instances are too few for {n_val} "
                        "validation examples and at least one training example")
    if labels is not None:
        val_idx = _stratified(pool, [ex.outputs[0] for ex in examples], n_val) if n_val else []
    else:
        val_idx = pool[:n_val]
    in_val = set(val_idx)
    return [i for i in pool if i not in in_val][:max_train], val_idx


def check_fields(input_field: str, output_field: str) -> None:
    """Raise ValueError unless `input_field` and `output_field` are two different non-empty names."""
    for arg, value in (("input_field", input_field), ("output_field", output_field)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{arg} must be a non-empty field name, got {value!r}")
    if input_field == output_field:
        raise ValueError(f"input_field and output_field must differ, both are {input_field!r}")


def load_benchmark(data_dir: str | Path, benchmark: str, tasks: list[str] | None = None,
                   order: int | None = None, **load_task_kwargs: Any) -> list[Task]:
    """Load the task sequence chosen by `resolve_task_names`, in training order."""
    names = resolve_task_names(data_dir, benchmark, tasks, order)
    return [load_task(data_dir, benchmark, name, **load_task_kwargs) for name in names]
