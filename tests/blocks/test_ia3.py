"""IA3 blocks (`--pet ia3`, sapt.modules.blocks.ia3) beyond the conformance checks: both model families equal
PEFT's IA3 adapter under one-hot routing (T5's feed-forward `wo` and LLaMA's `down_proj` have their input
scaled), the mixture is the router's weighted sum of the tasks' vectors, and zero weights are the bare backbone."""
from __future__ import annotations

import pytest
import torch

from sapt.models import load_model
from sapt.modules.blocks.ia3 import IA3Blocks
from sapt.modules.sapt_model import SAPTModel


def _model(name):
    model = SAPTModel(load_model(name, seed=42), IA3Blocks()).eval()
    model.add_task("a")
    model.add_task("b")
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.blocks.layers.values():
            for p in layer.ia3_l:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _inputs(model):
    enc = model.tokenizer(["hello there", "a b"], return_tensors="pt", padding=True)
    kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if model.family == "seq2seq":
        kw["decoder_input_ids"] = enc["input_ids"][:, :3]
    return kw


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-llama"])
def test_one_hot_equals_peft_ia3_on_both_families(tmp_path, name):
    import peft

    from sapt.config import resolve
    from sapt.modules.blocks.ia3.export import export_adapters
    from sapt.modules.blocks.peft_export import BaseModelRef

    model = _model(name)
    export_adapters(resolve({"model": name, "pet": "ia3"}).block, BaseModelRef(name, 42),
                    [("a", tmp_path, model.block_state(0)), ("b", tmp_path, model.block_state(1))], tmp_path)
    kw = _inputs(model)
    for t, task in enumerate("ab"):
        peft_model = peft.PeftModel.from_pretrained(load_model(name, seed=42).model, str(tmp_path / task)).eval()
        one_hot = torch.zeros(2, 2)
        one_hot[:, t] = 1.0
        with torch.no_grad(), model.routed(one_hot):
            expected = model.base(**kw).logits
        with torch.no_grad():
            got = peft_model(**kw).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    ff = {n for n, layer in model.blocks.layers.items() if layer.feedforward}
    assert ff and all(n.rpartition(".")[2] in ("wo", "down_proj") for n in ff)


def test_the_mixture_is_the_weighted_sum_and_zero_weights_are_the_backbone():
    model = _model("tiny-llama")
    layer = next(iter(model.blocks.layers.values()))
    w = torch.tensor([[0.25, 0.75]])
    expected = 0.25 * layer.ia3_l[0].flatten() + 0.75 * layer.ia3_l[1].flatten()
    torch.testing.assert_close(layer.scaling(w)[0], expected, rtol=0, atol=1e-6)
    kw = _inputs(model)
    bare = load_model("tiny-llama", seed=42).model.eval()
    with torch.no_grad(), model.routed(torch.zeros(2, 2)):
        off = model.base(**kw).logits
    with torch.no_grad():
        plain = bare(**kw).logits
    assert torch.equal(off, plain)
