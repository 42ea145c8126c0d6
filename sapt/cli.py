"""`sapt run | eval | predict | report`. Errors are one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from sapt.config import FIELDS, ConfigError


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of task names")
    return items


def _num(value: str) -> float:
    x = float(value)
    return int(x) if x >= 1 and x == int(x) else x


RUN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--output", dict(help="run directory (default runs/demo)")),
    ("--model", dict(help="hub id or local path of a T5 or LLaMA-family model, or smollm2 (default), tiny-t5, tiny-llama")),
    ("--method", dict(help="continual-learning method (default sapt)")),
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
    ("--epochs", dict(type=int, help="epochs per task (default 3)")),
    ("--batch-size", dict(type=int, help="training batch size (default 8)")),
    ("--grad-accum", dict(type=int, help="gradient accumulation steps (default 1)")),
    ("--seed", dict(type=int, help="seed for data splits, initialisation and shuffling (default 42)")),
    ("--max-source-length", dict(type=int, help="prompt tokens kept, cut in the middle (default 512)")),
    ("--max-target-length", dict(type=int, help="answer tokens trained on (default 128)")),
    ("--max-new-tokens", dict(type=int, help="generation length at evaluation (default 50)")),
    ("--eval-batch-size", dict(type=int, help="evaluation batch size (default 16)")),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sapt", description="Continual learning of language models with SAPT.")
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

    rp = sub.add_parser("report", help="print the score matrix and metrics of a run")
    rp.add_argument("--run", required=True, help="run directory")
    rp.add_argument("--json", action="store_true", help="print metrics.json")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from sapt.config import resolve
    from sapt.train import run

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    result = run(resolve(overrides, args.config))
    print(result.table)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sapt import io
    from sapt.evaluate import encode_task_split, evaluate_task
    from sapt.train import load_run_config, load_run_tasks, load_trained

    cfg = load_run_config(args.run)
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if args.max_eval_per_task:
        cfg.max_eval_per_task = args.max_eval_per_task
    tasks = load_run_tasks(cfg)
    cfg, model, names = load_trained(args.run, cfg)
    tasks = tasks[: len(names)]
    scores = {}
    out = Path(args.run) / "eval"
    for j, task in enumerate(tasks):
        items = encode_task_split(model, task, "eval", cfg.max_source_length, cfg.max_target_length)
        score, records = evaluate_task(model, task, items, cfg.eval_batch_size, cfg.max_new_tokens, task_index=j)
        io.write_jsonl(out / "predictions" / f"{task.name}.jsonl", records)
        scores[task.name] = {"score": score, "routing_accuracy": 100.0 * sum(r["routed_to_own"] for r in records) / len(records)}
        print(f"{task.name:30s} {score:6.1f}   routing accuracy {scores[task.name]['routing_accuracy']:5.1f}")
    ap = sum(s["score"] for s in scores.values()) / len(scores)
    io.write_json(out / "scores.json", {"scores": scores, "ap": ap, "after_stage": len(names)})
    print(f"AP {ap:.1f} over {len(scores)} tasks (written to {out / 'scores.json'})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sapt.batching import encode
    from sapt.data import Example
    from sapt.evaluate import predict
    from sapt.train import load_trained

    cfg, model, names = load_trained(args.run)
    examples = [Example(input=t, outputs=("",)) for t in args.text]
    items = encode(model.tokenizer, model.family, args.definition, examples, cfg.max_source_length, cfg.max_target_length)
    preds, weights = predict(model, items, cfg.eval_batch_size, args.max_new_tokens or cfg.max_new_tokens)
    for text, pred, w in zip(args.text, preds, weights):
        routing = {n: round(float(x), 4) for n, x in zip(names, w)}
        if args.json:
            print(json.dumps({"input": text, "answer": pred, "routing": routing}, ensure_ascii=False))
        else:
            top = max(routing, key=routing.get)
            print(f"{pred}\n  routing: " + ", ".join(f"{n} {x:.3f}" for n, x in routing.items()) + f"  (top: {top})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sapt import io
    from sapt.train import render

    path = Path(args.run) / "metrics.json"
    if not path.exists():
        raise ConfigError(f"{args.run}: no metrics.json (not a sapt run, or no stage evaluated yet)")
    metrics = io.read_json(path)
    print(json.dumps(metrics, indent=2) if args.json else render(metrics))
    return 0


COMMANDS = {"run": cmd_run, "eval": cmd_eval, "predict": cmd_predict, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `sapt` alone runs the demo, like `make demo`
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from sapt.data import DataError
    from sapt.models import ModelLoadError
    from sapt.train import TrainingError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, ModelLoadError, TrainingError, ValueError) as e:
        print(f"sapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sapt: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
