"""Re-fit the router of a finished learn-then-route run under other fit settings, without training a block.

    python bench/router_refit.py --run RUN [--steps 300,100] [--kl-weight 1,4] [--fit mlp+key,key]

With `router_schedule: learn-then-route` a stage's block never depends on the router (it trains alone), so
the router of every stage can be fitted again from the run's own files: stage 1's router (query MLP, key 0,
centre), each task's training and validation prompts, and each stage's reflection inputs (replay.jsonl).
Each variant replays the run's stages in order (new key drawn as the run drew it, centre updated, fit,
routing target taken on the task's validation prompts) and reports, after the last stage, the share of
each task's evaluation inputs routed to its own block, in seconds per variant: the router reads only
max-pooled token embeddings. Use it on a run's validation-carved evaluation data (as the CPU protocols'
is), never to choose on a test split.

Variants: `--steps` (router_fit_steps), `--kl-weight` (a multiplier on the run's `router_fit_kl`, the reflection
KL's weight in the fit: 1 is the run's),
`--fit` (mlp+key: the query MLP and key t, as the run; key: key t alone, the query MLP frozen after stage 1),
`--replay` (pseudo: each stage's own replay.jsonl, as the run; pseudo:N: the first N of them, to see what
the count does with the same generator; real:N: N real training inputs of each task
instead, a seeded draw. Real inputs are not what SAPT keeps, so this is a diagnostic: it tells whether
an old task's routing is lost for want of replay inputs, or of replay inputs that look like the task's).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sapt import io  # noqa: E402
from sapt.evaluation.generation import encode_task_split  # noqa: E402
from sapt.reflection import ReplaySet, encode_replay, real_replay_inputs, routing_target  # noqa: E402
from sapt.router_fit import fit_router, pooled_prompts  # noqa: E402
from sapt.router_setup import update_centre  # noqa: E402
from sapt.rundir import trained_stages  # noqa: E402
from sapt.stage_trainer import stage_seed  # noqa: E402
from sapt.train import load_run_config, load_run_tasks, load_trained  # noqa: E402


def refit(model, cfg, tasks, stages, replay_inputs, steps: int, kl_weight: float, fit: str) -> list[float]:
    """The run's stages again with these fit settings; % of each task's evaluation inputs routed to its block."""
    router = model.router
    all_keys = list(router.keys)
    first = io.load_tensors(stages[0][1] / "router.safetensors")
    model.load_router(0, first)
    lengths = (cfg.max_source_length, cfg.max_target_length)
    replay: list[ReplaySet] = []
    for t, task in enumerate(tasks):
        router.keys = nn.ParameterList(all_keys[: t + 1])
        if t > 0:
            torch.manual_seed(stage_seed(cfg.seed, t))  # a fresh uniform key (not the run's draw: the block's came first)
            with torch.no_grad():
                router.keys[t].uniform_(-1.0, 1.0)
            if cfg.router_centre:
                update_centre(model, task, t, cfg.decoding)  # as SAPT.prepare_stage does before the stage trains
            train = encode_task_split(model, task, "train", *lengths)
            model.requires_grad_(False)
            router.keys[t].requires_grad_(True)
            router.query_mlp.requires_grad_(fit == "mlp+key")
            fit_router(model, t, train, encode_task_split(model, task, "val", *lengths), replay,
                       kl_weight * cfg.router_fit_kl, steps=steps, lr=cfg.router_lr or cfg.lr,
                       batch_size=cfg.batch_size, seed=stage_seed(cfg.seed, t), eval_batch_size=cfg.eval_batch_size)
        target = routing_target(model, encode_task_split(model, task, "val", *lengths), cfg.eval_batch_size)
        replay.append(ReplaySet(task.name, target, encode_replay(model, task.definition, replay_inputs[t],
                                                                 cfg.max_source_length)))
    shares = []
    for t, task in enumerate(tasks):
        x = pooled_prompts(model, encode_task_split(model, task, "eval", *lengths), cfg.eval_batch_size)
        with torch.no_grad():
            shares.append(round(100.0 * float((router.logits(x).argmax(-1) == t).float().mean()), 1))
    router.keys = nn.ParameterList(all_keys)
    return shares


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished sapt run with router_schedule: learn-then-route")
    p.add_argument("--steps", default="300", help="comma-separated router_fit_steps")
    p.add_argument("--kl-weight", default="1", help="comma-separated multipliers of the reflection KL in the fit")
    p.add_argument("--fit", default="mlp+key", help="comma-separated: mlp+key (as the run), key (key t alone)")
    p.add_argument("--replay", default="pseudo",
                   help="comma-separated: pseudo (the run's replay.jsonl), pseudo:N (its first N a task), "
                        "real:N (N real training inputs a task)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_run_config(args.run)
    if cfg.router_schedule != "learn-then-route":
        p.error(f"{args.run}: router_schedule is {cfg.router_schedule}; only a learn-then-route run's blocks do "
                "not depend on its router")
    cfg, model, names = load_trained(args.run, cfg)
    tasks = load_run_tasks(cfg)[: len(names)]
    stages = trained_stages(args.run)
    pseudo = [[json.loads(line)["input"] for line in (sdir / "replay.jsonl").read_text().splitlines() if line]
              for _, sdir in stages]
    print(f"{'steps':>6} {'kl x':>5} {'fit':>8} {'replay':>9}  " + " ".join(f"{t.name[:8]:>8}" for t in tasks)
          + "     mean")
    for steps, kl, fit, replay in itertools.product([int(s) for s in args.steps.split(",")],
                                                    [float(k) for k in args.kl_weight.split(",")],
                                                    args.fit.split(","), args.replay.split(",")):
        if replay == "pseudo":
            replay_inputs = pseudo
        elif replay.startswith("pseudo:") and replay[7:].isdigit() and int(replay[7:]) > 0:
            replay_inputs = [inputs[: int(replay[7:])] for inputs in pseudo]
        elif replay.startswith("real:") and replay[5:].isdigit() and int(replay[5:]) > 0:
            replay_inputs = [real_replay_inputs(task, int(replay[5:]), cfg.seed) for task in tasks]
        else:
            p.error(f"--replay {replay!r}: expected pseudo, pseudo:N or real:N with N >= 1")
        shares = refit(model, cfg, tasks, stages, replay_inputs, steps, kl, fit)
        print(f"{steps:>6} {kl:>5g} {fit:>8} {replay:>9}  " + " ".join(f"{s:>8.1f}" for s in shares)
              + f" {sum(shares) / len(shares):>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
