"""Every block type of the registry (`sapt.modules.blocks.registry.BLOCK_TYPES`, one folder each) passes the
same checks, so that a new type is its folder plus one row of ROWS: a tiny `sapt run --pet <type>` trains and
exports; each block's state round-trips through its stage file and a fresh model; one-hot routing equals the
type's PEFT adapter; merge works (equal to the unmerged mixture) or is refused in one clear line; the export
reads back to the run's blocks and answers as the run does; the model card names the type."""
from __future__ import annotations

import pytest
import torch
import yaml

from conftest import peft_matches_sapt_one_hot

# One row per block type: the run settings its tiny run adds (its own keys, kept small).
ROWS = {
    "lora": {},
    "prompt": {"prompt_len": 4},
    "ia3": {},
}
TASKS = ["topic", "sentiment"]
pytestmark = pytest.mark.filterwarnings("ignore::sapt.api.MissingDefinitionWarning")


def test_every_block_type_has_a_row():
    from sapt.config import PETS
    from sapt.modules.blocks.registry import BLOCK_TYPES

    assert set(BLOCK_TYPES) == set(ROWS) and PETS == tuple(BLOCK_TYPES)
    for name, kind in BLOCK_TYPES.items():
        assert kind.name == name and kind.card_kind and kind.card_tag and kind.block_noun and kind.new_block


def test_every_block_types_options_are_its_folders_and_in_the_block_section():
    """A type's own keys (`Options`) are the class its folder's config.py names as `OPTIONS`, each a config key
    of section block (tests/blocks/test_block_options.py), and the config maps each to its type (the
    reference check compares another type's keys only when the run uses that type)."""
    import dataclasses

    from sapt.config import BLOCK_OPTION_KEYS, FIELDS
    from sapt.modules.blocks.registry import BLOCK_TYPES, block_options_type

    for name, kind in BLOCK_TYPES.items():
        assert kind.Options is block_options_type(name), name
        declared = dataclasses.fields(kind.Options) if kind.Options is not None else ()
        assert all(f.metadata["section"] == "block" == FIELDS[f.name].metadata["section"] for f in declared), name
        assert all(BLOCK_OPTION_KEYS[f.name] == name for f in declared), name


@pytest.fixture(scope="module", params=sorted(ROWS))
def exported(request, tmp_path_factory):
    """(type name, run directory, export folder) of a tiny two-task SAPT run with that block type."""
    from sapt.cli import main
    from sapt.export import export_run

    name = request.param
    root = tmp_path_factory.mktemp(f"block-{name}")
    settings = {"model": "tiny-llama", "epochs": 1, "max_train_per_task": 4, "max_eval_per_task": 2,
                "max_new_tokens": 2, "tasks": TASKS, **ROWS[name]}
    (root / "config.yaml").write_text(yaml.safe_dump(settings))
    assert main(["run", "--pet", name, "--config", str(root / "config.yaml"), "--output", str(root / "run"), "--quiet"]) == 0
    export_run(root / "run", root / "export")
    return name, root / "run", root / "export"


def _inputs(model):
    tok = model.tokenizer
    enc = tok(["Review: fine kettle.", "Topic: the match ended 2-1"], return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_the_state_round_trips(exported):
    from sapt.export import stage_tensors
    from sapt.train import build_model, load_trained

    name, run, _ = exported
    cfg, model, names = load_trained(run)
    assert model.blocks.name == name and names == TASKS
    fresh = build_model(cfg)
    for task in names:
        fresh.add_task(task)
    for t, (_, block, _) in enumerate(stage_tensors(run)):
        state = model.block_state(t)
        assert set(state) == set(block) and all(torch.equal(state[k], block[k]) for k in block)
        fresh.load_block(t, block)
        again = fresh.block_state(t)
        assert all(torch.equal(again[k], block[k]) for k in block)
    with pytest.raises(ValueError):
        fresh.load_block(0, {"not.a.block": torch.zeros(1)})


def test_one_hot_routing_equals_the_peft_adapter(exported):
    from sapt.train import load_trained

    _, run, out = exported
    _, model, _ = load_trained(run)
    peft_matches_sapt_one_hot(run, out, _inputs(model))


def test_merge_works_or_is_refused_clearly(exported):
    from sapt.api import load
    from sapt.config import ConfigError
    from sapt.modules.merge import merged

    name, run, _ = exported
    trained = load(run)
    model = trained.model.eval()
    kw = _inputs(model)
    one = {k: v[:1] for k, v in kw.items()}
    w = torch.tensor([[0.3, 0.7]])
    if not model.blocks.mergeable:
        with pytest.raises(ConfigError, match=f"pet: {name}"):
            trained.predict("an input", merge=True)
        with pytest.raises(NotImplementedError, match="merge"):
            merged(model, w)
        return
    with torch.no_grad(), model.routed(w):
        expected = model.base(**one).logits
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    with torch.no_grad(), merged(model, w), model.routed(w):
        got = model.base(**one).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    after = model.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base weights came back bit for bit
    assert [a.text for a in trained.predict(["an input"], merge=True)] == [a.text for a in trained.predict(["an input"])]


def test_the_export_round_trips(exported):
    from sapt.api import load
    from sapt.export import read_export
    from sapt.export import stage_tensors

    _, run, out = exported
    for (task, block, _), (etask, eblock, _) in zip(stage_tensors(run), read_export(out)):
        assert task == etask and set(block) == set(eblock)
        assert all(torch.allclose(block[k].float(), eblock[k].float(), rtol=0, atol=1e-6) for k in block)
    texts = ["Review: fine kettle.", "Topic: the match ended 2-1"]
    from_run, from_export = load(run).predict(texts), load(out).predict(texts)
    assert [a.text for a in from_run] == [a.text for a in from_export]
    assert [a.routing for a in from_run] == [a.routing for a in from_export]


def test_the_model_card_names_the_block_type(exported):
    from sapt.methods import make_method
    from sapt.modules.blocks.registry import BLOCK_TYPES

    name, _, out = exported
    kind = BLOCK_TYPES[name]
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["tags"] == ["continual-learning", "sapt", kind.card_tag]
    assert f"# Continual-learning {kind.card_kind} adapters" in card
    assert f"a standard PEFT {kind.card_kind} adapter" in card
    summary = make_method("sapt").summary.replace("{block}", kind.block_noun)
    assert summary in card and "{block}" not in card
    other = {k.block_noun for n, k in BLOCK_TYPES.items() if n != name}
    assert not any(f"one {noun} per task" in card for noun in other)
