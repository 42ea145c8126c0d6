"""How the cost of a run grows with the number of tasks (reliability issue 27, "Scale"), measured on one run.

    python bench/scale.py --tasks 100                    # 100 tiny tasks, every row evaluated (K = 1)
    python bench/scale.py --tasks 100 --eval-every 10    # the same with --eval-every 10
    python bench/scale.py --tasks 20 --json-out s.json   # every stage's numbers as JSON too

The tasks: N JSON Lines task folders written into a temporary data folder (sapt.data.formats' own-data
layout: train.jsonl, test.jsonl, definition.txt), task i a fresh draw (seed i) of built-in task i mod 4
(topic, sentiment, reverse_words, addition) under the name `tNNN_<task>`, its definition ending in
"(task i)" so that no two prompts are the same. Copies of four generators rather than N real tasks: what is
measured is cost, which depends on the number of blocks, examples and tokens, not on what the tasks mean;
the scores of a random tiny model are not the point and are not shown.

The run: `sapt run --model tiny-llama` (SAPT, learn-then-route, real reflection inputs: the generated ones
train a generator per stage, a cost of its own that does not grow with T) in this process, with one torch
thread, the given examples per task and epochs. Measured per stage t (1-based, t blocks), by wrapping the
run's own functions (nothing of the run is changed):
- step: wall time of the stage's epochs over its optimiser steps (forward, backward, reflection KL batch, AdamW;
  grad_accum 1), in ms; a stage resumes nothing here, so every epoch is timed;
- fit: wall time of the router fit (learn-then-route, `sapt.router_fit.fit_router`), in s; `--router-fit-steps`
  (default 100 here, 1000 in a run) scales it: its steps are the same work whatever their number;
- eval: the evaluation's seconds from the stage's scores.json (t tasks scored; blank when --eval-every skips it);
- peak RSS: the process's resident-set high-water mark during the stage (VmHWM of /proc/self/status, reset
  at each stage's start by writing 5 to /proc/self/clear_refs), in MiB: memory the OS gave the process, so
  the model, the blocks, the optimiser, Python and the allocator's caches;
- run dir: bytes under the run directory after the stage, in MiB (du-like: the sum of the files' sizes).

The table has a row per window of `--every` stages (default N/10): the median of each time over the window (one
stage's time on a shared machine is noisy), the largest peak RSS, the run directory's size at the window's end
and the bytes a stage of the window added. Lines under it fit each cost against t (least squares).
`--json-out FILE` keeps every stage's numbers; `--from-json FILE` prints their table again. Threads:
OMP_NUM_THREADS=1 and torch.set_num_threads(1), as every timing in BENCHMARKS.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

BENCHMARK = "Scale"


def write_tasks(data_dir: Path, n: int, n_train: int, n_eval: int) -> list[str]:
    """N task folders under data_dir/Scale, each a fresh draw of a built-in task (see the module's docstring).
    Returns their names in training order."""
    from sapt.data.builtin import builtin_suite

    names = []
    for i in range(n):
        base = builtin_suite(seed=i, n_train=n_train, n_val=0, n_eval=n_eval)[i % 4]
        name = f"t{i:03d}_{base.name}"
        folder = data_dir / BENCHMARK / name
        folder.mkdir(parents=True)
        (folder / "definition.txt").write_text(f"{base.definition} (task {i})\n", encoding="utf-8")
        for split, examples in (("train", base.train), ("test", base.eval)):
            (folder / f"{split}.jsonl").write_text(
                "".join(json.dumps({"input": e.input, "output": list(e.outputs)}) + "\n" for e in examples),
                encoding="utf-8")
        names.append(name)
    return names


class Meter:
    """Per-stage numbers, gathered by wrapping the stage trainer's epochs, the router fit and the stage loop's
    report (called once per stage, evaluated or skipped)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []
        self.current: dict[str, Any] = self.fresh()
        reset_peak_rss()

    @staticmethod
    def fresh() -> dict[str, Any]:
        return {"epoch_s": 0.0, "steps": 0, "fit_s": 0.0}

    def install(self) -> None:
        import sapt.router_fit
        import sapt.train
        from sapt.stage_trainer import StageTrainer

        meter = self
        epoch, fit = StageTrainer.epoch, sapt.router_fit.fit_router
        report, skipped = sapt.train.StageLoop.report, sapt.train.StageLoop.report_skipped

        def timed_epoch(trainer, *a, **kw):
            t0, steps = time.perf_counter(), trainer.steps
            out = epoch(trainer, *a, **kw)
            meter.current["epoch_s"] += time.perf_counter() - t0
            meter.current["steps"] += trainer.steps - steps
            return out

        def timed_fit(*a, **kw):
            t0 = time.perf_counter()
            out = fit(*a, **kw)
            meter.current["fit_s"] += time.perf_counter() - t0
            return out

        def after_report(loop, t, *a, **kw):
            out = report(loop, t, *a, **kw)
            meter.end_stage(loop, t)
            return out

        def after_skipped(loop, t, *a, **kw):
            out = skipped(loop, t, *a, **kw)
            meter.end_stage(loop, t)
            return out

        StageTrainer.epoch = timed_epoch
        sapt.router_fit.fit_router = timed_fit
        sapt.train.StageLoop.report, sapt.train.StageLoop.report_skipped = after_report, after_skipped

    def end_stage(self, loop: Any, t: int) -> None:
        from sapt.rundir import stage_dir
        from sapt.rundir.results import read_scores

        scores = read_scores(stage_dir(loop.run_dir, t, loop.stages[t].name))
        c = self.current
        self.rows.append({
            "stage": t + 1,
            "step_ms": 1000 * c["epoch_s"] / c["steps"] if c["steps"] else None,
            "steps": c["steps"],
            "fit_s": c["fit_s"],
            "eval_s": scores["seconds"] if scores is not None else None,
            "peak_rss_mib": peak_rss_mib(),
            "run_dir_mib": tree_bytes(loop.run_dir) / 2**20,
        })
        self.current = self.fresh()
        reset_peak_rss()
        r = self.rows[-1]
        evaluation = "skipped" if r["eval_s"] is None else f"{r['eval_s']:.2f}s"
        print(f"scale: stage {r['stage']}: step {r['step_ms']:.1f} ms, fit {r['fit_s']:.2f}s, eval {evaluation}, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, run dir {r['run_dir_mib']:.2f} MiB", file=sys.stderr, flush=True)


def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux >= 4.0); without it the peak
    is the process's since it started, which the table then says."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def growth(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cost: its least-squares line against t. The run directory's is the bytes each stage adds
    (its total is their sum): a linear increment is a quadratic total, a constant one a linear total."""
    added = [{"stage": r["stage"], "value": r["run_dir_mib"] - (rows[i - 1]["run_dir_mib"] if i else 0.0)}
             for i, r in enumerate(rows)]
    lines = []
    for key, label, unit, scale in (("step_ms", "training step", "ms", 1.0), ("fit_s", "router fit", "s", 1.0),
                                    ("eval_s", "evaluation of a row (t tasks)", "s", 1.0),
                                    ("peak_rss_mib", "peak RSS", "MiB", 1.0),
                                    ("added", "run dir, bytes a stage adds", "KiB", 1024.0)):
        source = added if key == "added" else [{"stage": r["stage"], "value": r[key]} for r in rows]
        pts = [(r["stage"], r["value"] * scale) for r in source if r["value"] is not None]
        if len(pts) < 2:
            continue
        a, b = fit_line([float(x) for x, _ in pts], [float(y) for _, y in pts])
        lines.append(f"  {label}: {a:.3g} + {b:.3g} t {unit} (least squares over {len(pts)} stages)")
    return lines


def table(rows: list[dict[str, Any]], every: int, total_s: float, n: int, k: int) -> str:
    """A row per window of `every` stages: the median of each time over the window's stages (one stage's time
    on a shared machine is noisy; the median of ten is not), the largest peak RSS, the run directory's size
    at the window's end and the mean bytes a stage of the window added to it."""
    head = (f"{'stages':>9} {'step ms':>8} {'fit s':>7} {'eval s':>7} {'rows':>5} {'peak RSS MiB':>12} "
            f"{'run dir MiB':>11} {'KiB/stage':>9}")
    lines = [head]
    for w in range(0, len(rows), every):
        window = rows[w:w + every]
        before = rows[w - 1]["run_dir_mib"] if w else 0.0
        evals = [r["eval_s"] for r in window if r["eval_s"] is not None]
        lines.append(f"{window[0]['stage']:>4}-{window[-1]['stage']:<4} "
                     f"{statistics.median(r['step_ms'] for r in window):>8.1f} "
                     f"{statistics.median(r['fit_s'] for r in window):>7.2f} "
                     f"{format(statistics.median(evals), '.2f') if evals else '-':>7} {len(evals):>5} "
                     f"{max(r['peak_rss_mib'] for r in window):>12.0f} {window[-1]['run_dir_mib']:>11.2f} "
                     f"{1024 * (window[-1]['run_dir_mib'] - before) / len(window):>9.0f}")
    evals = [r["eval_s"] for r in rows if r["eval_s"] is not None]
    lines.append(f"total: {total_s:.0f}s wall for {n} tasks with --eval-every {k}; training steps "
                 f"{sum(r['step_ms'] * r['steps'] for r in rows) / 1000:.0f}s, router fits "
                 f"{sum(r['fit_s'] for r in rows):.0f}s, evaluation {sum(evals):.0f}s over {len(evals)} rows; "
                 f"run dir {rows[-1]['run_dir_mib']:.1f} MiB")
    return "\n".join(lines + ["growth against t (the stage, = the number of blocks):"] + growth(rows))


def header(args: argparse.Namespace) -> str:
    return (f"bench/scale.py --tasks {args.tasks} --eval-every {args.eval_every} (tiny-llama, one torch thread, "
            f"{args.train} training / {args.eval} evaluation examples per task, {args.epochs} epoch(s), batch "
            f"{args.batch_size}, max 3 new tokens, real reflection inputs, learn-then-route with "
            f"{args.router_fit_steps} router-fit steps)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100, help="number of tasks N (default 100)")
    p.add_argument("--eval-every", type=int, default=1, help="sapt run --eval-every K (default 1)")
    p.add_argument("--train", type=int, default=16, help="training examples per task (default 16; 10%% of them validate)")
    p.add_argument("--eval", type=int, default=4, help="evaluation examples per task (default 4)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per task (default 1)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch size (default 4)")
    p.add_argument("--router-fit-steps", type=int, default=100,
                   help="sapt run --router-fit-steps (default 100, not the run's 1000: the fit's cost is linear in its "
                        "steps and in t, and 1000 steps make a 100-task run take about an hour here)")
    p.add_argument("--every", type=int, default=None, help="stages per table row (default N/10)")
    p.add_argument("--json-out", default=None, help="also write every stage's numbers to this JSON file")
    p.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary one)")
    p.add_argument("--from-json", default=None, help="print the table of a --json-out file again, running nothing")
    args = p.parse_args(argv)
    if args.from_json:  # the saved run's own settings, not this command's
        saved = json.loads(Path(args.from_json).read_text())
        args = argparse.Namespace(**{**vars(args), **saved["args"], "every": args.every or saved["args"]["every"]})
        print(header(args))
        print(table(saved["stages"], args.every or max(1, args.tasks // 10), saved["total_s"], args.tasks,
                    args.eval_every))
        return 0
    if args.tasks < 1 or args.eval_every < 1 or args.train < 2 or args.eval < 1:
        print("scale.py: error: --tasks, --eval-every and --eval must be >= 1 and --train >= 2", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(1)
    from sapt.config import resolve
    from sapt.rundir.layout import set_quiet
    from sapt.train import run

    with tempfile.TemporaryDirectory(prefix="sapt-scale-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        names = write_tasks(root / "data", args.tasks, args.train, args.eval)
        out = root / "run"
        cfg = resolve({"model": "tiny-llama", "data_dir": str(root / "data"), "benchmark": BENCHMARK, "tasks": names,
                       "epochs": args.epochs, "batch_size": args.batch_size, "max_new_tokens": 3,
                       "reflection_source": "real", "eval_every": args.eval_every,
                       "router_fit_steps": args.router_fit_steps, "output": str(out)})
        meter = Meter(out)
        meter.install()
        set_quiet(True)  # the run's own lines would be thousands; a scale: line says each stage
        t0 = time.time()
        run(cfg)
        total = time.time() - t0
        print(header(args))
        print(table(meter.rows, args.every or max(1, args.tasks // 10), total, args.tasks, args.eval_every))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"args": vars(args), "total_s": total, "stages": meter.rows},
                                                      indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
