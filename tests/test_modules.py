"""SALS building blocks on tiny random models: injection, the mixture, the router, equality with PEFT LoRA."""
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from sapt.batching import collate_prompts, collate_train, encode
from sapt.data import Example
from sapt.models import load_model
from sapt.modules.blocks import RoutingState
from sapt.modules.blocks.lora import MixtureLoRALinear
from sapt.modules.blocks.targets import TARGET_PATTERNS, find_targets
from sapt.modules.router import masked_max_pool
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel

EXAMPLES = [Example("the cat sat on the mat", ("yes",)), Example("a dog", ("no answer here",)),
            Example("what is 2 + 2?", ("4",))]


def batch_for(model: SAPTModel, examples=EXAMPLES):
    items = encode(model.tokenizer, model.family, "Answer the question.", examples, 128, 16)
    return collate_train(items, model.family, model.tokenizer.pad_token_id)


def randomize_blocks(model: SAPTModel, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.blocks.layers.values():
            for p in list(layer.lora_A) + list(layer.lora_B):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_injection_finds_exactly_q_and_v_of_every_attention_in_tiny_t5():
    loaded = load_model("tiny-t5")
    names = set(find_targets(loaded.model, TARGET_PATTERNS["seq2seq"]))
    expected = set()
    for i in range(2):
        expected |= {f"encoder.block.{i}.layer.0.SelfAttention.{p}" for p in "qv"}
        expected |= {f"decoder.block.{i}.layer.0.SelfAttention.{p}" for p in "qv"}
        expected |= {f"decoder.block.{i}.layer.1.EncDecAttention.{p}" for p in "qv"}
    assert names == expected
    model = SAPTModel(loaded, LoRABlocks(LoRAConfig(r=2)))
    wrapped = {n for n, m in model.base.named_modules() if isinstance(m, MixtureLoRALinear)}
    assert wrapped == expected  # k and o untouched


def test_injection_finds_exactly_q_proj_and_v_proj_in_tiny_llama():
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    wrapped = {n for n, m in model.base.named_modules() if isinstance(m, MixtureLoRALinear)}
    assert wrapped == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_one_task_sapt_equals_plain_peft_lora(name):
    torch.manual_seed(0)
    loaded = load_model(name)
    base_copy = copy.deepcopy(loaded.model)
    model = SAPTModel(loaded, LoRABlocks(LoRAConfig(r=4, alpha=32)))
    model.add_task("only")
    randomize_blocks(model)
    model.eval()
    batch = batch_for(model)

    targets = ["q_proj", "v_proj"] if name == "tiny-llama" else ["q", "v"]
    peft_model = get_peft_model(base_copy, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    with torch.no_grad():
        for mod_name, layer in model.blocks.layers.items():
            peft_layer = peft_model.base_model.model.get_submodule(mod_name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A[0])
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B[0])
    peft_model.eval()
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
        assert torch.equal(w, torch.ones_like(w))  # one task: the weight is exactly 1
        with model.routed(w):
            ours = model.base(**args).logits
        theirs = peft_model(**args).logits
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    # and the blocks really do something: the output differs from the frozen backbone's
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(**args).logits
    assert (ours - plain).abs().max() > 1e-3


def test_mixture_equals_explicit_weighted_sum_of_blocks():
    torch.manual_seed(1)
    state = RoutingState()
    layer = MixtureLoRALinear(torch.nn.Linear(12, 7), state, r=3, alpha=6)
    for _ in range(4):
        layer.add_block()
    with torch.no_grad():
        for p in layer.lora_B:
            p.normal_()
    x = torch.randn(5, 9, 12)
    w = torch.softmax(torch.randn(5, 4), dim=-1)
    state.weights = w
    expected = layer.base(x)
    for i in range(4):
        expected = expected + w[:, i, None, None] * 2.0 * (x @ layer.lora_A[i].t() @ layer.lora_B[i].t())
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_routing_weights_are_a_distribution_per_example_and_depend_on_the_input():
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    for name in "abc":
        model.add_task(name)
    batch = batch_for(model)
    w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
    assert w.shape == (3, 3)
    assert torch.all(w >= 0)
    assert torch.allclose(w.sum(-1), torch.ones(3), atol=1e-6)
    assert not torch.allclose(w[0], w[1], atol=1e-4)


def test_pooling_ignores_padding_and_answer_tokens():
    emb = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    pooled = masked_max_pool(emb, mask)
    assert torch.equal(pooled[0], emb[0, :2].max(0).values)
    emb2 = emb.clone()
    emb2[0, 2:] = 100.0  # huge values at masked positions change nothing
    assert torch.equal(masked_max_pool(emb2, mask), pooled)
    # the training batch of a causal LM pools the prompt only, as generation does
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    model.add_task("a")
    model.add_task("b")
    items = encode(model.tokenizer, model.family, "Answer.", EXAMPLES, 128, 16)
    pad = model.tokenizer.pad_token_id
    train = collate_train(items, "causal", pad)
    gen = collate_prompts(items, "causal", pad)
    w_train = model.routing_weights(train["input_ids"], train["prompt_mask"])
    w_gen = model.routing_weights(gen["input_ids"], gen["prompt_mask"])
    assert torch.allclose(w_train, w_gen, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_generation_with_cache_matches_step_by_step_decoding_under_fixed_weights(name):
    torch.manual_seed(0)
    model = SAPTModel(load_model(name), LoRABlocks(LoRAConfig(r=4)))
    for t in "ab":
        model.add_task(t)
    randomize_blocks(model, seed=3)
    model.eval()
    items = encode(model.tokenizer, model.family, "Answer.", EXAMPLES[:1], 128, 16)
    batch = collate_prompts(items, model.family, model.tokenizer.pad_token_id)
    texts, w = model.generate(batch, max_new_tokens=6)
    # greedy decoding by hand, full forward each step (no cache), the same weights every step
    ids = batch["input_ids"]
    out = []
    with torch.no_grad(), model.routed(w):
        if model.family == "causal":
            for _ in range(6):
                nxt = int(model.base(input_ids=ids).logits[0, -1].argmax())
                if nxt == model.tokenizer.eos_token_id:
                    break
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        else:
            dec = torch.tensor([[model.base.config.decoder_start_token_id]])
            for _ in range(6):
                nxt = int(model.base(input_ids=ids, decoder_input_ids=dec).logits[0, -1].argmax())
                if nxt == model.tokenizer.eos_token_id:
                    break
                out.append(nxt)
                dec = torch.cat([dec, torch.tensor([[nxt]])], dim=1)
    assert texts[0] == model.tokenizer.decode(out, skip_special_tokens=True).strip()
