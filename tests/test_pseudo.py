"""Pseudo-input generator on tiny random models: it learns, leaves no trace, and its bookkeeping is right.

Tiny random models write garbage, so nothing here depends on sample quality.
"""
import dataclasses

import pytest
import torch
from peft.tuners.lora import LoraLayer

import sapt.pseudo as pseudo
from sapt.batching import collate_train, encode
from sapt.data import builtin_suite
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel
from sapt.pseudo import PseudoConfig, generate_pseudo_inputs, parse_sample, wanted_count

# wanted = 1 and at most 4 short samples, targets cut at 32 tokens: the generator runs stay cheap
FAST = dict(ratio=0.01, max_new_tokens=8, sample_batch_size=4, epochs=1)
MAX_TARGET = 32


@pytest.fixture(scope="module")
def tasks():
    return builtin_suite(seed=0, n_train=16, n_val=4, n_eval=4)


def sapt_model(name: str, n_tasks: int = 2) -> SAPTModel:
    model = SAPTModel(load_model(name), LoRABlocks(LoRAConfig(r=2)))
    for i in range(n_tasks):
        model.add_task(f"t{i}")
    return model


def test_parse_sample_keeps_only_well_formed_inputs():
    assert parse_sample("apple river stone") == "apple river stone"
    assert parse_sample("  spaced input \n") == "spaced input"
    assert parse_sample("line one\nline two") == "line one\nline two"  # multi-line inputs are inputs
    assert parse_sample("") is None  # empty
    assert parse_sample("   \n") is None  # blank
    assert parse_sample("__gen__") is None  # the trigger echoed back
    assert parse_sample("more __gen__ text") is None


def test_the_generator_is_conditioned_on_the_definition_and_learns_only_the_input():
    model = sapt_model("tiny-llama", n_tasks=1)
    task = builtin_suite(seed=0, n_train=4, n_val=1, n_eval=1)[0]
    items, prompt, length = pseudo._encode(model, task, 512, 256, None)
    assert length == pseudo.sample_length([len(i.target) - 1 for i in items], 512)
    tok = model.tokenizer
    assert tok.decode(prompt) == pseudo.generator_prompt(task.definition)
    assert task.definition in tok.decode(prompt)
    for item, ex in zip(items, task.train):
        assert item.prompt == prompt
        assert tok.decode(item.target[:-1]) == ex.input and item.target[-1] == tok.eos_token_id


def test_wanted_count_follows_ratio_with_floor_one_and_cap():
    assert wanted_count(1000, PseudoConfig(ratio=0.02)) == 20
    assert wanted_count(10, PseudoConfig(ratio=0.02)) == 1  # at least one
    assert wanted_count(100_000, PseudoConfig(ratio=0.02, max_samples=50)) == 50
    assert wanted_count(160, PseudoConfig(ratio=0.25, max_samples=50)) == 40
    with pytest.raises(ValueError):
        PseudoConfig(max_samples=0)


def test_collect_stops_at_wanted_keeps_distinct_and_caps_attempts():
    stream = iter(["a", "__gen__", "a", "b", " ", "c", "d"] + ["x"] * 100)
    calls = []

    def fake(k):
        calls.append(k)
        return [next(stream) for _ in range(k)]

    cfg = PseudoConfig(oversample=4, sample_batch_size=3)
    found, stats = pseudo._collect(fake, 3, cfg)
    assert found == ["a", "b", "c"]
    assert calls == [3, 3]  # stopped once 3 distinct inputs were in hand
    assert stats["attempts"] == 6
    assert stats["well_formed_fraction"] == pytest.approx(4 / 6)
    assert stats["distinct_fraction"] == pytest.approx(3 / 4)

    calls.clear()
    stream = iter(["p", "q", "r", "s"])
    found, _ = pseudo._collect(fake, 2, PseudoConfig(oversample=4, sample_batch_size=16))
    assert found == ["p", "q"] and calls == [3]  # a quarter more than wanted, not a whole batch of 16

    found, stats = pseudo._collect(lambda k: [""] * k, 5, PseudoConfig(oversample=4, sample_batch_size=8))
    assert found == [] and stats["attempts"] == 20  # the cap: oversample * wanted, last batch cut to fit
    assert stats["well_formed_fraction"] == 0.0 and stats["distinct_fraction"] == 0.0


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_generator_leaves_no_trace(name, tasks, monkeypatch):
    model = sapt_model(name)
    task = tasks[0]
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial task blocks: they must come back untouched
        for layer in model.blocks.layers.values():
            for p in [*layer.lora_A, *layer.lora_B]:
                p.add_(torch.randn_like(p) * 0.1)
    model.set_trainable(0)  # something other than what the caller gets back, to see it restored
    model.eval()
    items = encode(model.tokenizer, model.family, task.definition, task.train[:3], 128, 16)
    batch = collate_train(items, model.family, model.tokenizer.pad_token_id)
    with torch.no_grad():
        loss_before = model(batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    attrs = set(vars(model.base))
    rng = torch.get_rng_state()

    trainable_during = []
    train = pseudo._train_generator

    def spy(m, *args):
        trainable_during.extend(n for n, p in m.named_parameters() if p.requires_grad)
        return train(m, *args)

    monkeypatch.setattr(pseudo, "_train_generator", spy)
    inputs, stats = generate_pseudo_inputs(model, task, PseudoConfig(**FAST), max_target=MAX_TARGET)

    # only PEFT's generator weights trained: two per adapted projection, none of the mixture's lora_A.N
    assert len(trainable_during) == 2 * len(model.blocks.layers)
    assert all(f".lora_A.{pseudo.ADAPTER}." in n or f".lora_B.{pseudo.ADAPTER}." in n for n in trainable_during)
    # nothing left behind
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert set(vars(model.base)) == attrs
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(batch), loss_before)
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    # the caller's trainable set is the one of the newest task
    got = [n for n, p in model.named_parameters() if p.requires_grad]
    model.set_trainable(model.n_tasks - 1)
    assert got == [n for n, p in model.named_parameters() if p.requires_grad]
    # bookkeeping
    assert stats["wanted"] == 1 and stats["count"] == len(inputs) <= 1
    assert 1 <= stats["attempts"] <= 4
    for key in ("well_formed_fraction", "distinct_fraction", "novel_fraction"):
        assert 0.0 <= stats[key] <= 1.0
    assert stats["settings"]["max_new_tokens"] == 8


def test_same_seed_same_samples_and_task_blocks_are_off(tasks):
    task = tasks[1]
    cfg = PseudoConfig(**FAST)
    zero_blocks = sapt_model("tiny-t5")
    inputs_a, a = generate_pseudo_inputs(zero_blocks, task, cfg, max_target=MAX_TARGET)

    # same backbone, but task blocks that would change every output if they were on
    live_blocks = sapt_model("tiny-t5")
    with torch.no_grad():
        for layer in live_blocks.blocks.layers.values():
            for p in layer.lora_B:
                p.normal_(0, 1.0)
    inputs_b, b = generate_pseudo_inputs(live_blocks, task, cfg, max_target=MAX_TARGET)
    assert inputs_a == inputs_b and a["preview"] == b["preview"] and a["loss"] == b["loss"]
    assert len(a["preview"]) == min(3, a["attempts"])

    _, c = generate_pseudo_inputs(zero_blocks, task, dataclasses.replace(cfg, seed=1), max_target=MAX_TARGET)
    assert c["preview"] != a["preview"]


def test_generator_learns_and_returned_inputs_match_stats(tasks, monkeypatch):
    task = dataclasses.replace(tasks[2], definition="Rev.")
    model = sapt_model("tiny-t5", n_tasks=1)
    cfg = PseudoConfig(**{**FAST, "epochs": 4, "lr": 1e-2})
    inputs, stats = generate_pseudo_inputs(model, task, cfg, max_target=MAX_TARGET)
    loss = stats["loss"]
    assert len(loss) == 4
    assert loss[-1] < 0.9 * loss[0], loss

    # with a sampler that writes a training input, a copy, a blank, then new ones: the list and stats agree
    train_input = task.train[0].input
    stream = iter([train_input, train_input, "  ", "brand new words", "spare"])
    monkeypatch.setattr(pseudo, "_sample", lambda m, prompt, k, cfg: [next(stream) for _ in range(k)])
    inputs, stats = generate_pseudo_inputs(model, task, dataclasses.replace(cfg, ratio=2 / 16, epochs=0),
                                           max_target=MAX_TARGET)
    assert inputs == [train_input, "brand new words"]  # 3 drawn (2 wanted + a quarter), then 2 for the 1 missing
    assert stats["wanted"] == 2 and stats["count"] == 2 and stats["attempts"] == 5
    assert stats["well_formed_fraction"] == pytest.approx(4 / 5)
    assert stats["distinct_fraction"] == pytest.approx(3 / 4)
    assert stats["novel_fraction"] == 0.5


def test_the_generator_budget_is_steps_when_set_else_epochs():
    cfg = PseudoConfig(**{**FAST, "batch_size": 4, "epochs": 2})
    assert len(pseudo.generator_batches(10, cfg)) == 2 * 3  # two passes of ceil(10 / 4) batches
    batches = pseudo.generator_batches(10, dataclasses.replace(cfg, steps=7))
    assert len(batches) == 7
    # each pass covers every item once before the next one starts
    assert sorted(i for b in batches[:3] for i in b) == list(range(10))
    assert pseudo.pass_means([1.0, 3.0, 5.0, 2.0], 3) == [3.0, 2.0]
    with pytest.raises(ValueError):
        PseudoConfig(steps=0)


def test_by_default_the_generator_trains_a_quarter_of_the_tasks_batches():
    cfg = PseudoConfig(batch_size=4, task_epochs=1)  # no steps, no epochs: the budget
    assert pseudo.generator_steps(32, cfg) == 2  # the task trained 8 batches of 4
    assert pseudo.generator_steps(128, cfg) == 8  # long-mini: 32 batches -> its tuned 8 steps
    assert pseudo.generator_steps(128, dataclasses.replace(cfg, task_epochs=3)) == 24
    assert pseudo.generator_steps(3, cfg) == 1  # at least one
    assert pseudo.generator_steps(32, dataclasses.replace(cfg, step_fraction=1.0)) == 8
    assert pseudo.generator_steps(32, dataclasses.replace(cfg, epochs=2)) == 16  # epochs win over the budget
    assert pseudo.generator_steps(32, dataclasses.replace(cfg, epochs=2, steps=5)) == 5  # steps win over both
    assert len(pseudo.generator_batches(32, cfg)) == 2
    with pytest.raises(ValueError):
        PseudoConfig(step_fraction=0)


def test_by_default_a_sample_is_as_long_as_three_inputs_in_four():
    assert pseudo.sample_length([10, 11, 12, 30], 512) == 16  # p75 = 12, rounded up to 8
    assert pseudo.sample_length([3, 4, 5], 512) == 8  # never under 8
    assert pseudo.sample_length([400] * 10, 512) == 64  # never over 64 ...
    assert pseudo.sample_length([400] * 10, 40) == 40  # ... nor over the source limit
    assert pseudo.sample_length([], 512) == 64
    assert pseudo.sample_length(list(range(1, 61)), 512) == 48  # p75 of 1..60 is 45


def test_a_budgeted_generator_writes_at_most_the_derived_length(tasks):
    task = dataclasses.replace(tasks[2], definition="Rev.")
    model = sapt_model("tiny-llama", n_tasks=1)
    cfg = PseudoConfig(**{**FAST, "max_new_tokens": None, "epochs": None, "batch_size": 4, "task_epochs": 2})
    items, _, length = pseudo._encode(model, task, 512, MAX_TARGET, None)
    _, stats = generate_pseudo_inputs(model, task, cfg, max_target=MAX_TARGET)
    assert stats["settings"]["max_new_tokens"] == length == pseudo.sample_length(
        [len(model.tokenizer(ex.input, add_special_tokens=False)["input_ids"]) for ex in task.train], 512)
    assert max(len(i.target) for i in items) <= min(length, MAX_TARGET)  # trained on what it may write
    assert stats["steps"] == pseudo.generator_steps(len(task.train), cfg) == -(-2 * -(-len(task.train) // 4) // 4)


def test_a_step_budget_trains_that_many_steps(tasks):
    task = dataclasses.replace(tasks[2], definition="Rev.")
    model = sapt_model("tiny-t5", n_tasks=1)
    _, stats = generate_pseudo_inputs(model, task, PseudoConfig(**{**FAST, "steps": 3, "batch_size": 4}),
                                      max_target=MAX_TARGET)
    assert stats["steps"] == 3 and len(stats["loss"]) == 1  # 3 steps: part of one pass of 16 / 4
