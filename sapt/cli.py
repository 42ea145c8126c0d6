"""`sapt run | eval | predict | report`. Errors are one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import errno
import json
import math
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from sapt.config import BACKBONE_DTYPES, FIELDS, PRECISIONS, ROUTER_KEY_INITS, ConfigError


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of task names")
    return items


def _num(value: str) -> float:
    x = float(value)
    return int(x) if math.isfinite(x) and x >= 1 and x == int(x) else x  # the config refuses inf and nan


RUN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--output", dict(help="run directory (default runs/demo)")),
    ("--model", dict(help="hub id or local path of a T5 or LLaMA-family model, or smollm2 (default), tiny-t5, tiny-llama")),
    ("--method", dict(help="sapt (default), sapt-hard, seq-lora, inc-lora, o-lora, replay, per-task or mtl")),
    ("--reference", dict(help="run directory of a per-task run of the same tasks: fills in FWT")),
    ("--olora-lambda1", dict(type=float, help="o-lora: weight of the orthogonality loss (default 0.5)")),
    ("--olora-lambda2", dict(type=float, help="o-lora: weight of the L2 term (default 0)")),
    ("--replay-memory", dict(type=int, help="replay: real examples stored per old task (default 10)")),
    ("--data-dir", dict(help="folder holding <benchmark>/<task>/train.json; omit for the built-in suite")),
    ("--benchmark", dict(help="benchmark folder under --data-dir: SuperNI, Long_Sequence or your own")),
    ("--tasks", dict(type=_csv, help="comma-separated task names, in training order")),
    ("--order", dict(type=int, help="a built-in task order: SuperNI 1 or 2, Long_Sequence 4 or 6")),
    ("--val-size", dict(type=_num, help="validation carved from train: a fraction, or a count if >= 1 (default 0.1)")),
    ("--max-train-per-task", dict(type=int, help="seeded subset of each task's training examples")),
    ("--max-eval-per-task", dict(type=int, help="seeded subset of each task's evaluation examples")),
    ("--lora-r", dict(type=int, help="LoRA rank (default 4; 8 on the built-in suite)")),
    ("--lora-alpha", dict(type=float, help="LoRA alpha (default 32)")),
    ("--lora-dropout", dict(type=float, help="LoRA dropout (default 0)")),
    ("--query-hidden", dict(type=int, help="hidden width of the router's query MLP (default 100)")),
    ("--lr", dict(type=float, help="learning rate of the LoRA blocks (default 3e-4)")),
    ("--router-lr", dict(type=float, help="learning rate of the query MLP and keys (default: --lr)")),
    ("--router-warmup", dict(type=float, help="share of each later stage's steps with the router frozen while the new block starts (default 0.25; 0 = off)")),
    ("--no-router-centre", dict(dest="router_centre", action="store_false",
                                 help="do not centre the router's query on the tasks' mean pooled prompt; with "
                                      "--router-warmup 0 this is the paper's router")),
    ("--router-key-init", dict(choices=ROUTER_KEY_INITS, help="a new task's router key: random (default, the "
                                                                 "paper) or task: routed to its block from the start")),
    ("--epochs", dict(type=int, help="epochs per task (default 3)")),
    ("--batch-size", dict(type=int, help="training batch size (default 8)")),
    ("--grad-accum", dict(type=int, help="gradient accumulation steps (default 1)")),
    ("--seed", dict(type=int, help="seed for data splits, initialisation and shuffling (default 42)")),
    ("--mixed-precision", dict(choices=PRECISIONS, help="autocast the forward passes (default no); "
                                                                   "the LoRA weights and optimiser stay float32")),
    ("--backbone-dtype", dict(choices=BACKBONE_DTYPES, help="dtype of the frozen backbone's weights (default float32; "
                                                              "bfloat16 on the built-in suite): the LoRA blocks, router and "
                                                              "optimiser stay float32")),
    ("--log-with", dict(type=_csv, help="trackers, comma-separated: jsonl (default), tensorboard, wandb; through "
                                        "accelerate, into RUN_DIR/trackers (train_log.jsonl is always written)")),
    ("--max-source-length", dict(type=int, help="prompt tokens kept, cut in the middle (default 512)")),
    ("--max-target-length", dict(type=int, help="answer tokens trained on (default 128)")),
    ("--max-new-tokens", dict(type=int, help="generation length at evaluation (default 50)")),
    ("--eval-batch-size", dict(type=int, help="evaluation batch size (default 16)")),
    ("--no-stop-at-newline", dict(dest="stop_at_newline", action="store_false",
                                   help="generate up to --max-new-tokens or EOS even for tasks whose answers are one "
                                        "line (default: such an answer ends at its first line break)")),
    ("--no-reflection", dict(dest="reflection", action="store_false", help="ablate attentive reflection (no KL replay)")),
    ("--reflection-source", dict(choices=["generated", "real"], help="replay inputs: generated pseudo samples (default) or stored real inputs")),
    ("--kl-ratio", dict(type=float, help="weight of the reflection KL (default: 1 for LLaMA-family, 0.5 SuperNI / 0.1 Long_Sequence for T5)")),
    ("--replay-every", dict(type=int, help="optimiser steps between replay batches (default 1)")),
    ("--pseudo-ratio", dict(type=float, help="replay inputs per task as a fraction of its training size (default 0.02, at least 1)")),
    ("--pseudo-max", dict(type=int, help="at most this many replay inputs per task (default 50)")),
    ("--pseudo-epochs", dict(type=int, help="epochs of the pseudo-sample generator LoRA (default 1)")),
    ("--pseudo-steps", dict(type=int, help="optimiser steps of the generator LoRA, a budget of its own "
                                           "(default: --pseudo-epochs passes over the task's inputs)")),
    ("--pseudo-lr", dict(type=float, help="learning rate of the generator LoRA (default 1e-3)")),
    ("--pseudo-r", dict(type=int, help="rank of the generator LoRA (default 8)")),
    ("--pseudo-top-k", dict(type=int, help="top-k sampling of pseudo inputs (default 20)")),
    ("--pseudo-repetition-penalty", dict(type=float, help="repetition penalty of pseudo sampling (default 2.5)")),
    ("--pseudo-max-new-tokens", dict(type=int, help="length limit of a pseudo sample (default 128)")),
    # how to treat an existing run directory (not config keys)
    ("--force-new", dict(dest="force_new", action="store_true",
                         help="if --output holds a run with another config, start a fresh OUTPUT-2 (-3, ...) next to it "
                              "instead of refusing (the same command again resumes that one)")),
    ("--allow-config-change", dict(dest="allow_config_change", metavar="KEYS",
                                   type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                                   help="resume although these keys changed: lr and/or router_lr (e.g. lowered "
                                        "after a non-finite loss); recorded in manifest.json")),
]


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): `sapt run: error: argument --lr: ...`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sapt", description="Continual learning of language models with SAPT.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="learn a sequence of tasks; with no options, the built-in demo on smollm2")
    run.add_argument("--config", help="YAML file of config keys; command-line options override it")
    for flag, kw in RUN_OPTIONS:
        run.add_argument(flag, default=argparse.SUPPRESS, **kw)

    ev = sub.add_parser("eval", help="re-score the final model of a run on all its tasks")
    ev.add_argument("--run", required=True, help="run directory")
    ev.add_argument("--data-dir", help="read the tasks from here instead of the run's data directory")
    ev.add_argument("--max-eval-per-task", type=int, help="override the run's evaluation subset size")

    pr = sub.add_parser("predict", help="answer a text with the final model, with its routing weights")
    pr.add_argument("--run", required=True, help="run directory")
    pr.add_argument("text", nargs="+", help="input text(s); the prompt template of the run's model family is applied")
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
                    help="do not write RUN_DIR/plots/ (score_matrix.png, routing_weights.png, score_curves.png)")

    cp = sub.add_parser("compare", help="AP and BWT of several runs: a table and a grouped bar chart")
    cp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    cp.add_argument("--out", default="compare.png", help="PNG file to write (default compare.png)")

    ex = sub.add_parser("export", help="write each task block as a PEFT LoRA adapter, and the router")
    ex.add_argument("--run", required=True, help="run directory")
    ex.add_argument("--out", required=True, help="output directory: OUT/<task>/ adapters, OUT/router.safetensors")
    ex.add_argument("--force", action="store_true", help="write into a non-empty directory that is not an export")

    fb = sub.add_parser("fetch-benchmark", help="download the public CL_Benchmark (SuperNI, Long_Sequence)")
    fb.add_argument("--dest", required=True, help="directory to create; use it as --data-dir")
    fb.add_argument("--url", help="zip archive holding a CL_Benchmark/ folder, http(s):// or file:// "
                                  "(default: the GitHub zip of circle-hit/SAPT at main)")
    fb.add_argument("--force", action="store_true", help="replace a non-empty DEST")
    fb.add_argument("--max-bytes", type=int, help="refuse an archive whose CL_Benchmark/ unpacks to more than "
                                                  "N bytes (default 2 GiB)")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from sapt.config import resolve
    from sapt.train import run

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    result = run(resolve(overrides, args.config), force_new=getattr(args, "force_new", False),
                 allow_changes=getattr(args, "allow_config_change", None) or ())
    if result.table:  # empty on the processes other than the main one
        print(result.table)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sapt import io
    from sapt.distributed import get_dist
    from sapt.evaluate import encode_task_split, evaluate_task
    from sapt.methods import make_method
    from sapt.train import load_run_config, load_run_tasks, load_trained

    cfg = load_run_config(args.run)
    if args.data_dir is not None:
        cfg.data_dir = args.data_dir
    if args.max_eval_per_task is not None:
        if args.max_eval_per_task < 1:
            raise ConfigError(f"--max-eval-per-task must be >= 1, got {args.max_eval_per_task}")
        cfg.max_eval_per_task = args.max_eval_per_task
    tasks = load_run_tasks(cfg)
    cfg, model, names = load_trained(args.run, cfg)
    method = make_method(cfg.method, cfg.olora_lambda1, cfg.olora_lambda2)
    if not method.joint:
        tasks = tasks[: len(names)]
    main = get_dist().is_main  # under accelerate launch every process evaluates its share; one writes
    scores = {}
    out = Path(args.run) / "eval"
    for j, task in enumerate(tasks):
        items = encode_task_split(model, task, "eval", cfg.max_source_length, cfg.max_target_length)
        score, accuracy, records = evaluate_task(model, task, items, cfg.eval_batch_size, cfg.max_new_tokens, j, method,
                                                 cfg.stop_at_newline)
        if main:
            io.write_jsonl(out / "predictions" / f"{task.name}.jsonl", records)
        scores[task.name] = {"score": score}
        line = f"{task.name:30s} {score:6.1f}"
        if accuracy is not None:
            scores[task.name]["routing_accuracy"] = accuracy
            line += f"   routing accuracy {accuracy:5.1f}"
        if main:
            print(line)
    ap = sum(s["score"] for s in scores.values()) / len(scores)
    if main:
        io.write_json(out / "scores.json", {"scores": scores, "ap": ap, "after_stage": len(names)})
        print(f"AP {ap:.1f} over {len(scores)} tasks (written to {out / 'scores.json'})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sapt.batching import encode
    from sapt.data import Example
    from sapt.distributed import get_dist
    from sapt.evaluate import predict
    from sapt.methods import make_method
    from sapt.train import load_trained

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    cfg, model, names = load_trained(args.run)
    method = make_method(cfg.method, cfg.olora_lambda1, cfg.olora_lambda2)
    if method.name == "per-task":
        raise ConfigError("a per-task run needs the true task id of each input; score it with `sapt eval`")

    def weights_fn(batch):  # None: the router's weights (sapt); fixed mixing weights for the baselines
        return method.weights(model, batch, 0, training=False)

    examples = [Example(input=t, outputs=("",)) for t in args.text]
    items = encode(model.tokenizer, model.family, args.definition, examples, cfg.max_source_length, cfg.max_target_length)
    max_new_tokens = args.max_new_tokens or cfg.max_new_tokens
    if args.merge and model.sharded:
        raise ConfigError("--merge needs whole base weights; it cannot be used under FSDP")
    if args.merge:  # one input at a time, its weighted update merged into the base weights while it generates
        import torch

        from sapt.batching import collate_prompts
        from sapt.modules.merge import merged

        model.eval()
        preds, rows = [], []
        for item in items:
            batch = collate_prompts([item], model.family, model.tokenizer.pad_token_id)
            with torch.no_grad():
                w = weights_fn(batch)
                if w is None:
                    w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
                with merged(model, w):
                    texts, _ = model.generate(batch, max_new_tokens)
            preds.append(texts[0])
            rows.append(w[0].float().cpu())
        weights = torch.stack(rows)
    else:
        preds, weights = predict(model, items, cfg.eval_batch_size, max_new_tokens, weights_fn=weights_fn)
    if not get_dist().is_main:  # under accelerate launch every process answers (in step under FSDP); one prints
        return 0
    for text, pred, w in zip(args.text, preds, weights):
        if not method.routed:  # fixed mixing weights: nothing to report per input
            print(json.dumps({"input": text, "answer": pred, "routing": None}, ensure_ascii=False) if args.json else pred)
            continue
        routing = {n: round(float(x), 4) for n, x in zip(names, w)}
        if args.json:
            print(json.dumps({"input": text, "answer": pred, "routing": routing}, ensure_ascii=False))
        else:
            top = max(routing, key=routing.get)
            print(f"{pred}\n  routing: " + ", ".join(f"{n} {x:.3f}" for n, x in routing.items()) + f"  (top: {top})")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from sapt.train import learn

    print(learn(args.run, args.task).table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sapt import io
    from sapt.metrics import metrics_problems
    from sapt.train import render

    path = Path(args.run) / "metrics.json"
    if not path.exists():
        raise ConfigError(f"{args.run}: no metrics.json (not a sapt run, or no stage evaluated yet)")
    metrics = io.read_json(path)
    problems = metrics_problems(metrics)
    if problems:
        raise ConfigError(f"{path}: not a sapt metrics file ({'; '.join(problems)})")
    print(json.dumps(metrics, indent=2) if args.json else render(metrics))
    if not args.no_plots:
        from sapt.plots import plot_run

        try:
            plots = plot_run(args.run)  # messages on stderr: stdout stays the table (or JSON)
        except OSError as e:  # e.g. a read-only run directory: the table is what was asked for
            print(f"sapt: plots not written ({e.filename or args.run}: {e.strerror or e}); "
                  "--no-plots skips them", file=sys.stderr)
            return 0
        print(f"sapt: plots written to {Path(args.run) / 'plots'}: " + ", ".join(p.name for p in plots.files.values()),
              file=sys.stderr)
        for name, why in plots.skipped.items():
            print(f"sapt: {name}.png not drawn: {why}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from sapt.plots import format_comparison, plot_compare

    parent = Path(args.out).absolute().parent
    if not parent.is_dir():  # a typo in --out should not scatter new folders around
        why = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"--out {args.out}: folder {parent} {why}")
    comparison = plot_compare(args.runs, args.out)
    print(format_comparison(comparison))
    print(f"sapt: chart written to {args.out}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sapt.export import export_run

    info = export_run(args.run, args.out, force=args.force)
    out = Path(args.out)
    for task in info["tasks"]:
        print(f"{task:30s} {out / task}")
    print(f"router ({len(info['tasks'])} keys, d_model {info['d_model']}, hidden {info['hidden']}): "
          f"{out / 'router.safetensors'}, {out / 'router.json'}")
    print(f"load one task: peft.PeftModel.from_pretrained(base_model, {str(out / info['tasks'][0])!r})")
    return 0


def cmd_fetch_benchmark(args: argparse.Namespace) -> int:
    from sapt.fetch import DEFAULT_MAX_BYTES, DEFAULT_URL, fetch_benchmark

    summary = fetch_benchmark(args.dest, args.url or DEFAULT_URL, force=args.force,
                              max_bytes=DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes)
    print(summary.render())
    return 0


COMMANDS = {"learn": cmd_learn, "run": cmd_run, "eval": cmd_eval, "predict": cmd_predict, "report": cmd_report,
            "compare": cmd_compare, "export": cmd_export, "fetch-benchmark": cmd_fetch_benchmark}


def main(argv: Sequence[str] | None = None) -> int:
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
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed on one line (2)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    from sapt.data import DataError
    from sapt.distributed import DistributedError
    from sapt.models import ModelLoadError
    from sapt.train import TrainingError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, DistributedError, ModelLoadError, TrainingError, ValueError) as e:
        print(f"sapt: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (a full disk, a read-only folder, a folder for a file)
        print(f"sapt: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sapt: interrupted; run the same command again to resume", file=sys.stderr)
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
    from sapt.io import DiskFullError

    if isinstance(e, DiskFullError) or not (e.filename or e.strerror):
        return _one_line(e)
    where = f"{e.filename}: " if e.filename else ""
    hint = "; free some space and run the same command again to resume" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{where}{e.strerror or e}{hint}"


if __name__ == "__main__":
    sys.exit(main())
