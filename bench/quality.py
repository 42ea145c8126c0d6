"""Quality benchmark: several continual-learning methods on one protocol, one table.

    python bench/quality.py --protocol builtin --methods sapt,seq-lora,o-lora
    python bench/quality.py --protocol long-mini --data-dir ../shared/data/CL_Benchmark --out runs/bench
    python bench/quality.py --protocol superni-mini --set pet=prompt --set lr=3e-2 --set router_lr=1e-3 --out runs/prompt

Without --methods, every method made for the protocol's block kind runs (`default_methods`): the LoRA
methods by default, the prompt ones (seq-prompt, progprompt, and the others on prompt blocks) with
`--set pet=prompt`.

Each protocol fixes model, tasks, order, subset sizes, epochs, lr and seed; every method runs through
the same loop (`sapt.train.run`) into its own run directory (resumable: rerunning skips finished stages).
The table gives AP, F.Ra, FWT (from the per-task run when it is among the methods), BWT, final routing
accuracy (routed methods only) and wall time. Evaluation uses test.json where a task has one, else a
held-out part of train.json; the table says which.

sapt-hard trains exactly as sapt (it differs only in evaluating with the top-1 block; on the built-in
suite the two runs' adapters, routers and replay inputs are bit-identical). So when the sapt run of the
protocol is complete, sapt-hard starts from a copy of its trained stages and only evaluates them; its
time in the table is then the evaluation alone (marked "eval only").
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sapt import io  # noqa: E402
from sapt.config import coerce_all, load_yaml, resolve  # noqa: E402
from sapt.methods import METHODS, make_method  # noqa: E402
from sapt.rundir.results import read_metrics_as_written, read_timing  # noqa: E402
from sapt.rundir.stage_files import copy_trained_stages  # noqa: E402
from sapt.train import run  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "CL_Benchmark"
# methods whose training is another method's, bit for bit (the method's `trained_as`)
TRAINED_AS = {name: m.trained_as for name, m in METHODS.items() if m.trained_as}

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Each protocol is a YAML file of config keys (one copy: `sapt run --config FILE` runs the same protocol);
# the data folder is --data-dir's, whatever the file says.
# A new protocol is a new file configs/bench/<name>.yaml.
PROTOCOLS = {
    "long-mini": CONFIGS / "cpu-long-mini.yaml",
    **{path.stem: path for path in sorted((CONFIGS / "bench").glob("*.yaml"))},
}


def load_protocol(name: str) -> dict:
    """The config keys of protocol `name` (PROTOCOLS), checked as a --config file is; without data_dir."""
    protocol = coerce_all(load_yaml(PROTOCOLS[name]), source=str(PROTOCOLS[name]))
    protocol.pop("data_dir", None)
    return protocol


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="builtin")
    p.add_argument("--methods", help="comma-separated; default every method made for the protocol's block kind "
                                     "(pet: lora unless --set pet=prompt); none: only the --variant rows")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="runs/bench", help="run directories go to OUT/<protocol>/<method>")
    p.add_argument("--model", help="override the protocol's model (e.g. tiny-llama for a smoke test)")
    p.add_argument("--max-train-per-task", type=int, help="override the protocol's training subset")
    p.add_argument("--max-eval-per-task", type=int, help="override the protocol's evaluation subset")
    p.add_argument("--epochs", type=int, help="override the protocol's epochs")
    p.add_argument("--seed", type=int, help="override the protocol's seed (use another --out)")
    p.add_argument("--seeds", help="comma-separated seeds: one run directory per seed and method "
                                   "(OUT/<protocol>/seed<S>/<method>), then mean and spread over seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key of the protocol (YAML value, e.g. --set pseudo_steps=8); repeatable")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE...]",
                   help="one more row, LABEL, run into OUT/<protocol>/[seed<S>/]LABEL with these config keys over the "
                        "protocol (method: sapt unless a key names it), e.g. sapt-joint:router_schedule=joint; "
                        "repeatable")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)

    protocol = load_protocol(args.protocol)
    if args.protocol != "builtin":
        protocol["data_dir"] = args.data_dir
    for key in ("model", "max_train_per_task", "max_eval_per_task", "epochs", "seed"):
        if getattr(args, key) is not None:
            protocol[key] = getattr(args, key)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item}: expected KEY=VALUE")
        protocol[key.strip().replace("-", "_")] = yaml.safe_load(value)
    methods = ([m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none"]
               if args.methods else default_methods(protocol.get("pet", "lora")))  # none: the --variant rows only
    # per-task first: its diagonal is the single-task reference that FWT of the others needs
    methods.sort(key=lambda m: m != "per-task")
    try:
        methods += [parse_variant(v) for v in args.variant]
    except ValueError as e:
        p.error(str(e))

    if args.seeds:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        per_seed = {seed: run_methods({**protocol, "seed": seed}, methods, Path(args.out) / args.protocol / f"seed{seed}")
                    for seed in seeds}
        for seed, rows in per_seed.items():
            print(format_rows(f"{args.protocol}, seed {seed}", rows) + "\n")
        print(format_seeds(args.protocol, per_seed))
        if args.json:
            print(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2))
        return 0
    rows = run_methods(protocol, methods, Path(args.out) / args.protocol)
    print(format_rows(args.protocol, rows))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def default_methods(pet: str) -> list[str]:
    """Every registered method that runs on blocks of kind `pet` and is not made for another kind: on LoRA
    blocks, not seq-prompt and progprompt (which would bring prompt blocks at a learning rate set for
    LoRA); on prompt blocks, not o-lora (which refuses them)."""
    return [name for name, m in METHODS.items()
            if m.pet in (None, pet) and make_method(name).refuses_pet(pet) is None]


def parse_variant(text: str) -> tuple[str, dict]:
    """"LABEL:key=value,key=value" -> (LABEL, {key: value}); the method is sapt unless a key names it."""
    label, sep, body = text.partition(":")
    if not sep or not label.strip():
        raise ValueError(f"--variant {text}: expected LABEL:KEY=VALUE[,KEY=VALUE...]")
    keys = {"method": "sapt"}
    for item in filter(None, (x.strip() for x in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {text}: {item!r} is not KEY=VALUE")
        keys[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return label.strip(), keys


def run_methods(protocol: dict, methods: list, root: Path) -> list[dict]:
    """Each method (a name, or a (label, config keys) variant) of the protocol into root/<method or label>
    (resumed where done); one table row per method."""
    rows = []
    reference = None
    for entry in methods:
        method, keys = (entry, {"method": entry}) if isinstance(entry, str) else entry
        out = root / method
        if method in TRAINED_AS:
            seed_from_trained(root / TRAINED_AS[method], out, method)
        shared = (out / "trained_as.json").exists()
        overrides = {**protocol, **keys, "output": str(out)}
        if reference is not None and method != "per-task":
            overrides["reference"] = str(reference)
        work_before = _work_seconds(out)
        t0 = time.time()
        metrics = run(resolve(overrides)).metrics
        if METHODS[overrides["method"]].routed and "oracle_routed" not in metrics:
            metrics = oracle_routing(out)
        idle = work_before is not None and _work_seconds(out) == work_before  # re-tabled: nothing trained or scored
        seconds = _add_wall_time(out, 0.0 if idle else time.time() - t0)
        if method == "per-task":
            reference = out
        routing = metrics.get("routing_accuracy") or []
        last_routing = routing[-1] if routing and routing[-1] and all(x is not None for x in routing[-1]) else None
        matrix = metrics["matrix"]
        diagonal = [matrix[j][j] for j in range(len(matrix))] if len(matrix) > 1 else None
        rows.append({
            "method": method, "ap": metrics["ap"], "fra": metrics["fra"], "fwt": metrics["fwt"], "bwt": metrics["bwt"],
            "diagonal": sum(diagonal) / len(diagonal) if diagonal else None,
            "routing": sum(last_routing) / len(last_routing) if last_routing else None,
            # each new task's routing after its own stage; the lowest (starvation shows here)
            "new_routing_min": min(routing[j][j] for j in range(len(routing))) if routing and all(
                routing[j][j] is not None for j in range(len(routing))) else None,
            "routing_loss": (metrics.get("oracle_routed") or {}).get("routing_loss"),
            "seconds": round(seconds, 1), "eval_split": metrics["eval_split"], "run": str(out), "eval_only": shared,
        })
        if "unseen" in metrics:  # the protocol sets `unseen`: the mean unseen score after the last stage
            rows[-1]["unseen"] = unseen_mean(metrics)
        print(f"[{method}] AP {metrics['ap']:.1f} ({seconds:.0f}s)", file=sys.stderr, flush=True)
    return rows


def oracle_routing(run_dir: Path) -> dict:
    """`sapt eval --run RUN --routing oracle` (each task by its own block alone), which adds the routing loss
    to metrics.json; returns the new metrics.json. Its seconds count as evaluation in the wall time."""
    from sapt.cli import main as sapt_main

    if sapt_main(["eval", "--run", str(run_dir), "--routing", "oracle"]) != 0:
        raise SystemExit(f"{run_dir}: the oracle-routed evaluation failed")
    return read_metrics_as_written(run_dir)


def seed_from_trained(src: Path, dst: Path, method: str) -> bool:
    """Start `dst` as a copy of the finished run `src`'s trained stages (trained and replay phases; no
    evaluation), relabelled as `method`, so that running it only evaluates. Nothing happens (False) if
    `dst` exists or `src` is not finished."""
    done = None if dst.exists() else read_metrics_as_written(src)
    if done is None:
        return False
    if done["stages_done"] < len(done["tasks"]):
        return False
    tmp = dst.with_name(dst.name + ".seeding")
    shutil.rmtree(tmp, ignore_errors=True)
    copy_trained_stages(src, tmp, method, str(dst), also_ignore=("trackers", "bench_time.json"))
    io.write_json(tmp / "trained_as.json", {"method": TRAINED_AS[method], "run": str(src)})
    tmp.rename(dst)
    return True


def unseen_mean(metrics: dict) -> float | None:
    """The mean score of the unseen tasks (--unseen) after the last stage; None before it, or where the
    method scores none (per-task)."""
    unseen = metrics["unseen"]
    if not unseen["matrix"] or len(unseen["matrix"]) < len(metrics["matrix"]) or \
            metrics["stages_done"] < len(metrics["matrix"]):
        return None
    values = [v for v in unseen["matrix"][-1] if v is not None]
    return sum(values) / len(values) if values else None


def _work_seconds(run_dir: Path) -> float | None:
    """The run's own seconds of training, reflection and evaluation so far (RUN_DIR/timing.json); None
    before it has any."""
    timing = read_timing(run_dir)
    return timing["total_s"] if timing is not None else None


def _add_wall_time(run_dir: Path, seconds: float) -> float:
    """Wall time of a run over all the invocations that worked on it (a resumed or re-scored run adds
    its model load and scoring; an invocation that found it finished and did nothing adds nothing), kept
    in RUN_DIR/bench_time.json so the table survives a resume."""
    path = run_dir / "bench_time.json"
    total = seconds + (io.read_json(path)["seconds"] if path.exists() else 0.0)
    io.write_json(path, {"seconds": round(total, 1)})
    return total


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def format_rows(protocol: str, rows: list[dict]) -> str:
    """The table; an "unseen" column (mean unseen score after the last stage) when the protocol sets `unseen`."""
    unseen = any("unseen" in r for r in rows)
    lines = [f"protocol {protocol} (evaluation split: {', '.join(sorted({r['eval_split'] for r in rows}))})",
             f"{'method':10s} {'AP':>6s} {'F.Ra':>6s} {'FWT':>6s} {'BWT':>6s} {'diag':>6s} {'route%':>7s}"
             f" {'new%min':>7s} {'r.loss':>6s}" + (f" {'unseen':>6s}" if unseen else "") + f" {'time':>7s}"]
    for r in rows:
        lines.append(f"{r['method']:10s} {_f(r['ap']):>6s} {_f(r['fra']):>6s} {_f(r['fwt']):>6s} {_f(r['bwt']):>6s} "
                     f"{_f(r.get('diagonal')):>6s} {_f(r['routing']):>7s} {_f(r.get('new_routing_min')):>7s}"
                     f" {_f(r.get('routing_loss')):>6s}"
                     + (f" {_f(r.get('unseen')):>6s}" if unseen else "") + f" {r['seconds']:>6.0f}s"
                     + (" (eval only)" if r.get("eval_only") else ""))
    return "\n".join(lines)


def _spread(values: list[float | None]) -> str:
    """mean +- sample standard deviation [min, max] over seeds; n/a if any seed lacks the value."""
    if not values or any(v is None for v in values):
        return "n/a"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} +- {sd:.1f} [{min(values):.1f}, {max(values):.1f}]"


def format_seeds(protocol: str, per_seed: dict[int, list[dict]]) -> str:
    """Per method: AP, BWT, FWT and the diagonal's mean over the seeds with their spread; then SAPT's
    paired difference in AP (and diagonal) to each other method, seed by seed."""
    seeds = sorted(per_seed)
    by_method: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        for r in per_seed[seed]:
            by_method.setdefault(r["method"], {})[seed] = r
    lines = [f"protocol {protocol}, seeds {', '.join(map(str, seeds))}: mean +- sd [min, max]",
             f"{'method':10s} {'AP':>28s} {'BWT':>28s} {'FWT':>28s} {'diagonal':>28s} {'new-task routing, min':>28s}"
             f" {'routing loss':>28s}"]
    keys = ("ap", "bwt", "fwt", "diagonal", "new_routing_min", "routing_loss")
    for method, runs in by_method.items():
        cols = [_spread([runs[s].get(k) if s in runs else None for s in seeds]) for k in keys]
        lines.append(f"{method:10s} " + " ".join(f"{c:>28s}" for c in cols))
    if "sapt" in by_method:
        lines.append("")
        lines.append("sapt minus each method, paired by seed")
        lines.append(f"{'method':10s} {'AP':>28s} {'diagonal':>28s}")
        sapt = by_method["sapt"]
        for method, runs in by_method.items():
            if method == "sapt":
                continue
            diffs = {k: [sapt[s][k] - runs[s][k] if s in sapt and s in runs and sapt[s][k] is not None
                         and runs[s][k] is not None else None for s in seeds] for k in ("ap", "diagonal")}
            lines.append(f"{method:10s} {_spread(diffs['ap']):>28s} {_spread(diffs['diagonal']):>28s}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
