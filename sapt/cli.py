"""`sapt run | eval | predict | report`. Errors are one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Sequence

from sapt.config import CHANGEABLE_KEYS, FIELDS, SECTIONS, ConfigError, _csv, base_type, default_text, flag_of
from sapt.errors import SaptError


# `sapt run`'s options beyond the config keys: how to treat an existing run directory, and a dry run.
RUN_DIR_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--dry-run", dict(dest="dry_run", action="store_true",
                       help="print the resolved config (as config.yaml) and each stage's optimiser steps from the "
                            "task data, then exit: no model is loaded, nothing is written")),
    ("--force-new", dict(dest="force_new", action="store_true",
                         help="if --output holds a run with another config, start a fresh OUTPUT-2 (-3, ...) next to it "
                              "instead of refusing (the same command again resumes that one)")),
    ("--allow-config-change", dict(dest="allow_config_change", metavar="KEYS",
                                   type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                                   help=f"resume although these keys changed: {' and/or '.join(CHANGEABLE_KEYS)} "
                                        "(e.g. lowered after a non-finite loss); recorded in manifest.json")),
]


def config_option(name: str) -> tuple[str, dict[str, Any]] | None:
    """The `sapt run` flag of config key `name` and its add_argument keywords, from the field's declaration
    (sapt.config.option); None for a key of YAML files only."""
    flag = flag_of(name)
    if flag is None:
        return None
    f = FIELDS[name]
    meta = f.metadata
    base = base_type(name)
    if base is bool:  # --no-X for a default of true (or --X for one of false): the help says what it does
        return flag, dict(dest=name, action="store_false" if f.default is True else "store_true", help=meta["help"])
    kw: dict[str, Any] = dict(dest=name)
    kind = meta["type"] or {int: int, float: float, list: _csv}.get(base)
    if kind is not None:
        kw["type"] = kind
    if meta["choices"] is not None:
        kw["choices"] = meta["choices"]
    default = default_text(name)
    kw["help"] = f"{meta['help']} {default}" if default else meta["help"]
    return flag, kw


def run_options() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """`sapt run`'s options by section (SECTIONS' keys): each config key's flag, then the run directory's."""
    options: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SECTIONS}
    for name in FIELDS:
        opt = config_option(name)
        if opt is not None:
            options[FIELDS[name].metadata["section"]].append(opt)
    options["run"] += RUN_DIR_OPTIONS
    return options


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): `sapt run: error: argument --lr: ...`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def package_version() -> str:
    """The installed distribution's version (importlib.metadata, found by the import name `sapt`, so that
    a distribution renamed on the package index still answers), else sapt.__version__ (a source checkout)."""
    from importlib import metadata

    from sapt.version import __version__

    try:
        names = set(metadata.packages_distributions().get("sapt", ()))
        if len(names) == 1:
            return metadata.version(names.pop())
    except (metadata.PackageNotFoundError, OSError, ValueError):
        pass
    return __version__


class VersionAction(argparse.Action):
    """`sapt --version`: the version looked up only when asked (scanning the installed distributions takes
    a tenth of a second, which every other command would pay at start-up with argparse's "version")."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print sapt's version and exit", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> typing.NoReturn:
        print(f"sapt {package_version()}")  # on stdout, as argparse's own "version" action prints it
        parser.exit(0)


def unknown_option_message(parser: argparse.ArgumentParser, command: str | None, unknown: list[str]) -> str:
    """One line for arguments no option of `command` takes: the first unknown --option and the known one
    closest to it (difflib), or argparse's own words when none is an option."""
    import difflib

    target = parser.command_parsers.get(command, parser) if command else parser
    known = sorted({s for action in target._actions for s in action.option_strings if s.startswith("--")})
    flag = next((a.split("=", 1)[0] for a in unknown if a.startswith("-")), None)
    if flag is None:
        return f"{target.prog}: error: unrecognized arguments: {' '.join(unknown)} (see {target.prog} --help)"
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{target.prog}: error: unrecognized option {flag}{hint} (see {target.prog} --help)"


def figure_formats(value: str) -> tuple[str, ...]:
    """argparse type of `--format png,pdf,svg`: a bad one is refused at parsing, in one line naming the option,
    before a report or a comparison has done any work."""
    from sapt.evaluation.plots import CHART_FORMATS, parse_formats

    try:
        return parse_formats(value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{value!r}: sapt writes {', '.join(CHART_FORMATS)} "
                                         "(one or several, comma-separated)") from None


def figure_dpi(value: str) -> float:
    """argparse type of `--dpi`: a number above 0 (0 or less made matplotlib fail deep in its PNG writer)."""
    from sapt.evaluation.plots import MAX_DPI, check_dpi

    try:
        return check_dpi(value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of dots per inch above 0 and at most {MAX_DPI}, "
                                         "e.g. 300") from None


def add_figure_options(parser: argparse.ArgumentParser, formats_help: str) -> None:
    """`--format` and `--dpi`, the same for every command that draws figures (report, compare)."""
    parser.add_argument("--format", dest="formats", type=figure_formats, metavar="FMT[,FMT...]",
                        help=f"png, pdf, svg, one or several, comma-separated: {formats_help}; PDF and SVG are "
                             "vector, with TrueType fonts")
    parser.add_argument("--dpi", type=figure_dpi, help="resolution of PNG files in dots per inch (default 150; "
                                                       "300 for print)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sapt", description="Continual learning of language models with SAPT.")
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    p.command_parsers = sub.choices  # for unknown_option_message: each command's own options

    run = sub.add_parser("run", help="learn a sequence of tasks; with no options, the built-in demo on smollm2")
    run.add_argument("--config", help="YAML file of config keys; command-line options override it")
    for section, options in run_options().items():
        group = run.add_argument_group(SECTIONS[section])
        for flag, kw in options:
            group.add_argument(flag, default=argparse.SUPPRESS, **kw)
    run.add_argument("--quiet", action="store_true", help="print only warnings, errors and the final table (no "
                     "progress lines or bars; RUN_DIR/run.log still gets every line)")

    ev = sub.add_parser("eval", help="re-score the final model of a run on all its tasks")
    ev.add_argument("--run", required=True, help="run directory")
    ev.add_argument("--data-dir", help="read the tasks from here instead of the run's data directory")
    ev.add_argument("--max-eval-per-task", type=int, help="override the run's evaluation subset size")
    ev.add_argument("--routing", choices=("router", "oracle"), default="router",
                    help="oracle: score each task with its own block alone (the run knows each evaluation set's "
                         "task); on the run's own data, AP(oracle) - AP(routed), the routing loss, goes into "
                         "metrics.json and the report")
    ev.add_argument("--no-definitions", action="store_true",
                    help="score every evaluation input without its task's definition in the prompt, as predict is "
                         "asked without one; the scores and routing accuracy go to RUN_DIR/metrics_no_definitions.json "
                         "(metrics.json is left as it is)")

    dg = sub.add_parser("diagnose", help="per stage: where the router started the new task, how its weight moved, "
                                         "where it ended")
    dg.add_argument("--run", required=True, help="run directory")
    dg.add_argument("--json", action="store_true", help="print the rows as JSON")

    pr = sub.add_parser("predict", help="answer a text with the final model, with its routing weights")
    pr.add_argument("--run", required=True, help="run directory, or an export of one (`sapt export`: its folder, "
                    "or the USER/REPO id of a Hub repo it was pushed to)")
    pr.add_argument("text", nargs="+", help="input text(s); the run's prompt template is applied")
    pr.add_argument("--definition", default="", help="task definition to put in the prompt (default: none)")
    pr.add_argument("--max-new-tokens", type=int, help="generation length (default: the run's)")
    pr.add_argument("--json", action="store_true", help="print one JSON object per input")
    pr.add_argument("--merge", action="store_true", help="answer one input at a time with its mixture merged into "
                    "the base weights: faster for long outputs (see BENCHMARKS.md, Speed)")

    ln = sub.add_parser("learn", help="extend a finished run with one more task; re-scores every task")
    ln.add_argument("--run", required=True, help="run directory")
    ln.add_argument("--task", required=True, help="task folder in the CL_Benchmark layout: <benchmark>/<task>/train.json")

    rp = sub.add_parser("report", help="print the score matrix and metrics of a run")
    rp.add_argument("--run", required=True, help="run directory")
    rp.add_argument("--json", action="store_true", help="print metrics.json")
    rp.add_argument("--no-plots", action="store_true",
                    help="do not write RUN_DIR/plots/ (score_matrix, routing_weights, score_curves)")
    add_figure_options(rp, "the formats of RUN_DIR/plots/NAME.FORMAT (default png)")

    cp = sub.add_parser("compare", help="AP, BWT and F.Ra of several runs: a table and a bar chart, a panel each")
    cp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    cp.add_argument("--out", default="compare.png", help="chart file to write: .png, .pdf or .svg, by its suffix "
                                                          "(default compare.png)")
    add_figure_options(cp, "write the chart in these formats, as --out with each one's suffix (default: the one "
                           "--out's suffix names)")

    ex = sub.add_parser("export", help="write each task block as a PEFT LoRA adapter, and the router")
    ex.add_argument("--run", required=True, help="run directory")
    ex.add_argument("--out", help="output directory: OUT/<task>/ adapters, OUT/router.safetensors, the config and "
                                  "a model card; `sapt.load(OUT)` and `sapt predict --run OUT` answer from it "
                                  "(optional with --push-to-hub: then a temporary folder)")
    ex.add_argument("--force", action="store_true", help="write into a non-empty directory that is not an export")
    ex.add_argument("--push-to-hub", metavar="REPO", help="then upload the export to this Hugging Face Hub model "
                    "repo (USER/REPO, created if absent; needs a token: `hf auth login` or HF_TOKEN); "
                    "`sapt.load(\"USER/REPO\")` loads it back")
    ex.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")

    fb = sub.add_parser("fetch-benchmark", help="download the public CL_Benchmark (SuperNI, Long_Sequence)")
    fb.add_argument("--dest", required=True, help="directory to create; use it as --data-dir")
    fb.add_argument("--url", help="zip archive holding a CL_Benchmark/ folder, http(s):// or file:// "
                                  "(default: the GitHub zip of circle-hit/SAPT at main)")
    fb.add_argument("--force", action="store_true", help="replace a non-empty DEST")
    fb.add_argument("--max-bytes", type=int, help="refuse an archive whose CL_Benchmark/ unpacks to more than "
                                                  "N bytes (default 2 GiB)")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from sapt.rundir.layout import set_quiet

    was_quiet = set_quiet(args.quiet)
    try:
        return _run(args)
    finally:
        set_quiet(was_quiet)  # main() may be called again in this process (tests, notebooks)


def _run(args: argparse.Namespace) -> int:
    from sapt.api import run

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    if getattr(args, "dry_run", False):
        from sapt.config import resolve
        from sapt.dry_run import dry_run

        print(dry_run(resolve(overrides, args.config)))
        return 0
    result = run(args.config, force_new=getattr(args, "force_new", False),
                 allow_config_change=getattr(args, "allow_config_change", None) or (), **overrides)
    if result.table:  # empty on the processes other than the main one
        print(result.table)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sapt.distributed import get_dist
    from sapt.evaluation.tasks import decoding_of, evaluate_tasks
    from sapt.api import method_of
    from sapt.methods import make_method
    from sapt.rundir.results import write_eval_predictions, write_eval_scores
    from sapt.train import load_run_config, load_run_tasks, load_trained

    cfg = load_run_config(args.run)
    if args.data_dir is not None:
        cfg.data_dir = args.data_dir
    if args.max_eval_per_task is not None:
        if args.max_eval_per_task < 1:
            raise ConfigError(f"--max-eval-per-task must be >= 1, got {args.max_eval_per_task}")
        cfg.max_eval_per_task = args.max_eval_per_task
    tasks = load_run_tasks(cfg)
    oracle = args.routing == "oracle"
    if oracle and not make_method(cfg.method, cfg.method_options).routed:
        raise ConfigError(f"--routing oracle: {cfg.method} has no router to compare with (a routed method: sapt, sapt-hard)")
    cfg, model, names = load_trained(args.run, cfg)
    method = make_method("per-task") if oracle else method_of(cfg)  # per-task: weight 1 on the task's own block
    tasks = method.eval_tasks(tasks, len(names) - 1)  # what the last trained stage scores (mtl: every task)
    main = get_dist().is_main  # under accelerate launch every process evaluates its share; one writes
    scores = {}
    bare = args.no_definitions  # every prompt without its definition: written apart, under names of its own
    suffix = "_no_definitions" if bare else ""
    # no autocast: `sapt eval` has always scored in the model's own precision (the stage loop uses the run's)
    decoding = dataclasses.replace(decoding_of(cfg.decoding, cfg.mixed_precision), precision="no")
    for result in evaluate_tasks(model, tasks, method, decoding, definitions=not bare):
        name, score, accuracy = result.task.name, result.score, result.routing_accuracy
        if main:
            write_eval_predictions(Path(args.run), name, result.records, suffix)
        scores[name] = {"score": score}
        line = f"{name:30s} {score:6.1f}"
        if accuracy is not None:
            scores[name]["routing_accuracy"] = accuracy
            line += f"   routing accuracy {accuracy:5.1f}"
        if main:
            print(line)
    ap = sum(s["score"] for s in scores.values()) / len(scores)
    if main:
        written = write_eval_scores(Path(args.run), {"scores": scores, "ap": ap, "after_stage": len(names),
                                                     "routing": args.routing, **({"definitions": "none"} if bare else {})},
                                    oracle, suffix)
        print(f"AP {ap:.1f} over {len(scores)} tasks (written to {written})")
        if bare and not oracle:
            record_no_definitions(Path(args.run), args, scores, ap, len(names))
        elif oracle and not bare and args.data_dir is None and args.max_eval_per_task is None:
            record_oracle_routing(Path(args.run), cfg, {n: s["score"] for n, s in scores.items()}, ap, len(names))
    return 0


def record_no_definitions(run_dir: Path, args: argparse.Namespace, scores: dict[str, dict[str, float]], ap: float,
                          stages: int) -> None:
    """`sapt eval --no-definitions`: the final model's scores and routing accuracy without definitions, written
    (atomically) beside metrics.json in a file of its own. metrics.json stays as the run wrote it: its numbers
    are the run's, with the prompts it trained on, and a resumed run must reproduce its bytes."""
    from sapt.rundir.results import write_metrics_no_definitions

    routing = {n: s["routing_accuracy"] for n, s in scores.items() if "routing_accuracy" in s}
    mean_routing = sum(routing.values()) / len(routing) if routing else None
    written = write_metrics_no_definitions(run_dir, {
        "definitions": "none: every evaluation prompt without its task's definition, as predict without --definition",
        "after_stage": stages, "tasks": list(scores), "scores": {n: s["score"] for n, s in scores.items()}, "ap": ap,
        "routing_accuracy": routing,
        "mean_routing_accuracy": mean_routing,
        "data_dir": args.data_dir, "max_eval_per_task": args.max_eval_per_task})
    mean = f", mean routing accuracy {mean_routing:.1f}" if routing else ""
    print(f"without definitions: AP {ap:.1f}{mean} ({written})")


def record_oracle_routing(run_dir: Path, cfg, scores: dict[str, float], ap: float, stages: int) -> None:
    """The oracle-routed scores beside the run's, and metrics.json rewritten with the routing loss."""
    from sapt.api import method_of
    from sapt.evaluation.report import write_metrics
    from sapt.rundir.results import write_oracle_routing
    from sapt.train import load_run_tasks, recorded_settings

    write_oracle_routing(run_dir, {"after_stage": stages, "scores": scores, "ap": ap})
    result = write_metrics(run_dir, method_of(cfg), load_run_tasks(cfg), recorded_settings(cfg))
    if "oracle_routed" in result.metrics:
        print(f"routing loss {result.metrics['oracle_routed']['routing_loss']:.1f} points: AP {ap:.1f} oracle-routed, "
              f"{result.metrics['ap']:.1f} routed (metrics.json)")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from sapt.diagnose import diagnose, render

    rows = diagnose(Path(args.run))
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sapt.api import PER_TASK_REFUSAL, MissingDefinitionWarning, load
    from sapt.distributed import get_dist

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    trained = load(args.run)
    if trained.method.needs_task_id:
        raise ConfigError(PER_TASK_REFUSAL)
    if args.merge and trained.model.sharded:
        raise ConfigError("--merge needs whole base weights; it cannot be used under FSDP")
    with warnings.catch_warnings(record=True) as caught:  # one line each, not warnings' file:line and source
        warnings.simplefilter("always", MissingDefinitionWarning)
        answers = trained.predict(args.text, definition=args.definition, max_new_tokens=args.max_new_tokens,
                                  merge=args.merge)
    for w in caught:
        if not issubclass(w.category, MissingDefinitionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif get_dist().is_main:
            print(f"sapt: warning: {w.message}", file=sys.stderr)
    if not get_dist().is_main:  # under accelerate launch every process answers (in step under FSDP); one prints
        return 0
    for answer in answers:
        if answer.routing is None:  # fixed mixing weights: nothing to report per input
            print(json.dumps({"input": answer.input, "answer": answer.text, "routing": None}, ensure_ascii=False)
                  if args.json else answer.text)
            continue
        routing = {n: round(x, 4) for n, x in answer.routing.items()}
        if args.json:
            print(json.dumps({"input": answer.input, "answer": answer.text, "routing": routing}, ensure_ascii=False))
        else:
            print(f"{answer.text}\n  routing: " + ", ".join(f"{n} {x:.3f}" for n, x in routing.items())
                  + f"  (top: {max(routing, key=routing.get)})")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from sapt.train import learn

    print(learn(args.run, args.task).table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sapt.evaluation.report import render_definitions
    from sapt.rundir import task_definitions
    from sapt.rundir.results import read_metrics
    from sapt.train import render

    metrics = read_metrics(args.run)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print("\n".join([render(metrics), *render_definitions(task_definitions(args.run))]))
    if not args.no_plots:
        from sapt.evaluation.plots import DPI, plot_run

        try:
            plots = plot_run(args.run, formats=args.formats or ("png",), dpi=args.dpi or DPI)  # messages on stderr
        except OSError as e:  # e.g. a read-only run directory: the table is what was asked for
            print(f"sapt: plots not written ({e.filename or args.run}: {e.strerror or e}); "
                  "--no-plots skips them", file=sys.stderr)
            return 0
        print(f"sapt: plots written to {Path(args.run) / 'plots'}: " + ", ".join(p.name for p in plots.written),
              file=sys.stderr)  # stdout stays the table (or JSON)
        for name, why in plots.skipped.items():
            print(f"sapt: {name} not drawn: {why}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from sapt.evaluation.plots import CHART_FORMATS, DPI, chart_format, chart_paths, format_comparison, plot_compare

    fmt = chart_format(args.out)
    if fmt is None:
        raise ConfigError(f"--out {args.out}: sapt writes a chart as {', '.join('.' + f for f in CHART_FORMATS)} "
                          f"(the suffix picks the format), not {Path(args.out).suffix}")
    if args.formats and Path(args.out).suffix and fmt not in args.formats:  # which one did the user mean?
        raise ConfigError(f"--out {args.out}: its suffix asks for {fmt}, --format for {','.join(args.formats)}; "
                          "give --out without a suffix, or with one of --format's")
    parent = Path(args.out).absolute().parent
    if not parent.is_dir():  # a typo in --out should not scatter new folders around
        why = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"--out {args.out}: folder {parent} {why}")
    folders = [path for path, _ in chart_paths(args.out, args.formats) if path.is_dir()]
    if folders:  # said here: the write would fail on its temporary file's name
        raise ConfigError(f"--out {args.out}: {folders[0]} is a folder; give the chart's file name, such as "
                          f"{Path(args.out) / 'compare.png'}")
    comparison = plot_compare(args.runs, args.out, args.formats, args.dpi or DPI)
    print(format_comparison(comparison))
    print(f"sapt: chart written to {', '.join(str(f) for f in comparison.files)}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from sapt.export import check_hub_repo, export_run, push_to_hub

    if args.out is None and args.push_to_hub is None:
        raise ConfigError("export needs --out DIR, --push-to-hub REPO, or both")
    if args.private and args.push_to_hub is None:
        raise ConfigError("--private is for --push-to-hub")
    if args.push_to_hub is not None:
        check_hub_repo(args.push_to_hub)  # a malformed id is refused before any work
    with tempfile.TemporaryDirectory(prefix="sapt-export-") as tmp:
        out = Path(args.out) if args.out is not None else Path(tmp) / "export"
        info = export_run(args.run, out, force=args.force)
        if args.out is not None:
            for task in info["tasks"]:
                print(f"{task:30s} {out / task}")
            print(f"router ({len(info['tasks'])} keys, d_model {info['d_model']}, hidden {info['hidden']}): "
                  f"{out / 'router.safetensors'}, {out / 'router.json'}")
            print(f"load one task: peft.PeftModel.from_pretrained(base_model, {str(out / info['tasks'][0])!r})")
            print(f"load the routed model: sapt.load({str(out)!r}), or sapt predict --run {out} TEXT")
        if args.push_to_hub is not None:
            url = push_to_hub(out, args.push_to_hub, private=args.private)
            print(f"pushed to {url}; load it with sapt.load({args.push_to_hub!r})")
    return 0


def cmd_fetch_benchmark(args: argparse.Namespace) -> int:
    from sapt.fetch import DEFAULT_MAX_BYTES, DEFAULT_URL, fetch_benchmark

    summary = fetch_benchmark(args.dest, args.url or DEFAULT_URL, force=args.force,
                              max_bytes=DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes)
    print(summary.render())
    return 0


COMMANDS = {"learn": cmd_learn, "run": cmd_run, "eval": cmd_eval, "diagnose": cmd_diagnose, "predict": cmd_predict, "report": cmd_report,
            "compare": cmd_compare, "export": cmd_export, "fetch-benchmark": cmd_fetch_benchmark}


INTERRUPTED = "sapt: interrupted; run the same command again to resume"


def main(argv: Sequence[str] | None = None) -> int:
    """`sapt ARGS`: the exit code. A Ctrl-C is one line and exit code 130 wherever it lands: also in the
    first second, while torch and the command's modules are imported, before `_main`'s own `try:` (there
    it printed a 40-line traceback of the import machinery)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `sapt` alone runs the demo, like `make demo`
    undecodable = next((a for a in argv if not _is_utf8(a)), None)
    if undecodable is not None:  # bytes the locale could not decode: tokenizers and files want text
        print(f"sapt: error: argument {argv.index(undecodable) + 1} is not valid UTF-8 "
              f"({undecodable.encode('utf-8', 'backslashreplace').decode()})", file=sys.stderr)
        return 2
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error, already printed on one line (2)
        return e.code if isinstance(e.code, int) else 2
    if unknown:  # a mistyped option: named, with the closest one
        print(unknown_option_message(parser, args.command, unknown), file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    from sapt.data import DataError
    from sapt.distributed import DistributedError
    from sapt.models import ModelLoadError
    from sapt.train import TrainingError

    try:
        code = COMMANDS[args.command](args)
        from sapt.distributed import finish

        finish()  # several processes (accelerate launch): they end together
        return code
    except (SaptError, DataError, DistributedError, ModelLoadError, TrainingError, ValueError) as e:
        print(f"sapt: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (a full disk, a read-only folder, a folder for a file)
        print(f"sapt: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def _is_utf8(arg: str) -> bool:
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the bytes were not UTF-8
        return False
    return True


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _os_error(e: OSError) -> str:
    from sapt.io import WriteRefused  # a full disk, a run directory deleted mid-run: their own message

    if isinstance(e, WriteRefused) or not (e.filename or e.strerror):
        return _one_line(e)
    where = f"{e.filename}: " if e.filename else ""
    hint = "; free some space and run the same command again to resume" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{where}{e.strerror or e}{hint}"


if __name__ == "__main__":
    sys.exit(main())
