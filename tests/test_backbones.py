"""Today's backbones: the reserved tiny configs, LoRA on fused q/k/v projections, and the error for a model
with no attention projections sapt knows.

The fused layouts are read back from transformers' own attention code (`probe_rows`), not from
`sapt.modules.blocks.lora.fused`: the layer whose output is 0, 1, 2, ... shows which of its positions the
attention takes as q, k and v. A model with the fused Linear split into separate q/k/v Linears at those
positions, with ordinary mixture LoRA on q and v, is the reference the fused layer must equal.
"""
import copy
import json
import re

import pytest
import torch
from conftest import tiny_config
from torch import nn

from sapt.cli import main
from sapt.models import LoadedModel, ModelLoadError, byte_tokenizer, load_model
from sapt.modules.blocks import RoutingState
from sapt.modules.blocks.lora import MixtureLoRALinear, inject_mixture_lora
from sapt.modules.blocks.targets import TARGET_PATTERNS, find_targets
from sapt.modules.blocks.lora.fused import FusedQKVLoRA, qkv_layouts
from sapt.modules.merge import merged
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel

NEW_TINY = ["tiny-qwen2", "tiny-gemma", "tiny-phi3", "tiny-gpt-neox"]
EXPECTED_TARGETS = {
    "tiny-qwen2": "model.layers.{i}.self_attn.{p}_proj",
    "tiny-gemma": "model.layers.{i}.self_attn.{p}_proj",
    "tiny-phi3": "model.layers.{i}.self_attn.qkv_proj.{p}",
    "tiny-gpt-neox": "gpt_neox.layers.{i}.attention.query_key_value.{p}",
}
SPLIT_PATTERN = r"(qkv_proj|query_key_value)\.(q|v)$"  # ordinary LoRA on the split model's q and v Linears


def falcon(**flags):
    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    config = FalconConfig(vocab_size=260, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, bias=True,
                          pad_token_id=0, eos_token_id=1, bos_token_id=3, **flags)
    return FalconForCausalLM(config)


FUSED = {
    "tiny-phi3": lambda: load_model("tiny-phi3").model,
    "tiny-gpt-neox": lambda: load_model("tiny-gpt-neox").model,
    "falcon-per-head": lambda: falcon(new_decoder_architecture=False, multi_query=False),
    "falcon-multi-query": lambda: falcon(new_decoder_architecture=False, multi_query=True),
    "falcon-40b-style": lambda: falcon(new_decoder_architecture=True, num_kv_heads=2),
}


# ---- the layouts, as transformers' attention reads them --------------------------------------------------
class _Positions(nn.Module):
    """Stands in for a fused Linear: output position j holds the number j."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return torch.arange(self.n, dtype=x.dtype).expand(*x.shape[:-1], self.n).clone()


def probe_rows(model: nn.Module) -> dict[str, list[int]]:
    """The fused output positions that the first attention takes as q, k and v, head by head (a key or value
    head shared by several query heads counted once), on one token (rotary is the identity at position 0).

    The attention is read through transformers' public attention interface: a registered attention function
    sees the query, key and value every model hands to its attention (batch, heads, seq, d); this is the
    documented way to add one. An earlier probe
    patched Falcon's private `_split_heads`, which transformers 5.24 removed. A model whose attention does not
    go through the interface (Falcon before transformers 5) is read where its SDPA path hands the same three
    tensors to torch's public `scaled_dot_product_attention`."""
    name = find_targets(model, TARGET_PATTERNS["causal"])[0]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    linear = getattr(parent, child)
    seen = []
    setattr(parent, child, _Positions(linear.out_features))
    try:
        _forward_through_attention_interface(model, seen)
        if not seen:
            _forward_through_torch_sdpa(model, seen)
    finally:
        setattr(parent, child, linear)
    rows = {}
    for part, t in zip("qkv", seen[0]):
        heads = [tuple(h.long().tolist()) for h in t]
        rows[part] = [j for h in dict.fromkeys(heads) for j in h]
    return rows


def _forward_through_attention_interface(model: nn.Module, seen: list) -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def capture(module, query, key, value, attention_mask, **kwargs):
        seen.append([t[0, :, 0] for t in (query, key, value)])
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("sapt_probe", capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation("sapt_probe")
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[5]]))
    finally:
        model.set_attn_implementation(previous)


def _forward_through_torch_sdpa(model: nn.Module, seen: list) -> None:
    original = torch.nn.functional.scaled_dot_product_attention

    def capture(query, key, value, *args, **kwargs):
        seen.append([t[0, :, 0] for t in (query, key, value)])
        return original(query, key, value, *args, **kwargs)

    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    torch.nn.functional.scaled_dot_product_attention = capture
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[5]]))
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
        model.set_attn_implementation(previous)


@pytest.mark.parametrize("name", FUSED)
def test_fused_layouts_are_the_ones_transformers_attention_reads(name):
    model = FUSED[name]()
    rows = probe_rows(model)
    linear = model.get_submodule(find_targets(model, TARGET_PATTERNS["causal"])[0])
    assert sorted(rows["q"] + rows["k"] + rows["v"]) == list(range(linear.out_features))  # a partition
    child = find_targets(model, TARGET_PATTERNS["causal"])[0].rpartition(".")[2]
    layouts = qkv_layouts(model.config, child, linear.out_features)
    assert layouts["q"].rows().tolist() == rows["q"]
    assert layouts["v"].rows().tolist() == rows["v"]


# ---- fused LoRA == split q/k/v Linears with ordinary LoRA on q and v ------------------------------------
class SplitQKV(nn.Module):
    """A fused q/k/v Linear as three Linears whose outputs are put back at their positions."""

    def __init__(self, fused: nn.Linear, rows: dict[str, list[int]]):
        super().__init__()
        self.n = fused.out_features
        self.rows = {p: torch.tensor(r) for p, r in rows.items()}
        for p, r in self.rows.items():
            lin = nn.Linear(fused.in_features, len(r), bias=fused.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(fused.weight[r])
                if fused.bias is not None:
                    lin.bias.copy_(fused.bias[r])
            setattr(self, p, lin)

    def forward(self, x):
        out = x.new_zeros(*x.shape[:-1], self.n)
        for p in "qkv":
            out[..., self.rows[p]] = getattr(self, p)(x)
        return out


def fused_and_split(name, n_blocks=2, seed=0):
    """The same backbone twice with the same LoRA blocks: fused-qkv LoRA, and split q/k/v with LoRA on q, v."""
    model = FUSED[name]()
    model.requires_grad_(False)
    rows = probe_rows(model)
    split = copy.deepcopy(model)
    for target in find_targets(split, TARGET_PATTERNS["causal"]):
        parent_name, _, child = target.rpartition(".")
        parent = split.get_submodule(parent_name)
        setattr(parent, child, SplitQKV(getattr(parent, child), rows))
    split.requires_grad_(False)
    plain = copy.deepcopy(model)
    fstate, sstate = RoutingState(), RoutingState()
    fl = inject_mixture_lora(model, TARGET_PATTERNS["causal"], fstate, r=2, alpha=6)
    sl = inject_mixture_lora(split, SPLIT_PATTERN, sstate, r=2, alpha=6)
    assert list(fl) == list(sl)  # the same names: <module>.q, <module>.v
    assert all(type(layer) is MixtureLoRALinear for layer in sl.values())  # ordinary LoRA there
    g = torch.Generator().manual_seed(seed)
    for n in fl:
        for _ in range(n_blocks):
            fl[n].add_block()
            sl[n].add_block()
        with torch.no_grad():
            for i in range(n_blocks):
                for ab in ("lora_A", "lora_B"):
                    value = torch.randn(getattr(fl[n], ab)[i].shape, generator=g) * 0.3
                    getattr(fl[n], ab)[i].copy_(value)
                    getattr(sl[n], ab)[i].copy_(value)
    return (model, fl, fstate), (split, sl, sstate), plain


INPUTS = torch.randint(4, 250, (3, 9), generator=torch.Generator().manual_seed(1))
MASK = torch.tensor([[1] * 9, [1] * 9, [0, 0, 0] + [1] * 6])
WEIGHTS = torch.softmax(torch.randn(3, 2, generator=torch.Generator().manual_seed(2)), dim=-1)


@pytest.mark.parametrize("name", FUSED)
def test_fused_qkv_lora_equals_split_projections_with_lora_on_q_and_v(name):
    (model, fl, fstate), (split, _, sstate), plain = fused_and_split(name)
    assert all(isinstance(model.get_submodule(n.rpartition(".")[0]), FusedQKVLoRA) for n in fl)
    fstate.weights = sstate.weights = WEIGHTS
    with torch.no_grad():
        ours = model(input_ids=INPUTS, attention_mask=MASK).logits
        theirs = split(input_ids=INPUTS, attention_mask=MASK).logits
        bare = plain(input_ids=INPUTS, attention_mask=MASK).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert (ours - bare).abs().max() > 1e-3  # the blocks do change the output


@pytest.mark.parametrize("name", ["tiny-phi3", "tiny-gpt-neox", "falcon-40b-style"])
def test_fused_qkv_gradients_reach_only_the_q_and_v_blocks_and_equal_the_split_models(name):
    (model, fl, fstate), (split, sl, sstate), _ = fused_and_split(name)
    grads = []
    for net, layers, state in ((model, fl, fstate), (split, sl, sstate)):
        for layer in layers.values():
            layer.requires_grad_(False)
            layer.lora_A[1].requires_grad_(True)  # block 1 trains, block 0 stays
            layer.lora_B[1].requires_grad_(True)
        w = WEIGHTS.clone().requires_grad_(True)
        state.weights = w
        net(input_ids=INPUTS, attention_mask=MASK).logits.square().mean().backward()
        got = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
        grads.append((got, w.grad))
    (fgrads, fw), (sgrads, sw) = grads
    assert set(fgrads) == {f"{n}.lora_{ab}.1" for n in fl for ab in "AB"}  # nothing else: no k, no base
    assert set(fgrads) == set(sgrads)
    for n in fgrads:
        assert fgrads[n].abs().max() > 0
        assert torch.allclose(fgrads[n], sgrads[n], atol=1e-6, rtol=1e-4), n
    assert torch.allclose(fw, sw, atol=1e-6, rtol=1e-4)  # and the router's gradient, through every block


@pytest.mark.parametrize("name", ["tiny-phi3", "tiny-gpt-neox"])
def test_merging_a_fused_qkv_mixture_equals_the_unmerged_model_and_restores_the_weights(name):
    torch.manual_seed(0)
    model = SAPTModel(load_model(name), LoRABlocks(LoRAConfig(r=2)))
    model.add_task("a")
    model.add_task("b")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.blocks.layers.values():
            for p in [*layer.lora_A, *layer.lora_B]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ids = INPUTS[:1]
    w = torch.tensor([[0.3, 0.7]])
    fused = [m for m in model.base.modules() if isinstance(m, FusedQKVLoRA)]
    before = [(m.base.weight, m.base.weight.data_ptr(), m.base.weight.detach().clone()) for m in fused]
    with torch.no_grad():
        with model.routed(w):
            unmerged = model.base(input_ids=ids).logits
        with merged(model, w):
            merged_logits = model.base(input_ids=ids).logits
            for m, (_, _, copy_) in zip(fused, before):
                k = sorted(set(range(copy_.shape[0])) - set(m.q.base.layout.rows().tolist())
                           - set(m.v.base.layout.rows().tolist()))
                assert torch.equal(m.base.weight[k], copy_[k])  # the k rows are untouched
                assert not torch.equal(m.base.weight, copy_)
            with pytest.raises(RuntimeError, match="merged"):
                model.base(input_ids=INPUTS[:2])
    assert torch.allclose(merged_logits, unmerged, atol=1e-5, rtol=0)
    for param, ptr, copy_ in before:
        assert param.data_ptr() == ptr and torch.equal(param, copy_)  # the original tensors, put back


# ---- the reserved tiny backbones ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_TINY)
def test_tiny_backbones_load_offline_as_causal_and_adapt_q_and_v(name):
    loaded = load_model(name)
    assert loaded.family == "causal" and loaded.name == name
    params = sum(p.numel() for p in loaded.model.parameters())
    assert 5e4 < params < 1e6
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    a, b = load_model(name, seed=0), load_model(name, seed=1)
    assert torch.equal(next(a.model.parameters()), next(loaded.model.parameters()))  # seeded, reproducible
    assert not torch.equal(next(a.model.parameters()), next(b.model.parameters()))
    model = SAPTModel(loaded, LoRABlocks(LoRAConfig(r=2)))
    expected = {EXPECTED_TARGETS[name].format(i=i, p=p) for i in range(2) for p in "qv"}
    assert set(model.blocks.layers) == expected


@pytest.mark.parametrize("name", NEW_TINY)
def test_two_task_run_on_each_new_tiny_backbone(name, tmp_path):
    from sapt import io
    from sapt.train import load_trained, run

    out = tmp_path / "run"
    run(tiny_config(out, model=name, tasks=["topic", "sentiment"]))
    m = json.loads((out / "metrics.json").read_text())
    assert m["tasks"] == ["topic", "sentiment"] and len(m["matrix"]) == 2 and m["matrix"][1][1] is not None
    expected = {EXPECTED_TARGETS[name].format(i=i, p=p) for i in range(2) for p in "qv"}
    for sdir in sorted((out / "stages").iterdir()):
        adapter = io.load_tensors(sdir / "adapter.safetensors")
        assert set(adapter) == {f"{n}.lora_{ab}.weight" for n in expected for ab in "AB"}
    _, model, names = load_trained(out)
    assert names == ["topic", "sentiment"] and model.n_tasks == 2


# ---- a model with no attention projections sapt knows --------------------------------------------------
def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=1, n_head=2, n_positions=64))


def test_a_model_without_recognised_attention_projections_is_a_clear_error():
    with pytest.raises(ModelLoadError, match=r"model type 'gpt2' has no recognised attention projections"):
        SAPTModel(LoadedModel(_gpt2(), byte_tokenizer(), "causal", "gpt2-like"))
    with pytest.raises(ModelLoadError, match=r"model type 'gpt2'.* matches the LoRA target pattern"):
        SAPTModel(LoadedModel(_gpt2(), byte_tokenizer(), "causal", "gpt2-like"), LoRABlocks(LoRAConfig(target_pattern=r"\.nothing$")))


def test_a_fused_query_key_value_of_an_unknown_layout_is_a_clear_error():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=260, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(ModelLoadError, match=r"model type 'bloom': the fused projection 'query_key_value' has no known"):
        SAPTModel(LoadedModel(bloom, byte_tokenizer(), "causal", "bloom-like"))


def test_the_cli_names_the_model_type_in_one_line(tmp_path, capsys):
    path = tmp_path / "gpt2-like"
    _gpt2().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    capsys.readouterr()  # save_pretrained's progress bar
    rc = main(["run", "--model", str(path), "--tasks", "topic", "--epochs", "1", "--max-train-per-task", "4",
               "--max-eval-per-task", "2", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()  # transformers' loading progress bar, then the error
    assert rc == 2
    assert [line for line in err if line.startswith("sapt: error:")] == err[-1:]
    assert re.match(r"sapt: error: model type 'gpt2' has no recognised attention projections", err[-1])
    assert not (tmp_path / "run").exists()  # nothing left behind
