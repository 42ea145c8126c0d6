"""Figures of a run (and of several runs side by side), as PNG files ready for a paper or a report.

    score_matrix.png     heatmap of metrics.json "matrix": a row per stage, a column per task, values
                         annotated, blank where a task was not seen yet
    routing_weights.png  mean routing weight of each block over each task's evaluation inputs, after the
                         last evaluated stage (from stages/NN_<task>/predictions/<task>.jsonl "weights")
    score_curves.png     each task's score across the stages from the one that learned it, and the AP
    unseen_curves.png    with --unseen: each unseen task's score on the base model and after every stage,
                         and their mean
    compare.png          AP and BWT of several runs, grouped bars (`sapt compare`)

Matplotlib is used without pyplot (an explicit `Figure` on the Agg canvas): no global state, no display
needed, safe to call from tests and threads. Every function returns the values it plotted, so what is
drawn can be checked against metrics.json and the prediction files. Every file is written atomically.
"""
from __future__ import annotations

import io as _io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sapt import io
from sapt.config import ConfigError
from sapt.metrics import metrics_problems, short_name
from sapt.rundir import METRICS, stage_dir

DPI = 150
NAME_WIDTH = 24  # task names on axes: 'task1572_samsum_summary' -> 't1572_samsum_summary'


# ---- reading a run ---------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        raise ConfigError(f"{run_dir}: no metrics.json (not a sapt run, or no stage evaluated yet)")
    metrics = io.read_json(path)
    problems = metrics_problems(metrics)
    if problems:
        raise ConfigError(f"{path}: not a sapt metrics file ({'; '.join(problems)})")
    return metrics


def score_array(metrics: dict[str, Any]) -> np.ndarray:
    """metrics["matrix"] as floats (stages x tasks), NaN where a task was not seen yet."""
    tasks, matrix = metrics["tasks"], metrics["matrix"]
    a = np.full((len(matrix), len(tasks)), np.nan)
    for i, row in enumerate(matrix):
        for j, x in enumerate(row):
            if x is not None:
                a[i, j] = float(x)
    return a


@dataclass
class Routing:
    stage: int  # 0-based index of the stage the weights were read after
    stage_task: str  # the task trained in that stage
    eval_tasks: list[str]  # rows: the tasks whose evaluation inputs were routed
    blocks: list[str]  # columns: the task blocks (one per stage up to `stage`)
    weights: np.ndarray  # (len(eval_tasks), len(blocks)) mean routing weights
    counts: list[int]  # evaluation inputs per row


def routing_means(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> Routing:
    """Mean routing weights per evaluation task after the last evaluated stage."""
    run_dir = Path(run_dir)
    metrics = metrics or read_metrics(run_dir)
    n_stages = len(metrics["matrix"])
    if n_stages == 0:
        raise ConfigError(f"{run_dir}: no evaluated stage")
    last = n_stages - 1
    tasks = metrics["tasks"]
    blocks = tasks[: last + 1]
    pred_dir = stage_dir(run_dir, last, tasks[last]) / "predictions"
    rows, counts = [], []
    for task in blocks:
        path = pred_dir / f"{task}.jsonl"
        if not path.exists():
            raise ConfigError(f"{run_dir}: {path.relative_to(run_dir)} is missing")
        weights = [json.loads(line)["weights"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not weights:
            raise ConfigError(f"{run_dir}: {path.relative_to(run_dir)} is empty")
        w = np.asarray(weights, dtype=float)
        if w.ndim != 2 or w.shape[1] != len(blocks):
            raise ConfigError(f"{path}: expected {len(blocks)} routing weights per input, got shape {w.shape}")
        rows.append(w.mean(axis=0))
        counts.append(len(weights))
    return Routing(last, tasks[last], list(blocks), list(blocks), np.stack(rows), counts)


def stage_labels(tasks: Sequence[str], n: int) -> list[str]:
    return [f"{i + 1}: {short_name(tasks[i], NAME_WIDTH)}" for i in range(n)]


# ---- drawing helpers -------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# The formats `sapt compare --out` writes, by the file's suffix (none: PNG). A .pdf holding PNG bytes, as
# before, opens nowhere; matplotlib writes these three without anything more installed.
CHART_FORMATS = ("png", "pdf", "svg")


def chart_format(path: str | Path) -> str | None:
    """The format a chart file's suffix asks for ("png" when it has none); None if sapt does not write it."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return "png" if not suffix else suffix if suffix in CHART_FORMATS else None


def _save(fig, path: str | Path, fmt: str = "png") -> Path:
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI)
    io.atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _heatmap(ax, data: np.ndarray, fmt: str, vmin: float, vmax: float, cmap: str):
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    n = max(data.shape)
    size = 9 if n <= 6 else 7 if n <= 10 else 5.5
    for (i, j), x in np.ndenumerate(data):
        if np.isnan(x):
            continue
        low = (x - vmin) / (vmax - vmin) < 0.55
        white = low if cmap == "viridis" else not low  # viridis is dark at the low end, Blues at the high end
        ax.text(j, i, format(x, fmt), ha="center", va="center", fontsize=size, color="white" if white else "black")
    return im


def _ticks(ax, xlabels: Sequence[str], ylabels: Sequence[str]) -> None:
    ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(ylabels)), labels=ylabels)
    ax.tick_params(length=0)


def _side(n: int, base: float = 4.5, per: float = 0.55) -> float:
    return max(base, 1.8 + per * n)


def _title(metrics: dict[str, Any]) -> str:
    return f"{metrics.get('method', 'sapt')} on {metrics.get('model', '?')}"


# ---- the three figures of a run ----------------------------------------------------------------------
def plot_score_matrix(metrics: dict[str, Any], path: str | Path) -> np.ndarray:
    """Heatmap of the score matrix; returns the plotted array (stages x tasks, NaN = not seen)."""
    a = score_array(metrics)
    tasks = metrics["tasks"]
    fig = _figure(_side(len(tasks)) + 1.2, _side(len(a)))
    ax = fig.add_subplot()
    im = _heatmap(ax, a, ".1f", 0.0, 100.0, "viridis")
    _ticks(ax, [short_name(t, NAME_WIDTH) for t in tasks], [f"after {s}" for s in stage_labels(tasks, len(a))])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("stage (after training task)")
    metric = sorted(set((metrics.get("metric") or {}).values())) or ["score"]
    ax.set_title(f"Score matrix: {_title(metrics)}\n(eval split: {metrics.get('eval_split', '?')}; blank = not seen yet)")
    fig.colorbar(im, ax=ax, label=f"score (0-100; {', '.join(metric)})")
    _save(fig, path)
    return a


def plot_routing_weights(run_dir: str | Path, path: str | Path, metrics: dict[str, Any] | None = None) -> Routing:
    """Heatmap of mean routing weights (evaluation task x block) after the last evaluated stage."""
    metrics = metrics or read_metrics(run_dir)
    r = routing_means(run_dir, metrics)
    n = len(r.blocks)
    fig = _figure(_side(n) + 1.2, _side(n))
    ax = fig.add_subplot()
    im = _heatmap(ax, r.weights, ".2f", 0.0, 1.0, "Blues")
    names = [short_name(t, NAME_WIDTH) for t in r.blocks]
    _ticks(ax, [f"{i + 1}: {x}" for i, x in enumerate(names)], names)
    ax.set_xlabel("LoRA block (task it was trained on)")
    ax.set_ylabel("evaluation inputs of task")
    ax.set_title(f"Mean routing weights after stage {r.stage + 1} ({short_name(r.stage_task, NAME_WIDTH)})\n"
                 f"{_title(metrics)}; diagonal = routed to the task's own block")
    fig.colorbar(im, ax=ax, label="mean routing weight")
    _save(fig, path)
    return r


def plot_score_curves(metrics: dict[str, Any], path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Each task's score across stages (from the stage that learned it) and the AP after each stage.

    Returns (scores, ap): scores[i, j] = metrics["matrix"][i][j] (NaN if unseen); ap[i] = mean of row i
    over the seen tasks.
    """
    a = score_array(metrics)
    tasks = metrics["tasks"]
    ap = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in a])
    x = np.arange(1, len(a) + 1)
    fig = _figure(max(6.0, 2.5 + 0.6 * len(a)), 4.8)
    ax = fig.add_subplot()
    import matplotlib

    colours = matplotlib.colormaps["tab20" if len(tasks) > 10 else "tab10"]
    for j, task in enumerate(tasks):
        seen = ~np.isnan(a[:, j])
        if seen.any():
            ax.plot(x[seen], a[seen, j], marker="o", ms=4, lw=1.5, color=colours(j % colours.N),
                    label=short_name(task, NAME_WIDTH))
    ax.plot(x, ap, color="black", ls="--", lw=2, marker="s", ms=4, label="AP (mean over seen tasks)")
    ax.set_xticks(x, labels=stage_labels(tasks, len(a)), rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(0.5, len(a) + 0.5)
    _score_axes(ax, f"Scores across stages: {_title(metrics)}")
    _save(fig, path)
    return a, ap


def _score_axes(ax: Any, title: str) -> None:
    """The axes of a score-across-stages figure: 0-100, labelled, a grid, the legend outside on the right."""
    ax.set_ylim(-3, 103)
    ax.set_xlabel("stage (after training task)")
    ax.set_ylabel("score (0-100)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def unseen_array(metrics: dict[str, Any]) -> np.ndarray:
    """metrics["unseen"] as floats: row 0 the base model (NaN if not scored), then a row per stage; NaN where
    a method scores nothing (per-task)."""
    unseen = metrics["unseen"]
    rows = [unseen.get("base") or [None] * len(unseen["tasks"]), *unseen["matrix"]]
    return np.array([[np.nan if x is None else float(x) for x in row] for row in rows], dtype=float).reshape(
        len(rows), len(unseen["tasks"]))


def plot_unseen_curves(metrics: dict[str, Any], path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Each unseen task's score (--unseen) on the base model and after every stage, and their mean.
    Returns (scores, mean): scores = `unseen_array`, mean[i] over the tasks scored in row i."""
    a = unseen_array(metrics)
    tasks = metrics["unseen"]["tasks"]
    mean = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in a])
    x = np.arange(len(a))
    fig = _figure(max(6.0, 2.5 + 0.6 * len(a)), 4.8)
    ax = fig.add_subplot()
    import matplotlib

    colours = matplotlib.colormaps["tab20" if len(tasks) > 10 else "tab10"]
    for j, task in enumerate(tasks):
        ok = np.isfinite(a[:, j])
        if ok.any():
            ax.plot(x[ok], a[ok, j], marker="o", ms=4, lw=1.5, color=colours(j % colours.N),
                    label=short_name(task, NAME_WIDTH))
    ok = np.isfinite(mean)
    ax.plot(x[ok], mean[ok], color="black", ls="--", lw=2, marker="s", ms=4, label="mean over unseen tasks")
    ax.set_xticks(x, labels=["base", *stage_labels(metrics["tasks"], len(a) - 1)], rotation=40, ha="right",
                  rotation_mode="anchor")
    ax.set_xlim(-0.5, len(a) - 0.5)
    _score_axes(ax, f"Unseen tasks across stages: {_title(metrics)}")
    _save(fig, path)
    return a, mean


@dataclass
class RunPlots:
    files: dict[str, Path]  # written, by figure name
    skipped: dict[str, str]  # figure name -> why it was not drawn


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> RunPlots:
    """Write the three figures of a run into out_dir (default RUN_DIR/plots).

    The score figures need metrics.json alone; the routing figure also needs the last evaluated stage's
    prediction files, and is skipped (with the reason) when they are missing. A method without a router
    (metrics.json's routing_accuracy null) gets no routing figure and no reason: there is nothing to show.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    metrics = read_metrics(run_dir)
    files, skipped = {}, {}
    files["score_matrix"] = out / "score_matrix.png"
    plot_score_matrix(metrics, files["score_matrix"])
    files["score_curves"] = out / "score_curves.png"
    plot_score_curves(metrics, files["score_curves"])
    if metrics.get("unseen"):
        files["unseen_curves"] = out / "unseen_curves.png"
        plot_unseen_curves(metrics, files["unseen_curves"])
    if "routing_accuracy" in metrics and metrics["routing_accuracy"] is None:
        return RunPlots(files, skipped)  # no router (seq-lora, inc-lora, ...): its mixing weights are fixed
    try:
        plot_routing_weights(run_dir, out / "routing_weights.png", metrics)
        files["routing_weights"] = out / "routing_weights.png"
    except ConfigError as e:
        skipped["routing_weights"] = str(e)
    return RunPlots(files, skipped)


# ---- several runs --------------------------------------------------------------------------------
@dataclass
class Comparison:
    names: list[str]
    ap: np.ndarray  # NaN where absent
    bwt: np.ndarray  # NaN where absent (a run with one stage has no BWT)
    metrics: list[dict[str, Any]]


def run_names(run_dirs: Sequence[str | Path], metrics: Sequence[dict[str, Any]]) -> list[str]:
    """Directory names; where two runs share one, 'method (parent/dir)' keeps them apart."""
    dirs = [Path(d).resolve() for d in run_dirs]
    base = [d.name for d in dirs]
    names = [f"{method_label(m)} ({d.parent.name}/{d.name})" if base.count(d.name) > 1 else d.name
             for d, m in zip(dirs, metrics)]
    # the same directory given twice
    return [f"{n} #{names[:k + 1].count(n)}" if names.count(n) > 1 else n for k, n in enumerate(names)]


def method_label(m: dict[str, Any]) -> str:
    """The method of a run, marking the ablation without attentive reflection."""
    method = str(m.get("method", "sapt"))
    return f"{method} w/o reflection" if m.get("reflection") is False else method


def _value(x: Any) -> float:
    return np.nan if x is None else float(x)


def compare_runs(run_dirs: Sequence[str | Path]) -> Comparison:
    if not run_dirs:
        raise ConfigError("compare needs at least one run directory")
    metrics = [read_metrics(d) for d in run_dirs]
    return Comparison(run_names(run_dirs, metrics), np.array([_value(m.get("ap")) for m in metrics]),
                      np.array([_value(m.get("bwt")) for m in metrics]), metrics)


def _tasks_label(m: dict[str, Any]) -> str:
    """'6 tasks', or '6 tasks, 2 done' for an unfinished run (mtl trains all tasks in one stage)."""
    n, done = len(m.get("tasks") or []), m.get("stages_done")
    unfinished = done is not None and m.get("method") != "mtl" and done < n
    return f"{n} tasks" + (f", {done} done" if unfinished else "")


def plot_compare(run_dirs: Sequence[str | Path], path: str | Path) -> Comparison:
    """Grouped bars of AP and BWT per run; returns the plotted values."""
    c = compare_runs(run_dirs)
    n = len(c.names)
    fig = _figure(max(6.0, 2.5 + 1.1 * n), 4.8)
    ax = fig.add_subplot()
    x = np.arange(n)
    width = 0.38
    for offset, values, label, colour in ((-width / 2, c.ap, "AP", "tab:blue"), (width / 2, c.bwt, "BWT", "tab:orange")):
        bars = ax.bar(x + offset, np.nan_to_num(values), width, label=label, color=colour)
        for bar, v in zip(bars, values):
            text = "n/a" if np.isnan(v) else f"{v:.1f}"
            y = 0.0 if np.isnan(v) else v
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y), xytext=(0, 3 if y >= 0 else -3),
                        textcoords="offset points", ha="center", va="bottom" if y >= 0 else "top", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    labels = ["\n".join([name, *([method_label(m)] if method_label(m) != name else []), m.get("model", "?"),
                          _tasks_label(m)])  # one short line each
              for name, m in zip(c.names, c.metrics)]
    ax.set_xticks(x, labels=labels, fontsize=8)
    finite = np.concatenate([c.ap[np.isfinite(c.ap)], c.bwt[np.isfinite(c.bwt)], [0.0]])
    lo, hi = min(0.0, finite.min()), max(finite.max(), 1.0)
    pad = 0.12 * (hi - lo)
    ax.set_ylim(lo - (pad if lo < 0 else 0), hi + pad)
    ax.set_xlabel("run")
    ax.set_ylabel("points (0-100 scale)")
    ax.set_title("Average performance (AP) and backward transfer (BWT) per run")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
    _save(fig, path, chart_format(path) or "png")
    return c


def format_comparison(c: Comparison) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.1f}"

    w = max([len("run")] + [len(n) for n in c.names])
    mw = max([len("method")] + [len(method_label(m)) for m in c.metrics])
    lines = [f"{'run'.ljust(w)}  {'method'.ljust(mw)} {'model':16s} {'tasks':>5s} {'AP':>6s} {'BWT':>6s} {'F.Ra':>6s}"]
    for name, m, ap, bwt in zip(c.names, c.metrics, c.ap, c.bwt):
        n = m.get("stages_done", len(m.get("matrix", [])))
        lines.append(f"{name.ljust(w)}  {method_label(m).ljust(mw)} {str(m.get('model', '?'))[:16]:16s} "
                     f"{n:>5d} {fmt(float(ap)):>6s} {fmt(float(bwt)):>6s} {fmt(m.get('fra')):>6s}")
    return "\n".join(lines)
