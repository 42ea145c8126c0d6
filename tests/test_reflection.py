"""Attentive reflection: the KL term, where its gradient goes, and that it keeps old tasks routed."""
import json
from functools import partial

import pytest
import torch
from conftest import tiny_config

from sapt import train as train_mod
from sapt.data import builtin_suite
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel
from sapt.reflection import Reflection, ReplaySet, encode_replay, kl_to_target, replay_count
from sapt.train import run


def test_kl_is_zero_at_the_target_and_positive_elsewhere():
    target = torch.tensor([0.7, 0.2, 0.1])
    assert kl_to_target(target.log().unsqueeze(0), target).item() == pytest.approx(0.0, abs=1e-7)
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    # KL(t || uniform) = sum t log(t / (1/3)), by hand
    expected = sum(p * torch.log(p * 3) for p in target).item()
    assert kl_to_target(logits, target).item() == pytest.approx(expected, rel=1e-5)
    padded = torch.tensor([1.0, 0.0])  # a zero-padded target: entries at 0 add nothing, no NaN
    value = kl_to_target(torch.tensor([[2.0, 0.0]]), padded)
    assert torch.isfinite(value) and value.item() == pytest.approx(-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0].item())


def test_replay_count_is_a_ratio_of_the_training_size_at_least_one_at_most_max():
    assert replay_count(1000, 0.02, 50) == 20
    assert replay_count(10, 0.02, 50) == 1
    assert replay_count(10_000, 0.02, 50) == 50


def test_reflection_gradient_reaches_only_the_query_mlp_and_the_current_key():
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    tasks = builtin_suite(seed=0, n_train=8, n_val=2, n_eval=2)
    for t in tasks[:3]:
        model.add_task(t.name)  # training task 3 now: block 2, key 2 and the query MLP are trainable
    sets = [ReplaySet(t.name, [1.0] if i == 0 else [0.3, 0.7], encode_replay(model, t.definition, [e.input for e in t.train[:4]], 128))
            for i, t in enumerate(tasks[:2])]
    loss = Reflection(sets, kl_ratio=1.0, batch_size=4, seed=0).loss(model)
    assert loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["router.keys.2"] is not None and grads["router.keys.2"].abs().sum() > 0
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith("router.query_mlp.") and "weight" in n)
    others = [n for n, g in grads.items() if g is not None and not (n.startswith("router.query_mlp.") or n == "router.keys.2")]
    assert others == []  # no old key, no LoRA block, no backbone weight


cfg3 = partial(tiny_config, epochs=3, max_train_per_task=24, max_eval_per_task=12, max_new_tokens=2, lr=3e-2,
               router_lr=3e-2, lora_r=4, tasks=["topic", "sentiment", "addition"], reflection_source="real",
               pseudo_ratio=0.25)


def test_reflection_keeps_task_one_routed_to_its_block_better_than_no_reflection(tmp_path):
    with_arm = run(cfg3(tmp_path / "arm")).metrics["routing_accuracy"]
    without = run(cfg3(tmp_path / "noarm", reflection=False)).metrics["routing_accuracy"]
    # routing accuracy (%) on task 1 after task 3; the same seed, data and schedule otherwise
    assert with_arm[2][0] >= without[2][0] + 30, (with_arm, without)


def test_replay_inputs_are_written_reloaded_on_resume_and_hold_no_answers(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = cfg3(out, tasks=["topic", "sentiment"], epochs=1)
    run(cfg)
    tasks = {t.name: t for t in builtin_suite(seed=cfg.seed)}
    for i, name in enumerate(["topic", "sentiment"]):
        sdir = out / "stages" / f"{i:02d}_{name}"
        rows = [json.loads(l) for l in (sdir / "replay.jsonl").read_text().splitlines()]
        assert len(rows) == replay_count(24, 0.25, cfg.pseudo_max)
        outputs = {o for ex in tasks[name].train for o in ex.outputs}
        for r in rows:
            assert set(r) == {"task", "definition", "input"}
            assert r["input"] not in outputs
        assert json.loads((sdir / "stage.json").read_text())["routing_target"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("replay*")}

    def must_not_run(*a, **k):
        raise AssertionError("replay inputs regenerated on resume")

    monkeypatch.setattr(train_mod, "make_replay_inputs", must_not_run)
    (out / "stages" / "01_sentiment" / "scores.json").unlink()  # force the resumed run to do some work
    run(cfg)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("replay*")} == stamps
