"""The continual recipe on tiny models: what trains, what stays frozen, the run directory, resume."""
import json
import math
from functools import partial

import pytest
import torch
from conftest import tiny_config

from sapt import io
from sapt.config import ConfigError, resolve
from sapt.data import builtin_suite
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel
from sapt.train import load_run_tasks, load_trained, run, stage_sections, train_stage


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_later_stage_trains_only_its_block_its_key_and_the_query_mlp(tmp_path):
    cfg = resolve({"model": "tiny-llama", "output": str(tmp_path), "epochs": 1, "lr": 1e-2})
    tasks = builtin_suite(seed=0, n_train=16, n_val=4, n_eval=4)
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    model.add_task(tasks[0].name)
    train_stage(model, tasks[0], 0, stage_sections(cfg), tmp_path / "log.jsonl")
    before = snapshot(model)
    model.add_task(tasks[1].name)
    train_stage(model, tasks[1], 1, stage_sections(cfg), tmp_path / "log.jsonl")
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


tiny_cfg = partial(tiny_config, max_train_per_task=16, max_eval_per_task=6, max_new_tokens=4,
                   tasks=["topic", "sentiment", "addition"])


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
    # where the time went: each phase's seconds from the stage files, summed
    timing = json.loads((out / "timing.json").read_text())
    stage_dirs = sorted((out / "stages").iterdir())
    assert timing["eval_s"] == pytest.approx(sum(io.read_json(d / "scores.json")["seconds"] for d in stage_dirs), abs=0.2)
    assert timing["train_s"] == pytest.approx(sum(io.read_json(d / "stage.json")["seconds"] for d in stage_dirs), abs=0.2)
    assert timing["train_s"] > 0 and timing["eval_s"] >= 0  # a tiny model's evaluation can take < 0.01 s
    # the validation examples each stage chose its epoch on are identified
    hashes = [io.read_json(d / "stage.json")["val_sha256"] for d in stage_dirs]
    assert len(set(hashes)) == 3 and all(len(h) == 64 for h in hashes)
    assert timing["total_s"] == pytest.approx(timing["train_s"] + timing["reflection_s"] + timing["eval_s"], abs=0.2)
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
                       "router_warmup": warmup, "batch_size": 8, "router_schedule": "joint"})  # 2 steps; 0.9 of them = both
        torch.manual_seed(0)
        model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
        model.add_task(tasks[0].name)
        train_stage(model, tasks[0], 0, stage_sections(cfg), tmp_path / "log.jsonl")
        model.add_task(tasks[1].name)
        before = snapshot(model.router)
        block_before = model.blocks.layers["model.layers.0.self_attn.q_proj"].lora_B[1].detach().clone()
        train_stage(model, tasks[1], 1, stage_sections(cfg), tmp_path / "log.jsonl")
        after = snapshot(model.router)
        routers[warmup] = all(torch.equal(before[k], after[k]) for k in before)
        assert not torch.equal(block_before, model.blocks.layers["model.layers.0.self_attn.q_proj"].lora_B[1])
    assert routers == {0.0: False, 0.9: True}


def test_during_the_warmup_the_new_block_learns_alone(tmp_path):
    """With the warm-up covering every step, block 2 trains as if block 1 did not exist: two different
    block 1's give the same block 2."""
    tasks = builtin_suite(seed=0, n_train=16, n_val=4, n_eval=4)
    cfg = resolve({"model": "tiny-llama", "output": str(tmp_path), "epochs": 1, "lr": 1e-2,
                   "router_warmup": 0.9, "batch_size": 8})
    trained = []
    for scale in (0.0, 5.0):
        torch.manual_seed(0)
        model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
        model.add_task(tasks[0].name)
        with torch.no_grad():
            for layer in model.blocks.layers.values():
                layer.lora_B[0].normal_(std=scale)  # an old block that changes every output, or none
        model.add_task(tasks[1].name)
        model.set_trainable(1)
        train_stage(model, tasks[1], 1, stage_sections(cfg), tmp_path / "log.jsonl")
        trained.append(model.block_state(1))
    assert any(v.abs().sum() > 0 for k, v in trained[0].items() if "lora_B" in k)
    for k in trained[0]:
        torch.testing.assert_close(trained[1][k], trained[0][k], atol=1e-6, rtol=1e-5)


def test_the_router_centre_is_the_mean_of_the_tasks_mean_pooled_prompts_and_is_saved(tmp_path):
    from sapt.batching import collate_prompts
    from sapt.evaluation.generation import encode_task_split

    out = tmp_path / "run"
    cfg = tiny_cfg(out, tasks=["topic", "sentiment"], reflection_source="real")
    run(cfg)
    _, model, names = load_trained(out)
    means = []
    for task in load_run_tasks(cfg):
        items = encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length)
        batch = collate_prompts(items, model.family, model.tokenizer.pad_token_id)
        means.append(model.pooled_prompt(batch["input_ids"], batch["prompt_mask"]).mean(0))
    stage1 = io.load_tensors(out / "stages" / "00_topic" / "router.safetensors")["centre"]
    torch.testing.assert_close(stage1, means[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.router.centre, (means[0] + means[1]) / 2, atol=1e-5, rtol=1e-5)
    # the query is computed from the centred pooled embedding
    pooled = torch.randn(3, model.router.d_model)
    expected = model.router.query_mlp(pooled - model.router.centre) @ torch.stack(list(model.router.keys)).t()
    torch.testing.assert_close(model.router.logits(pooled), expected / model.router.d_model ** 0.5)


def test_a_run_directory_of_an_older_sapt_without_the_newer_keys_resumes(tmp_path):
    """A key added to the config since a run was written counts as its default, not as a change."""
    from sapt.config import differences, to_dict

    cfg = tiny_cfg(tmp_path / "run")
    saved = to_dict(cfg)
    del saved["mixed_precision"], saved["log_with"]
    assert differences(saved, cfg) == []
    assert differences(saved, tiny_cfg(tmp_path / "run", mixed_precision="bf16")) == ["mixed_precision"]


@pytest.mark.parametrize("key,value", [("backbone_dtype", "int8"), ("pseudo_steps", 0)])
def test_bad_backbone_dtype_or_generator_budget_is_refused(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        tiny_cfg(tmp_path / "run", **{key: value})


def test_a_bfloat16_backbone_run_trains_and_loads_back_in_bfloat16(tmp_path):
    out = tmp_path / "run"
    run(tiny_cfg(out, backbone_dtype="bfloat16", tasks=["topic", "sentiment"]))
    cfg, model, names = load_trained(out)
    assert cfg.backbone_dtype == "bfloat16" and names == ["topic", "sentiment"]
    assert model.base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for layer in model.blocks.layers.values() for p in layer.lora_A)
    assert model.base.config._attn_implementation == "eager"  # on the CPU (sapt.models.eager_attention_on_cpu)


def test_without_the_centre_the_router_centre_stays_zero(tmp_path):
    out = tmp_path / "run"
    run(tiny_cfg(out, tasks=["topic", "sentiment"], reflection_source="real", router_centre=False))
    for stage in ("00_topic", "01_sentiment"):
        assert not io.load_tensors(out / "stages" / stage / "router.safetensors")["centre"].any()


@pytest.mark.parametrize("share", [0.9, 0.99])
def test_a_task_initialised_key_routes_the_new_task_to_its_block_and_old_tasks_away(share):
    from sapt.batching import collate_prompts
    from sapt.evaluation.generation import encode_task_split
    from sapt.reflection import encode_replay
    from sapt.train import init_key_from_task

    cfg = tiny_cfg("unused", tasks=["topic", "sentiment", "addition"])
    tasks = load_run_tasks(cfg)
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    for task in tasks:
        model.add_task(task.name)
    t = 2
    replay = [encode_replay(model, task.definition, [ex.input for ex in task.train[:4]], cfg.max_source_length)
              for task in tasks[:t]]

    def mean_query(items):
        batch = collate_prompts(items, model.family, model.tokenizer.pad_token_id)
        return model.router.query(model.pooled_prompt(batch["input_ids"], batch["prompt_mask"])).mean(0)

    new = mean_query(encode_task_split(model, tasks[t], "train", cfg.max_source_length, cfg.max_target_length))
    old = [mean_query(items) for items in replay]
    old_keys = [model.router.keys[j].detach().clone() for j in range(t)]
    init_key_from_task(model, tasks[t], t, cfg.decoding, replay, share=share)
    keys = torch.stack(list(model.router.keys))
    logits = lambda q: keys @ q / model.router.d_model ** 0.5  # noqa: E731
    margin = math.log(share / (1 - share) * t)
    assert float(logits(new)[t] - logits(new)[:t].max()) == pytest.approx(margin, abs=1e-3)
    assert torch.softmax(logits(new), 0)[t] >= share - 1e-3
    for q in old:  # each old task's mean replay prompt prefers every old block to the new one
        assert float(logits(q)[:t].min() - logits(q)[t]) == pytest.approx(margin, abs=1e-3)
    assert all(torch.equal(model.router.keys[j], old_keys[j]) for j in range(t))  # old keys untouched


@pytest.mark.parametrize("block_init", ["zero", "previous"])
def test_a_new_block_starts_at_zero_or_as_a_copy_of_the_previous_one(block_init, monkeypatch, tmp_path):
    from sapt import train

    starts = []
    real = train.train_stage

    def record_start(model, task, t, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.block_state(t).items()})
        return real(model, task, t, *args, **kwargs)

    monkeypatch.setattr(train, "train_stage", record_start)
    cfg = tiny_config(tmp_path / "run", block_init=block_init, tasks=["topic", "sentiment"], reflection_source="real")
    run(cfg)
    first = io.load_tensors(tmp_path / "run" / "stages" / "00_topic" / "adapter.safetensors")
    b_names = [k for k in starts[1] if "lora_B" in k]
    assert b_names
    if block_init == "zero":
        assert all(float(starts[1][k].abs().max()) == 0.0 for k in b_names)  # LoRA's B = 0: no change yet
    else:
        assert all(torch.equal(starts[1][k], first[k]) for k in starts[1])  # block 0 as it was saved
        assert any(float(first[k].abs().max()) > 0 for k in b_names)  # ... which had learned something
