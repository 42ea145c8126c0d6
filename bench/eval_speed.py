"""Time a run's final-row evaluation with the current code, and count the answers that changed (issue 28, item 2).

    python bench/eval_speed.py RUN_DIR                          # every evaluation input of the run
    python bench/eval_speed.py RUN_DIR --max-eval-per-task 50   # the first 50 of each task's evaluation set
    python bench/eval_speed.py RUN_DIR --json                   # one JSON object instead of the table

The run directory is copied to a temporary folder first, and everything is read from the copy: the
original is never written (nor is the copy: nothing here writes predictions). The final model is rebuilt
as `sapt eval` rebuilds it (`sapt.train.load_trained`), and each task of the final row is scored as the
run scored it after its last stage (`StageTrainer.evaluate`: `evaluate_task` with the run's method, batch
size, `max_new_tokens` and `stop_at_newline`, under the run's autocast). Only the evaluation is timed, not
the model's loading nor the data's.

The answers are compared with the ones the run stored for that row (`stages/<last>/predictions/<task>.jsonl`),
example by example: `flipped` counts the greedy answers that differ. `--max-eval-per-task N` keeps the
first N of the run's own evaluation set (the same examples the stored answers are of, not a new seeded
subset of N), so the comparison holds for any N. `score_before` is the stored answers' mean score over
those examples, `score_after` the new one's.

`--eval-batch-size N` batches N prompts instead of the run's `eval_batch_size` (to find the fastest on a
machine; another batching pads differently, so answers may flip by rounding: they are counted).

`--json` prints {"run", "seconds", "load_seconds", "n", "flipped", "threads", "eval_batch_size", "tasks": [{"task", "n",
"flipped", "score_before", "score_after", "seconds"}, ...]}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class BadRun(ValueError):
    """A run directory this benchmark cannot measure: one line, exit 2."""


def final_row_dir(run: Path) -> Path:
    """The last stage directory that holds predictions: the final row of the score matrix."""
    from sapt.rundir import stage_folders  # in stage order: from stage 100 on, name order is not
    from sapt.rundir.results import has_predictions

    stages = [d for d in stage_folders(run) if has_predictions(d)]
    if not stages:
        raise BadRun(f"{run}: no stage with predictions under stages/")
    return stages[-1]


def measure(run_dir: str | Path, max_eval_per_task: int | None = None, data_dir: str | None = None,
            eval_batch_size: int | None = None) -> dict:
    """Evaluate a copy of `run_dir`'s final model on the final row's tasks; the result as `--json` prints it.
    `eval_batch_size`: instead of the run's (another batching: answers may differ by rounding)."""
    import torch

    from sapt.api import method_of
    from sapt.distributed import get_dist
    from sapt.evaluation.generation import encode_task_split, evaluate_task
    from sapt.rundir import has_run_config
    from sapt.rundir.results import read_predictions
    from sapt.train import load_run_config, load_run_tasks, load_trained

    src = Path(run_dir)
    if not has_run_config(src):
        raise BadRun(f"{src}: not a run directory (no config.yaml)")
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("trackers", "eval"))
        cfg = load_run_config(run)
        if data_dir is not None:
            cfg.data_dir = data_dir
        t0 = time.perf_counter()
        tasks = load_run_tasks(cfg)  # the run's own evaluation subsets: the stored answers are of these
        cfg, model, names = load_trained(run, cfg)
        load_seconds = time.perf_counter() - t0
        method = method_of(cfg)
        batch_size = eval_batch_size or cfg.eval_batch_size
        row = final_row_dir(run)
        rows, total = [], 0.0
        for j, task in enumerate(method.eval_tasks(tasks, len(names) - 1)):
            path, stored = read_predictions(row, task.name)
            if stored is None:
                raise FileNotFoundError(2, "No such file or directory", str(path))
            n = min(len(task.eval), len(stored), max_eval_per_task or len(task.eval))
            task.eval = task.eval[:n]
            stored = stored[:n]
            if [r["input"] for r in stored] != [ex.input for ex in task.eval]:
                raise BadRun(f"{task.name}: the stored predictions are not of the run's evaluation inputs "
                                 "(another --data-dir, or data that changed?)")
            items = encode_task_split(model, task, "eval", cfg.max_source_length, cfg.max_target_length)
            t1 = time.perf_counter()
            with get_dist().autocast(cfg.mixed_precision), torch.no_grad():
                score, _, records = evaluate_task(model, task, items, batch_size, cfg.max_new_tokens, j,
                                                  method, cfg.stop_at_newline)
            seconds = time.perf_counter() - t1
            total += seconds
            rows.append({
                "task": task.name, "n": n,
                "flipped": sum(a["prediction"] != b["prediction"] for a, b in zip(records, stored)),
                "score_before": sum(r["score"] for r in stored) / n, "score_after": score,
                "seconds": round(seconds, 3)})
    return {"run": str(src), "seconds": round(total, 3), "load_seconds": round(load_seconds, 3),
            "n": sum(r["n"] for r in rows), "flipped": sum(r["flipped"] for r in rows),
            "threads": torch.get_num_threads(), "eval_batch_size": batch_size, "tasks": rows}


def table(result: dict) -> str:
    lines = [f"{'task':12s} {'n':>5s} {'flipped':>8s} {'before':>7s} {'after':>7s} {'seconds':>8s}"]
    for r in result["tasks"]:
        lines.append(f"{r['task']:12s} {r['n']:5d} {r['flipped']:8d} {r['score_before']:7.1f} {r['score_after']:7.1f} "
                     f"{r['seconds']:8.2f}")
    lines.append(f"{'all':12s} {result['n']:5d} {result['flipped']:8d} {'':7s} {'':7s} {result['seconds']:8.2f}")
    lines.append(f"final-row evaluation {result['seconds']:.1f} s on {result['threads']} thread(s), batches of "
                 f"{result['eval_batch_size']} "
                 f"(model load {result['load_seconds']:.1f} s, not counted); {result['flipped']} of {result['n']} "
                 "answers differ from the stored ones")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory (copied to a temporary folder; never written)")
    p.add_argument("--max-eval-per-task", type=int, default=None,
                   help="the first N evaluation inputs of each task (default: all the run evaluated)")
    p.add_argument("--data-dir", default=None, help="read the tasks from here instead of the run's data directory")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="evaluation batch size instead of the run's (answers may then differ by rounding)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.max_eval_per_task is not None and args.max_eval_per_task < 1:
        p.error(f"--max-eval-per-task must be >= 1, got {args.max_eval_per_task}")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        p.error(f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    from sapt.config import ConfigError
    from sapt.data import DataError

    try:
        result = measure(args.run, args.max_eval_per_task, args.data_dir, args.eval_batch_size)
    except (BadRun, ConfigError, DataError, FileNotFoundError) as e:
        print(f"eval_speed: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
