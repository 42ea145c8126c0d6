"""Gradient clipping (`max_grad_norm`, sapt.stage_trainer.StageTrainer.clip_gradients): a bound below the
step's total gradient norm changes what the blocks and the router learn; a bound above it changes nothing, bit
for bit; 0 is off; a negative bound is refused."""
import json
from functools import partial

import pytest
from conftest import tiny_config

from sapt import io
from sapt.cli import main
from sapt.config import ConfigError
from sapt.train import run

# two tasks, so that stage 2 trains the router with the reflection KL (the joint schedule: with learn-then-route
# the router does not train in a stage's steps); 2 optimiser steps per epoch
cfg_of = partial(tiny_config, tasks=["topic", "sentiment"], epochs=2, batch_size=4, lr=1e-2,
                 reflection_source="real", max_new_tokens=2, router_schedule="joint")


def trained_bytes(out):
    return {f"{s.name}/{name}": (s / name).read_bytes() for s in sorted((out / "stages").iterdir())
            for name in ("adapter.safetensors", "router.safetensors")}


def grad_norms(out):
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    return [r["grad_norm"] for r in rows if "grad_norm" in r]


@pytest.fixture(scope="module")
def unclipped(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "off"
    run(cfg_of(out))
    return out


def test_off_by_default_and_nothing_logged(unclipped):
    assert io.read_json(unclipped / "stages" / "00_topic" / "stage.json")["steps"] == 4
    assert grad_norms(unclipped) == []  # max_grad_norm 0: no clipping, no norm computed


def test_a_bound_above_every_norm_changes_nothing(unclipped, tmp_path):
    out = tmp_path / "loose"
    run(cfg_of(out, max_grad_norm=1e6))
    norms = grad_norms(out)
    assert len(norms) == 8 and all(0 < n < 1e6 for n in norms)  # one per optimiser step, all below the bound
    assert trained_bytes(out) == trained_bytes(unclipped)
    assert (out / "metrics.json").read_bytes() == (unclipped / "metrics.json").read_bytes()


def test_a_bound_below_the_norm_changes_the_blocks_and_the_router(unclipped, tmp_path):
    out = tmp_path / "tight"
    run(cfg_of(out, max_grad_norm=1e-3))
    norms = grad_norms(out)
    assert len(norms) == 8 and all(n > 1e-3 for n in norms)  # every step was clipped
    got, ref = trained_bytes(out), trained_bytes(unclipped)
    assert got.keys() == ref.keys()
    for name in ("00_topic/adapter.safetensors", "01_sentiment/adapter.safetensors", "01_sentiment/router.safetensors"):
        assert got[name] != ref[name], name


def test_the_norm_is_taken_over_blocks_and_router_after_the_warm_up_drops_the_router(tmp_path):
    """The step's norm covers every trainable gradient (block and router, where the KL's gradient lands), after
    the averaging and after the warm-up has set the router's gradients to None: during the warm-up it is the
    block's norm alone, afterwards the block's and the router's together."""
    import math

    import torch

    from sapt.methods import make_method
    from sapt.stage_trainer import StageTrainer
    from sapt.train import build_model, load_run_tasks, stage_sections

    cfg = cfg_of(tmp_path / "unused", max_grad_norm=1.0)
    tasks = load_run_tasks(cfg)
    model, method = build_model(cfg), make_method("sapt", cfg.method_options)
    for t, task in enumerate(tasks):
        method.add_stage(model, t, task.name)
    trainer = StageTrainer(model, tasks[1], 1, stage_sections(cfg), method)
    trainer.trackers = None  # what `run` sets before the first step
    router_ids = {id(p) for p in trainer.router}
    n_router = sum(p.numel() for p in trainer.router)
    n_block = sum(p.numel() for p in trainer.params if id(p) not in router_ids)
    assert n_router and n_block
    trainer.warmup = 5
    for steps, expected in ((0, math.sqrt(n_block)), (5, math.sqrt(n_block + n_router))):
        trainer.steps = steps
        for p in trainer.params:
            p.grad = torch.ones_like(p)
        record = {"loss": 0.0}
        trainer.optimiser_step(record)
        assert record["grad_norm"] == pytest.approx(expected, rel=1e-5)


def test_a_negative_bound_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="max_grad_norm"):
        cfg_of(tmp_path / "x", max_grad_norm=-1.0)
    out = tmp_path / "cli"
    assert main(["run", "--model", "tiny-llama", "--max-grad-norm", "-0.5", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_grad_norm must be >= 0" in err[0]
    assert not out.exists()
