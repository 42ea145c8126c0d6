"""The continual recipe on tiny models: what trains, what stays frozen, the run directory, resume."""
import json

import pytest
import torch

from sapt import io
from sapt.config import ConfigError, resolve
from sapt.data import builtin_suite
from sapt.models import load_model
from sapt.modules.sapt_model import SAPTModel
from sapt.train import load_trained, run, train_stage


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_later_stage_trains_only_its_block_its_key_and_the_query_mlp(tmp_path):
    cfg = resolve({"model": "tiny-llama", "output": str(tmp_path), "epochs": 1, "lr": 1e-2})
    tasks = builtin_suite(seed=0, n_train=16, n_val=4, n_eval=4)
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), r=2)
    model.add_task(tasks[0].name)
    train_stage(model, tasks[0], 0, cfg, tmp_path / "log.jsonl")
    before = snapshot(model)
    model.add_task(tasks[1].name)
    train_stage(model, tasks[1], 1, cfg, tmp_path / "log.jsonl")
    after = snapshot(model)

    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for k in before:
        if "lora_" in k or k.startswith("router.keys."):
            assert k not in changed, f"stage-1 parameter {k} changed in stage 2"
        elif k.startswith("router.query_mlp."):
            pass  # shared: trained further
        else:
            assert k not in changed, f"backbone parameter {k} changed"
    assert any(k.startswith("router.query_mlp.") for k in changed)
    new_keys = set(after) - set(before)
    assert "router.keys.1" in new_keys
    lora_new = [k for k in new_keys if k.endswith(".lora_B.1")]
    assert lora_new and all(after[k].abs().sum() > 0 for k in lora_new)  # B starts at zero: it moved


def tiny_cfg(out, **kw):
    base = {"model": "tiny-llama", "output": str(out), "epochs": 1, "max_train_per_task": 16,
            "max_eval_per_task": 6, "max_new_tokens": 4, "tasks": ["topic", "sentiment", "addition"]}
    return resolve({**base, **kw})


def test_end_to_end_tiny_run_writes_a_complete_run_directory_and_resumes_by_stage(tmp_path):
    out = tmp_path / "run"
    result = run(tiny_cfg(out))
    m = json.loads((out / "metrics.json").read_text())
    assert m["tasks"] == ["topic", "sentiment", "addition"]
    assert len(m["matrix"]) == 3 and all(len(r) == 3 for r in m["matrix"])
    assert m["matrix"][0][1] is None and m["matrix"][1][2] is None and m["matrix"][2][2] is not None
    assert m["eval_split"] == "test" and m["fwt"] is None
    final = m["matrix"][-1]
    assert m["ap"] == pytest.approx(sum(final) / 3)
    assert m["bwt"] == pytest.approx(((final[0] - m["matrix"][0][0]) + (final[1] - m["matrix"][1][1])) / 2)
    assert "AP" in result.table and "routing accuracy" in result.table
    assert (out / "config.yaml").exists()
    for i, name in enumerate(m["tasks"]):
        sdir = out / "stages" / f"{i:02d}_{name}"
        adapter = io.load_tensors(sdir / "adapter.safetensors")
        assert len(adapter) == 2 * 4  # A and B for q and v of 2 layers
        router = io.load_tensors(sdir / "router.safetensors")
        assert router["key"].shape == (64,)
        for seen in m["tasks"][: i + 1]:
            rows = [json.loads(l) for l in (sdir / "predictions" / f"{seen}.jsonl").read_text().splitlines()]
            assert len(rows) == 6
            assert {"input", "prediction", "references", "weights"} <= set(rows[0])
            assert len(rows[0]["weights"]) == i + 1 and sum(rows[0]["weights"]) == pytest.approx(1, abs=1e-4)

    # the same command again: every stage is loaded, nothing retrained or rescored
    log_lines = (out / "train_log.jsonl").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    run(tiny_cfg(out))
    assert (out / "train_log.jsonl").read_text() == log_lines
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps
    assert json.loads((out / "metrics.json").read_text())["matrix"] == m["matrix"]

    # the final model rebuilt from disk routes like the one that was trained
    cfg, model, names = load_trained(out)
    assert names == m["tasks"] and model.n_tasks == 3


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path):
    full = tmp_path / "full"
    run(tiny_cfg(full, tasks=["topic", "sentiment"]))
    part = tmp_path / "part"
    run(tiny_cfg(part, tasks=["topic", "sentiment"]))
    # simulate a crash after stage 1 was trained but before it was scored
    stage = part / "stages" / "01_sentiment"
    (stage / "scores.json").unlink()
    (stage / "stage.json").unlink()
    run(tiny_cfg(part, tasks=["topic", "sentiment"]))
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert a["matrix"] == b["matrix"] and a["routing_accuracy"] == b["routing_accuracy"]
    assert io.load_tensors(stage / "adapter.safetensors").keys() == io.load_tensors(
        full / "stages" / "01_sentiment" / "adapter.safetensors").keys()
    for k, v in io.load_tensors(stage / "adapter.safetensors").items():
        assert torch.equal(v, io.load_tensors(full / "stages" / "01_sentiment" / "adapter.safetensors")[k])


def test_resuming_with_a_different_config_is_refused_and_leaves_the_directory_alone(tmp_path):
    out = tmp_path / "run"
    run(tiny_cfg(out, tasks=["topic"]))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="lr"):
        run(tiny_cfg(out, tasks=["topic"], lr=0.5))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_router_warmup_freezes_the_router_while_the_new_block_starts(tmp_path):
    tasks = builtin_suite(seed=0, n_train=16, n_val=4, n_eval=4)
    routers = {}
    for warmup in (0.0, 0.9):
        cfg = resolve({"model": "tiny-llama", "output": str(tmp_path), "epochs": 1, "lr": 1e-2,
                       "router_warmup": warmup, "batch_size": 8})  # 2 steps; 0.9 of them = both
        torch.manual_seed(0)
        model = SAPTModel(load_model("tiny-llama"), r=2)
        model.add_task(tasks[0].name)
        train_stage(model, tasks[0], 0, cfg, tmp_path / "log.jsonl")
        model.add_task(tasks[1].name)
        before = snapshot(model.router)
        block_before = model.lora_layers["model.layers.0.self_attn.q_proj"].lora_B[1].detach().clone()
        train_stage(model, tasks[1], 1, cfg, tmp_path / "log.jsonl")
        after = snapshot(model.router)
        routers[warmup] = all(torch.equal(before[k], after[k]) for k in before)
        assert not torch.equal(block_before, model.lora_layers["model.layers.0.self_attn.q_proj"].lora_B[1])
    assert routers == {0.0: False, 0.9: True}
