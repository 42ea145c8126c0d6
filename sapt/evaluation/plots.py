"""Figures of a run (and of several runs side by side), as PNG, PDF or SVG files ready for a paper or a report.

    score_matrix     heatmap of metrics.json "matrix": a row per stage, a column per task, values printed in
                     the cells, blank where a task was not seen yet; the colour scale gives 90-100 half its
                     length, so that 90.6 and 100 do not look alike
    routing_weights  mean routing weight of each block over each task's evaluation inputs, after the last
                     evaluated stage (from stages/NN_<task>/predictions/<task>.jsonl "weights")
    score_curves     small multiples: a panel for the AP and one per task, its score across the stages from
                     the one that learned it (one line per panel: no line hides another)
    unseen_curves    with --unseen: the same for each unseen task (base model, then every stage) and their mean
    compare          AP, BWT and F.Ra of several runs, a panel and an axis each (`sapt compare`)

Each figure is written in one or more formats (`--format png,pdf,svg`, `--dpi` for PNG): PDF and SVG are
vector (heatmaps are drawn as cells, not as an embedded image), with TrueType fonts in the PDF (publishers'
PDF checks often refuse the Type 3 fonts matplotlib embeds by default) and no creation date, so the same figure gives
the same bytes.

Matplotlib is used without pyplot (an explicit `Figure` on the Agg canvas): no display needed, safe to call
from tests. The `draw_*` functions return the Figure (so tests can read what was drawn); the `plot_*`
functions write it and return the values they plotted, so what is drawn can be checked against metrics.json
and the prediction files. Every file is written atomically, with the mode the umask gives (sapt.io).
"""
from __future__ import annotations

import io as _io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from sapt import io
from sapt.config import ConfigError
from sapt.evaluation.metrics import short_name
from sapt.rundir import stage_dir
from sapt.rundir.results import read_metrics, read_predictions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 150  # PNG resolution by default: sharp on a screen, small files in a run directory
MAX_DPI = 1200  # above this a PNG of a wide figure runs into tens of thousands of pixels a side
NAME_WIDTH = 24  # task names on axes: 'task1572_samsum_summary' -> 't1572_samsum_summary'
# The score matrix's colour scale: 0-SPLIT takes the lower half of the colours, SPLIT-100 the upper half.
# Scores of a working method sit between 85 and 100, where a linear 0-100 scale gives 90.6 and 100 almost
# the same colour; here they are half the colour bar apart, and 0-90 still moves a tenth of it per 18 points.
SCORE_SPLIT = 90.0


# ---- reading a run ---------------------------------------------------------------------------------

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
    sdir = stage_dir(run_dir, last, tasks[last])
    rows, counts = [], []
    for task in blocks:
        path, records = read_predictions(sdir, task)
        if records is None:
            raise ConfigError(f"{run_dir}: {path.relative_to(run_dir)} is missing")
        weights = [r["weights"] for r in records]
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


# ---- formats, resolution and writing ---------------------------------------------------------------
# The formats sapt writes; matplotlib writes these three without anything more installed.
CHART_FORMATS = ("png", "pdf", "svg")
FORMAT_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}  # how each file starts


def chart_format(path: str | Path) -> str | None:
    """The format a chart file's suffix asks for ("png" when it has none); None if sapt does not write it."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return "png" if not suffix else suffix if suffix in CHART_FORMATS else None


def parse_formats(value: str | Sequence[str]) -> tuple[str, ...]:
    """`--format png,pdf,svg` as a tuple, in the order given, without repeats; ConfigError naming the option
    for an unknown or empty one (a typo should stop before a long report, not after it)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    formats = tuple(dict.fromkeys(str(x).strip().lower().lstrip(".") for x in items if str(x).strip()))
    unknown = [f for f in formats if f not in CHART_FORMATS]
    if not formats or unknown:
        what = f"unknown format {', '.join(repr(f) for f in unknown)}" if unknown else "no format given"
        raise ConfigError(f"--format {value if isinstance(value, str) else ','.join(map(str, items))}: {what}; "
                          f"sapt writes {', '.join(CHART_FORMATS)} (one or several, comma-separated)")
    return formats


def check_dpi(value: float | str) -> float:
    """`--dpi` as a number of dots per inch, 0 < dpi <= MAX_DPI; ConfigError naming the option otherwise
    (0 or a negative dpi makes matplotlib fail deep in the PNG writer, with a traceback)."""
    try:
        dpi = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--dpi {value}: not a number (dots per inch, e.g. 300)") from None
    if not (math.isfinite(dpi) and 0 < dpi <= MAX_DPI):
        raise ConfigError(f"--dpi {value}: must be above 0 and at most {MAX_DPI} (dots per inch, e.g. 300)")
    return dpi


def chart_paths(path: str | Path, formats: Sequence[str] | None = None) -> list[tuple[Path, str]]:
    """Where a chart goes, and in which format: without `formats`, `path` itself in the format its suffix
    names (none: PNG); with them, `path` with its suffix (if one of CHART_FORMATS) replaced by each format's."""
    path = Path(path)
    if formats is None:
        fmt = chart_format(path)
        if fmt is None:
            raise ConfigError(f"{path}: sapt writes a chart as {', '.join('.' + f for f in CHART_FORMATS)} "
                              f"(the suffix picks the format), not {path.suffix}")
        return [(path, fmt)]
    base = path.with_suffix("") if path.suffix.lower().lstrip(".") in CHART_FORMATS else path
    return [(base.with_name(f"{base.name}.{fmt}"), fmt) for fmt in parse_formats(formats)]


# TrueType (42) fonts in PDF and PostScript: publishers' PDF checks often refuse the Type 3 fonts that are
# matplotlib's default. A fixed SVG id salt and no dates: the same figure, the same bytes.
_SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "sapt"}
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": None}


def save_figure(fig: Figure, path: str | Path, formats: Sequence[str] | None = None, dpi: float = DPI) -> list[Path]:
    """Write `fig` (see chart_paths for the names), each file atomically; returns the files written."""
    import matplotlib

    dpi = check_dpi(dpi)
    written = []
    for target, fmt in chart_paths(path, formats):
        buf = _io.BytesIO()
        with matplotlib.rc_context(_SAVE_RC):
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
        io.atomic_write_bytes(target, buf.getvalue())
        written.append(target)
    return written


# ---- drawing helpers -------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _score_norm():
    """0-100 with SCORE_SPLIT-100 on the upper half of the colours (see SCORE_SPLIT)."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vcenter=SCORE_SPLIT, vmin=0.0, vmax=100.0)


def _text_colour(rgba: Sequence[float]) -> str:
    """Black on a light cell, white on a dark one, from the cell colour's luminance (whatever the colour map)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def _heatmap(ax: Axes, data: np.ndarray, fmt: str, norm: Any, cmap: str):
    """Cells as vector rectangles (pcolormesh; imshow would put a bitmap into a PDF or SVG), NaN left blank,
    each value printed in its cell."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    rows, cols = data.shape
    mesh = ax.pcolormesh(np.arange(cols + 1) - 0.5, np.arange(rows + 1) - 0.5, np.ma.masked_invalid(data),
                         cmap=cm, norm=norm, edgecolors="white", linewidth=0.8)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)  # row 0 at the top, as a table reads
    n = max(data.shape)
    size = 9 if n <= 6 else 7 if n <= 10 else 5.5
    for (i, j), x in np.ndenumerate(data):
        if not np.isnan(x):
            ax.text(j, i, format(x, fmt), ha="center", va="center", fontsize=size, color=_text_colour(cm(norm(x))))
    return mesh


def _ticks(ax: Axes, xlabels: Sequence[str], ylabels: Sequence[str]) -> None:
    ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(ylabels)), labels=ylabels)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def _side(n: int, base: float = 4.5, per: float = 0.55) -> float:
    return max(base, 1.8 + per * n)


def _title(metrics: dict[str, Any]) -> str:
    return f"{metrics.get('method', 'sapt')} on {metrics.get('model', '?')}"


# ---- the figures of a run ----------------------------------------------------------------------------
def draw_score_matrix(metrics: dict[str, Any]) -> Figure:
    """Heatmap of the score matrix, values in the cells, on the 0-100 scale that spreads 90-100 (SCORE_SPLIT)."""
    a = score_array(metrics)
    tasks = metrics["tasks"]
    fig = _figure(_side(len(tasks)) + 1.4, _side(len(a)))
    ax = fig.add_subplot()
    mesh = _heatmap(ax, a, ".1f", _score_norm(), "viridis")
    _ticks(ax, [short_name(t, NAME_WIDTH) for t in tasks], [f"after {s}" for s in stage_labels(tasks, len(a))])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("stage (after training task)")
    metric = sorted(set((metrics.get("metric") or {}).values())) or ["score"]
    ax.set_title(f"Score matrix: {_title(metrics)}\n(eval split: {metrics.get('eval_split', '?')}; "
                 "blank = not seen yet)")
    bar = fig.colorbar(mesh, ax=ax, label=f"{', '.join(metric)} (0-100; {SCORE_SPLIT:g}-100 takes the upper half)")
    bar.set_ticks([0, 30, 60, 90, 95, 100])
    return fig


def plot_score_matrix(metrics: dict[str, Any], path: str | Path, formats: Sequence[str] | None = None,
                      dpi: float = DPI) -> np.ndarray:
    """Write draw_score_matrix (see save_figure); returns the plotted array (stages x tasks, NaN = not seen)."""
    save_figure(draw_score_matrix(metrics), path, formats, dpi)
    return score_array(metrics)


def draw_routing_weights(r: Routing, metrics: dict[str, Any]) -> Figure:
    """Heatmap of mean routing weights (evaluation task x block), 0-1 linear, values in the cells."""
    from matplotlib.colors import Normalize

    n = len(r.blocks)
    fig = _figure(_side(n) + 1.2, _side(n))
    ax = fig.add_subplot()
    mesh = _heatmap(ax, r.weights, ".2f", Normalize(0.0, 1.0), "Blues")
    names = [short_name(t, NAME_WIDTH) for t in r.blocks]
    _ticks(ax, [f"{i + 1}: {x}" for i, x in enumerate(names)], names)
    ax.set_xlabel("LoRA block (task it was trained on)")
    ax.set_ylabel("evaluation inputs of task")
    ax.set_title(f"Mean routing weights after stage {r.stage + 1} ({short_name(r.stage_task, NAME_WIDTH)})\n"
                 f"{_title(metrics)}; diagonal = routed to the task's own block")
    fig.colorbar(mesh, ax=ax, label="mean routing weight")
    return fig


def plot_routing_weights(run_dir: str | Path, path: str | Path, metrics: dict[str, Any] | None = None,
                         formats: Sequence[str] | None = None, dpi: float = DPI) -> Routing:
    """Write the mean routing weights after the last evaluated stage (see save_figure); returns them."""
    metrics = metrics or read_metrics(run_dir)
    r = routing_means(run_dir, metrics)
    save_figure(draw_routing_weights(r, metrics), path, formats, dpi)
    return r


def _grid(n: int) -> tuple[int, int]:
    """(rows, columns) for n small panels: one row up to 3, else about square (5 -> 2 x 3, 16 -> 4 x 4)."""
    cols = n if n <= 3 else math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _small_multiples(x: np.ndarray, xlabels: Sequence[str], panels: Sequence[tuple[str, np.ndarray, bool]],
                     title: str, xlabel: str) -> Figure:
    """One panel per curve, a shared 0-100 axis: curves that coincide (several tasks at 100) cannot hide each
    other, as they did on one axis. panels: (title, y, summary); a summary curve is drawn black and dashed.
    Points are labelled with their values (all of them up to 6 points, else the first and the last)."""
    import matplotlib

    rows, cols = _grid(len(panels))
    fig = _figure(0.6 + 2.5 * cols, 1.0 + 2.1 * rows)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    colours = matplotlib.colormaps["tab20" if len(panels) > 11 else "tab10"]
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.remove()
            continue
        name, y, summary = panels[k]
        ok = np.isfinite(y)
        style = dict(color="black", ls="--", marker="s") if summary else dict(color=colours((k - 1) % colours.N),
                                                                               ls="-", marker="o")
        ax.plot(x[ok], y[ok], lw=1.8, ms=4.5, label=name, **style)
        shown = np.flatnonzero(ok)
        if len(shown) > 6:
            shown = shown[[0, -1]]
        for i in shown:
            ax.annotate(f"{y[i]:.1f}", (x[i], y[i]), xytext=(0, -5 if y[i] > 75 else 5), textcoords="offset points",
                        ha="center", va="top" if y[i] > 75 else "bottom", fontsize=6.5, color="0.25")
        ax.set_title(name, fontsize=9, fontweight="bold" if summary else "normal")
        ax.set_ylim(-5, 108)
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_xlim(x[0] - 0.5, x[-1] + 0.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        last_in_column = k + cols >= len(panels)
        if last_in_column:  # the panel below was removed or there is none: this one carries the stage ticks
            ax.tick_params(labelbottom=True)
            ax.set_xlabel(xlabel, fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("score (0-100)", fontsize=8)
    axes[0, 0].set_xticks(x, labels=list(xlabels))
    fig.suptitle(title, fontsize=10)
    return fig


def score_curves_values(metrics: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ap): scores[i, j] = metrics["matrix"][i][j] (NaN if unseen); ap[i] = mean of row i over the
    seen tasks."""
    a = score_array(metrics)
    ap = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in a])
    return a, ap


def draw_score_curves(metrics: dict[str, Any]) -> Figure:
    """Small multiples: the AP after each stage, then each task's score from the stage that learned it."""
    a, ap = score_curves_values(metrics)
    tasks = metrics["tasks"]
    panels = [("AP (mean over seen tasks)", ap, True)]
    panels += [(f"{j + 1}: {short_name(t, NAME_WIDTH)}", a[:, j], False) for j, t in enumerate(tasks)]
    x = np.arange(1, len(a) + 1)
    return _small_multiples(x, [str(i) for i in x], panels,
                            f"Scores across stages: {_title(metrics)} (stage k trains task k)", "after stage")


def plot_score_curves(metrics: dict[str, Any], path: str | Path, formats: Sequence[str] | None = None,
                      dpi: float = DPI) -> tuple[np.ndarray, np.ndarray]:
    """Write draw_score_curves (see save_figure); returns score_curves_values."""
    save_figure(draw_score_curves(metrics), path, formats, dpi)
    return score_curves_values(metrics)


def unseen_array(metrics: dict[str, Any]) -> np.ndarray:
    """metrics["unseen"] as floats: row 0 the base model (NaN if not scored), then a row per stage; NaN where
    a method scores nothing (per-task)."""
    unseen = metrics["unseen"]
    rows = [unseen.get("base") or [None] * len(unseen["tasks"]), *unseen["matrix"]]
    return np.array([[np.nan if x is None else float(x) for x in row] for row in rows], dtype=float).reshape(
        len(rows), len(unseen["tasks"]))


def unseen_curves_values(metrics: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, mean): scores = `unseen_array`, mean[i] over the tasks scored in row i."""
    a = unseen_array(metrics)
    return a, np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in a])


def draw_unseen_curves(metrics: dict[str, Any]) -> Figure:
    """Small multiples: the mean over the unseen tasks, then each one, on the base model and after every stage."""
    a, mean = unseen_curves_values(metrics)
    tasks = metrics["unseen"]["tasks"]
    panels = [("mean over unseen tasks", mean, True)]
    panels += [(short_name(t, NAME_WIDTH), a[:, j], False) for j, t in enumerate(tasks)]
    x = np.arange(len(a))
    return _small_multiples(x, ["base", *(str(i) for i in x[1:])], panels,
                            f"Unseen tasks across stages: {_title(metrics)} (stage k trains task k)",
                            "base model, then after stage")


def plot_unseen_curves(metrics: dict[str, Any], path: str | Path, formats: Sequence[str] | None = None,
                       dpi: float = DPI) -> tuple[np.ndarray, np.ndarray]:
    """Write draw_unseen_curves (see save_figure); returns unseen_curves_values."""
    save_figure(draw_unseen_curves(metrics), path, formats, dpi)
    return unseen_curves_values(metrics)


@dataclass
class RunPlots:
    files: dict[str, Path]  # by figure name: its file in the first format asked for
    skipped: dict[str, str]  # figure name -> why it was not drawn
    written: list[Path] = field(default_factory=list)  # every file written, all formats


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, formats: Sequence[str] = ("png",),
             dpi: float = DPI) -> RunPlots:
    """Write the figures of a run into out_dir (default RUN_DIR/plots), as NAME.<format> for each format.

    The score figures need metrics.json alone; the routing figure also needs the last evaluated stage's
    prediction files, and is skipped (with the reason) when they are missing. A method without a router
    (metrics.json's routing_accuracy null) gets no routing figure and no reason: there is nothing to show.
    The formats and dpi are checked first, before anything is drawn.
    """
    formats, dpi = parse_formats(formats), check_dpi(dpi)
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    metrics = read_metrics(run_dir)
    plots = RunPlots({}, {})

    def write(name: str, fig: Figure) -> None:
        paths = save_figure(fig, out / name, formats, dpi)
        plots.files[name] = paths[0]
        plots.written.extend(paths)

    write("score_matrix", draw_score_matrix(metrics))
    write("score_curves", draw_score_curves(metrics))
    if metrics.get("unseen"):
        write("unseen_curves", draw_unseen_curves(metrics))
    if "routing_accuracy" in metrics and metrics["routing_accuracy"] is None:
        return plots  # no router (seq-lora, inc-lora, ...): its mixing weights are fixed
    try:
        r = routing_means(run_dir, metrics)
    except ConfigError as e:
        plots.skipped["routing_weights"] = str(e)
        return plots
    write("routing_weights", draw_routing_weights(r, metrics))
    return plots


# ---- several runs --------------------------------------------------------------------------------
@dataclass
class Comparison:
    names: list[str]
    ap: np.ndarray  # NaN where absent
    bwt: np.ndarray  # NaN where absent (a run with one stage has no BWT)
    metrics: list[dict[str, Any]]
    fra: np.ndarray = field(default_factory=lambda: np.array([]))  # NaN where absent, as BWT
    files: list[Path] = field(default_factory=list)  # the chart files written (plot_compare)


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
                      np.array([_value(m.get("bwt")) for m in metrics]), metrics,
                      np.array([_value(m.get("fra")) for m in metrics]))


def _tasks_label(m: dict[str, Any]) -> str:
    """'6 tasks', or '6 tasks, 2 done' for an unfinished run (mtl trains all tasks in one stage)."""
    n, done = len(m.get("tasks") or []), m.get("stages_done")
    unfinished = done is not None and m.get("method") != "mtl" and done < n
    return f"{n} tasks" + (f", {done} done" if unfinished else "")


# (attribute of Comparison, panel title, colour, fixed axis range or None: fitted to the values and 0)
COMPARE_PANELS = (
    ("ap", "AP (higher is better)", "tab:blue", (0.0, 100.0)),
    ("bwt", "BWT (0 = no forgetting;\nnegative = forgot)", "tab:orange", None),
    ("fra", "F.Ra (forgetting from the best;\nlower is better)", "tab:red", None),
)


def _limits(values: np.ndarray, fixed: tuple[float, float] | None) -> tuple[float, float]:
    """An axis range holding 0, the values and room for their labels (a fifth of the span on the open sides)."""
    finite = values[np.isfinite(values)]
    lo, hi = fixed if fixed is not None else (min(0.0, *finite, 0.0), max(0.0, *finite, 0.0))
    if hi - lo < 1.0:
        hi = lo + 1.0
    pad = (0.1 if fixed is not None else 0.22) * (hi - lo)
    return lo - (pad if lo < 0 else 0), hi + (pad if hi > 0 else 0)


def draw_compare(c: Comparison) -> Figure:
    """AP, BWT and F.Ra per run: three panels of horizontal bars, one axis each (BWT's few points do not
    vanish on AP's 0-100), the runs listed once on the left, top to bottom in the order given."""
    n = len(c.names)
    fig = _figure(10.0, 1.3 + 0.62 * n)
    axes = fig.subplots(1, len(COMPARE_PANELS), sharey=True, width_ratios=[1.25, 1, 1])
    y = np.arange(n)
    for ax, (key, title, colour, fixed) in zip(axes, COMPARE_PANELS):
        values = getattr(c, key)
        bars = ax.barh(y, np.nan_to_num(values), 0.6, color=colour, label=key)
        for bar, v in zip(bars, values):
            right = not (np.isfinite(v) and v < 0)
            ax.annotate("n/a" if np.isnan(v) else f"{v:.1f}", (0.0 if np.isnan(v) else v, bar.get_y() + 0.3),
                        xytext=(3 if right else -3, 0), textcoords="offset points", va="center",
                        ha="left" if right else "right", fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(*_limits(values, fixed))
        if fixed is not None:  # no tick beyond the scale (the room on the right is for the value labels)
            ax.set_xticks(np.linspace(*fixed, 6))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("points (0-100 scale)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    labels = [" · ".join([name, *([method_label(m)] if method_label(m) != name else [])]) + "\n"
              + f"{m.get('model', '?')}, {_tasks_label(m)}" for name, m in zip(c.names, c.metrics)]
    axes[0].set_yticks(y, labels=labels, fontsize=8)
    axes[0].set_ylim(n - 0.5, -0.5)  # the first run at the top
    fig.suptitle("Average performance (AP), backward transfer (BWT) and forgetting (F.Ra) per run", fontsize=10)
    return fig


def plot_compare(run_dirs: Sequence[str | Path], path: str | Path, formats: Sequence[str] | None = None,
                 dpi: float = DPI) -> Comparison:
    """Write draw_compare (see save_figure: without `formats`, the suffix of `path` picks the format);
    returns the plotted values and the files."""
    c = compare_runs(run_dirs)
    c.files = save_figure(draw_compare(c), path, formats, dpi)
    return c


def format_comparison(c: Comparison) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.1f}"

    w = max([len("run")] + [len(n) for n in c.names])
    mw = max([len("method")] + [len(method_label(m)) for m in c.metrics])
    # "tasks" is the run's tasks; "stages" what it has done of its stages (an mtl run has one stage for all
    # its tasks; a run in progress fewer than it will): the column showed stages under the name "tasks".
    lines = [f"{'run'.ljust(w)}  {'method'.ljust(mw)} {'model':16s} {'tasks':>5s} {'stages':>7s} {'AP':>6s} "
             f"{'BWT':>6s} {'F.Ra':>6s}"]
    for name, m, ap, bwt in zip(c.names, c.metrics, c.ap, c.bwt):
        tasks = len(m.get("tasks", []))
        stages = 1 if m.get("method") == "mtl" else tasks
        done = m.get("stages_done", len(m.get("matrix", [])))
        lines.append(f"{name.ljust(w)}  {method_label(m).ljust(mw)} {str(m.get('model', '?'))[:16]:16s} "
                     f"{tasks:>5d} {f'{done}/{stages}':>7s} {fmt(float(ap)):>6s} {fmt(float(bwt)):>6s} "
                     f"{fmt(m.get('fra')):>6s}")
    return "\n".join(lines)
