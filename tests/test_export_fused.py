"""`sapt export` of fused q/k/v projections (Phi-3's qkv_proj, GPT-NeoX's and Falcon's query_key_value):
SAPT's blocks on the q and v parts become one PEFT LoRA of rank 2r on the fused Linear that loads with
`PeftModel.from_pretrained` and gives SAPT's logits with one-hot routing on its task."""
import copy
import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from conftest import peft_matches_sapt_one_hot, tiny_config

from sapt import io
from sapt.cli import main
from sapt.config import FIELDS
from sapt.modules.blocks.lora.export import adapter_config, fused_modules, peft_state
from sapt.modules.blocks.peft_export import BaseModelRef
from sapt.models import load_model
from sapt.modules.blocks import RoutingState
from sapt.modules.blocks.lora import inject_mixture_lora

peft = pytest.importorskip("peft")

TASKS = ["topic", "sentiment"]
FUSED_NAME = {"tiny-phi3": "qkv_proj", "tiny-gpt-neox": "query_key_value"}
config = partial(tiny_config, tasks=TASKS, **({"reflection": False} if "reflection" in FIELDS else {}))


@pytest.fixture(scope="module", params=["tiny-phi3", "tiny-gpt-neox"])
def exported(request, tmp_path_factory):
    from sapt.train import run

    root = tmp_path_factory.mktemp(f"export-{request.param}")
    run(config(root / "run", model=request.param))
    out = root / "peft"
    assert main(["export", "--run", str(root / "run"), "--out", str(out)]) == 0
    return root / "run", out


def inputs():
    ids = torch.randint(4, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_fused_export_is_a_rank_2r_adapter_on_the_fused_module(exported):
    from sapt.train import load_trained

    run_dir, out = exported
    cfg, model, names = load_trained(run_dir)
    fused = sorted({n.rpartition(".")[0] for n in model.blocks.layers})
    assert all(n.rpartition(".")[2] in "qv" for n in model.blocks.layers)
    name = FUSED_NAME[cfg.model]
    info = json.loads((out / "router.json").read_text())
    assert info["target_modules"] == [name] and info["adapted_modules"] == info["fused_qkv_modules"] == fused
    r = cfg.lora_r
    for t, task in enumerate(names):
        conf = json.loads((out / task / "adapter_config.json").read_text())
        assert conf["target_modules"] == [name] and conf["r"] == 2 * r and conf["lora_alpha"] == 2 * cfg.lora_alpha
        assert conf["lora_alpha"] / conf["r"] == cfg.lora_alpha / r
        tensors = io.load_tensors(out / task / "adapter_model.safetensors")
        assert set(tensors) == {f"base_model.model.{m}.lora_{x}.weight" for m in fused for x in "AB"}
        for m in fused:
            q, v = model.blocks.layers[f"{m}.q"], model.blocks.layers[f"{m}.v"]
            a, b = tensors[f"base_model.model.{m}.lora_A.weight"], tensors[f"base_model.model.{m}.lora_B.weight"]
            assert torch.equal(a, torch.cat([q.lora_A[t], v.lora_A[t]]))
            rows_q, rows_v = q.base.layout.rows(), v.base.layout.rows()
            assert torch.equal(b[rows_q, :r], q.lora_B[t]) and torch.equal(b[rows_v, r:], v.lora_B[t])
            others = torch.ones_like(b, dtype=torch.bool)
            others[rows_q, :r] = others[rows_v, r:] = False
            assert not b[others].any()


def test_fused_peft_adapter_logits_equal_sapt_routed_one_hot(exported):
    run_dir, out = exported
    outputs = peft_matches_sapt_one_hot(run_dir, out, inputs())
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4  # each folder holds its own task's block


# ---- the translation on its own: Falcon's layouts, and fused and plain modules in one adapter -------------
def falcon(**flags):
    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    return FalconForCausalLM(FalconConfig(vocab_size=260, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          bias=True, pad_token_id=0, eos_token_id=1, bos_token_id=3, **flags))


CASES = {  # the base model, and the LoRA target pattern
    "phi3-qkv-and-o_proj": (lambda: load_model("tiny-phi3").model, r"self_attn\.(qkv_proj|o_proj)$"),
    "neox-qkv-and-dense": (lambda: load_model("tiny-gpt-neox").model, r"attention\.(query_key_value|dense)$"),
    "falcon-per-head": (lambda: falcon(new_decoder_architecture=False, multi_query=False),
                        r"self_attention\.query_key_value$"),
    "falcon-multi-query": (lambda: falcon(new_decoder_architecture=False, multi_query=True),
                           r"self_attention\.query_key_value$"),
    "falcon-40b-style": (lambda: falcon(new_decoder_architecture=True, num_kv_heads=2),
                         r"self_attention\.query_key_value$"),
}


@pytest.mark.parametrize("case", CASES)
def test_peft_state_of_fused_blocks_equals_the_mixture_one_hot(case, tmp_path):
    build, pattern = CASES[case]
    plain = build().eval()
    model = copy.deepcopy(plain)
    state = RoutingState()
    r, alpha = 2, 6.0
    layers = inject_mixture_lora(model, pattern, state, r=r, alpha=alpha)
    g = torch.Generator().manual_seed(3)
    for layer in layers.values():
        for _ in range(2):
            layer.add_block()
        with torch.no_grad():
            for i in range(2):
                layer.lora_A[i].copy_(torch.randn(layer.lora_A[i].shape, generator=g) * 0.3)
                layer.lora_B[i].copy_(torch.randn(layer.lora_B[i].shape, generator=g) * 0.3)
    t = 1
    block = {f"{n}.lora_{x}.weight": getattr(layer, f"lora_{x}")[t].detach().clone()
             for n, layer in layers.items() for x in "AB"}
    fused = fused_modules(block)
    assert fused and set(fused) == {n.rpartition(".")[0] for n in layers if n.endswith((".q", ".v"))
                                   and n.rpartition(".")[0].endswith(("qkv_proj", "query_key_value"))}
    layouts = {m: {p: model.get_submodule(f"{m}.{p}").base.layout for p in "qv"} for m in fused}
    tensors, modules = peft_state(block, layouts)
    targets = sorted({m.rpartition(".")[2] for m in modules})
    fused_targets = sorted({m.rpartition(".")[2] for m in fused})
    conf = adapter_config(SimpleNamespace(lora_r=r, lora_alpha=alpha, lora_dropout=0.0), BaseModelRef("x", 0),
                          "causal", targets, fused_targets)
    mixed = targets != fused_targets
    assert mixed == (case.startswith(("phi3", "neox")))
    assert (conf["r"], conf["lora_alpha"]) == ((r, alpha) if mixed else (2 * r, 2 * alpha))
    assert bool(conf["rank_pattern"]) == bool(conf["alpha_pattern"]) == mixed
    io.save_tensors(tmp_path / "adapter_model.safetensors", tensors, {"format": "pt"})
    io.write_json(tmp_path / "adapter_config.json", conf)

    ids = torch.randint(4, 250, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 9, [1] * 9, [0, 0, 0] + [1] * 6])
    with torch.no_grad():
        bare = plain(input_ids=ids, attention_mask=mask).logits
        state.weights = torch.nn.functional.one_hot(torch.full((3,), t), 2).float()
        expected = model(input_ids=ids, attention_mask=mask).logits
        got = peft.PeftModel.from_pretrained(plain, str(tmp_path)).eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got - bare).abs().max() > 1e-3
