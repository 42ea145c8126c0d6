"""The fast mixture layer and the merge give the straightforward results (issue "Speed").

The reference is the naive version: a Python loop over the T blocks, each as its own autograd graph.
"""
import copy

import pytest
import torch

from sapt import io
from sapt.batching import collate_prompts, collate_train, encode
from sapt.data import Example
from sapt.models import load_model
from sapt.modules.merge import merged
from sapt.modules.blocks import RoutingState
from sapt.modules.blocks.lora import MixtureLoRALinear
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel

EXAMPLES = [Example("the cat sat on the mat", ("yes",)), Example("a dog", ("no answer here",)),
            Example("what is 2 + 2?", ("4",))]
TOL = 1e-5


def naive_forward(layer: MixtureLoRALinear, x: torch.Tensor) -> torch.Tensor:
    out = layer.base(x)
    if layer.n_blocks == 0:
        return out
    w = layer.state.for_batch(x.shape[0])
    xd = layer.dropout(x)
    for i in range(layer.n_blocks):
        d = (xd @ layer.lora_A[i].t()) @ layer.lora_B[i].t()
        out = out + w[:, i].view(-1, *[1] * (x.dim() - 1)) * layer.scaling * d
    return out


def make_layer(n_blocks=4, trainable=(3,), n_in=12, n_out=7, r=3, seed=1, dropout=0.0):
    torch.manual_seed(seed)
    layer = MixtureLoRALinear(torch.nn.Linear(n_in, n_out), RoutingState(), r=r, alpha=6, dropout=dropout)
    layer.base.requires_grad_(False)
    for _ in range(n_blocks):
        layer.add_block()
    with torch.no_grad():
        for p in layer.lora_B:
            p.normal_()
    for i in range(n_blocks):
        layer.lora_A[i].requires_grad_(i in trainable)
        layer.lora_B[i].requires_grad_(i in trainable)
    return layer


def run_both(layer, x_shape, seed=2):
    """Output and gradients (x, routing logits, every block) of the fast layer and of the naive loop."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*x_shape, generator=g)
    logits0 = torch.randn(x_shape[0], layer.n_blocks, generator=g)
    results = []
    for fn in (lambda l, x: l(x), naive_forward):
        lay = copy.deepcopy(layer)
        x = x0.clone().requires_grad_(True)
        logits = logits0.clone().requires_grad_(True)
        lay.state.weights = torch.softmax(logits, dim=-1)
        torch.manual_seed(seed)  # the same dropout mask for both
        y = fn(lay, x)
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
        (y * upstream).sum().backward()
        grads = {f"{n}.{i}": p.grad for n in ("lora_A", "lora_B") for i, p in enumerate(getattr(lay, n))}
        results.append((y.detach(), x.grad, logits.grad, grads))
    return results


@pytest.mark.parametrize("x_shape", [(5, 9, 12), (5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("trainable", [(3,), (), (0, 2), (0, 1, 2, 3)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_layer_matches_the_loop_in_output_and_every_gradient(x_shape, trainable, dropout):
    layer = make_layer(trainable=trainable, dropout=dropout)
    (y, gx, gl, grads), (y_ref, gx_ref, gl_ref, grads_ref) = run_both(layer, x_shape)
    assert torch.allclose(y, y_ref, atol=TOL, rtol=0)
    assert torch.allclose(gx, gx_ref, atol=TOL, rtol=0)
    assert torch.allclose(gl, gl_ref, atol=TOL, rtol=0)  # the router learns through frozen blocks too
    for k, ref in grads_ref.items():
        i = int(k.split(".")[1])
        if i in trainable:
            assert grads[k] is not None and grads[k].shape == ref.shape
            assert torch.allclose(grads[k], ref, atol=TOL, rtol=0), k
        else:
            assert grads[k] is None, f"frozen block {k} got a gradient"


def test_inference_path_and_delta_match_the_loop():
    layer = make_layer()
    x = torch.randn(4, 6, 12)
    w = torch.softmax(torch.randn(4, 4), dim=-1)
    layer.state.weights = w
    with torch.no_grad():
        y = layer(x)
        d = layer.delta(x, w)
        y_ref = naive_forward(layer, x)
    assert torch.allclose(y, y_ref, atol=TOL, rtol=0)
    assert torch.allclose(d, y_ref - layer.base(x), atol=TOL, rtol=0)
    # grad mode with nothing requiring grad takes the same path
    frozen = make_layer(trainable=())
    frozen.state.weights = w
    assert torch.allclose(frozen(x), naive_forward(frozen, x), atol=TOL, rtol=0)


def test_layer_follows_blocks_changed_in_place_replaced_added_or_moved():
    layer = make_layer(trainable=(3,))
    x = torch.randn(3, 5, 12)
    layer.state.weights = torch.softmax(torch.randn(3, 4), dim=-1)

    def check(lay):
        with torch.no_grad():
            assert torch.allclose(lay(x.to(lay.lora_A[0].dtype)).float(),
                                  naive_forward(lay, x.to(lay.lora_A[0].dtype)).float(), atol=TOL, rtol=0)

    check(layer)
    # an optimiser step (in place, on the trainable block)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    layer(x).sum().backward()
    opt.step()
    check(layer)
    # in-place loads of a frozen block, also through .data
    with torch.no_grad():
        layer.lora_A[1].copy_(0.3 * torch.randn(3, 12))
    layer.lora_B[0].data.normal_(std=0.3)
    check(layer)
    # storage replaced: p.data =, load_state_dict(assign=True), a new parameter in the list
    layer.lora_B[2].data = 0.3 * torch.randn(7, 3)
    check(layer)
    sd = {k: 0.3 * torch.randn_like(v) if "lora_" in k else v for k, v in layer.state_dict().items()}
    layer.load_state_dict(sd, assign=True)
    check(layer)
    layer.lora_A[0] = torch.nn.Parameter(0.3 * torch.randn(3, 12))
    check(layer)
    # a block added: the old ones keep their values
    before = [p.detach().clone() for p in layer.lora_A]
    layer.add_block()
    layer.state.weights = torch.softmax(torch.randn(3, 5), dim=-1)
    assert all(torch.equal(b, p) for b, p in zip(before, layer.lora_A))
    check(layer)
    # copies and dtype conversion
    check(copy.deepcopy(layer))
    check(copy.deepcopy(layer).double())


def test_frozen_blocks_are_not_saved_for_backward():
    """What autograd keeps: x and h = x A^T (T*r numbers per token), never a copy of the blocks."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    layer = make_layer(n_blocks=15, trainable=(14,), n_in=64, n_out=48, r=4)
    x = torch.randn(2, 10, 64, requires_grad=True)
    layer.state.weights = torch.softmax(torch.randn(2, 15, requires_grad=True), dim=-1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    A, Bt = layer.stacks()
    stack_ptrs = {A.untyped_storage().data_ptr(), Bt.untyped_storage().data_ptr()}
    big = [t for t in saved if t.untyped_storage().data_ptr() not in stack_ptrs and t.numel() >= A.numel()]
    assert all(t.numel() in (x.numel(), 2 * 10 * 15 * 4) for t in big), [t.shape for t in big]
    assert sum(t.numel() for t in saved if t.shape == (2, 10, 60)) == 2 * 10 * 60  # h, once


def tiny_sapt(name, n_tasks=3, seed=0, scale=0.1):
    torch.manual_seed(seed)
    model = SAPTModel(load_model(name), LoRABlocks(LoRAConfig(r=4, alpha=32)))
    for t in range(n_tasks):
        model.add_task(f"t{t}")
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for layer in model.blocks.layers.values():
            for p in list(layer.lora_A) + list(layer.lora_B):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        for k in model.router.keys:
            k.copy_(torch.randn(k.shape, generator=g))
    return model


def train_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_sapt_model_loss_gradients_and_generation_match_the_loop(name, dtype, monkeypatch):
    # float32: to 1e-5. float64, with larger blocks: to 1e-9, i.e. the same arithmetic, reordered.
    tol = TOL if dtype == torch.float32 else 1e-9
    model = tiny_sapt(name, scale=0.1 if dtype == torch.float32 else 0.3).to(dtype)
    model.eval()  # the backbone's own dropout (T5) would make the two passes differ
    items = encode(model.tokenizer, model.family, "Answer.", EXAMPLES, 128, 16)
    batch = collate_train(items, model.family, model.tokenizer.pad_token_id)
    prompts = collate_prompts(items, model.family, model.tokenizer.pad_token_id)
    loss, grads = train_grads(model, batch)
    texts, w = model.generate(prompts, max_new_tokens=8)
    with monkeypatch.context() as m:
        m.setattr(MixtureLoRALinear, "forward", naive_forward)
        loss_ref, grads_ref = train_grads(model, batch)
        texts_ref, w_ref = model.generate(prompts, max_new_tokens=8)
    assert torch.allclose(loss, loss_ref, atol=tol, rtol=0)
    assert grads.keys() == grads_ref.keys() and any(".lora_B.2" in k for k in grads)
    assert any(k.startswith("router.query_mlp") for k in grads)
    for k in grads:
        assert torch.allclose(grads[k], grads_ref[k], atol=tol, rtol=0), k
    assert texts == texts_ref and torch.equal(w, w_ref)


def test_two_backward_passes_under_one_routing():
    model = tiny_sapt("tiny-llama")
    items = encode(model.tokenizer, model.family, "Answer.", EXAMPLES, 128, 16)
    batch = collate_train(items, model.family, model.tokenizer.pad_token_id)
    w = model.routing_weights(batch["input_ids"], batch["prompt_mask"]).detach().requires_grad_(True)
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with model.routed(w):
        model.base(**args).loss.backward()
        first = w.grad.clone()
        model.base(**args).loss.backward()  # would fail if the layers reused the first pass's scales graph
    assert torch.allclose(w.grad, 2 * first, atol=1e-6)


def test_block_state_round_trips_through_safetensors(tmp_path):
    model = tiny_sapt("tiny-llama")
    state = model.block_state(1)
    io.save_tensors(tmp_path / "a.safetensors", state)
    back = io.load_tensors(tmp_path / "a.safetensors")
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    other = tiny_sapt("tiny-llama", seed=5)
    other.load_block(1, back)
    assert all(torch.equal(v, other.block_state(1)[k]) for k, v in state.items())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_merged_equals_unmerged_and_restores_the_weights_bit_for_bit(name):
    model = tiny_sapt(name, n_tasks=4)
    model.eval()
    items = encode(model.tokenizer, model.family, "Answer.", EXAMPLES[:1], 128, 16)
    batch = collate_train(items, model.family, model.tokenizer.pad_token_id)
    prompt = collate_prompts(items, model.family, model.tokenizer.pad_token_id)
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    with torch.no_grad():
        w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
        with model.routed(w):
            plain = model.base(**args).logits
        texts, _ = model.generate(prompt, max_new_tokens=8)
        with merged(model, w):
            assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
            with model.routed(w):
                fused = model.base(**args).logits
            texts_merged, w_merged = model.generate(prompt, max_new_tokens=8)
            with pytest.raises(RuntimeError, match="one input"):
                two = collate_prompts(items * 2, model.family, model.tokenizer.pad_token_id)
                model.generate(two, max_new_tokens=2)
    assert torch.allclose(fused, plain, atol=TOL, rtol=0)
    assert texts_merged == texts and torch.equal(w_merged, w)
    assert not model.state.merged
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.data_ptr() == ptrs[n], n


def test_merge_is_undone_after_an_error_and_rejects_batches():
    model = tiny_sapt("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="one input"):
        with merged(model, torch.full((2, 3), 1 / 3)):
            pass
    with pytest.raises(KeyError):
        with merged(model, torch.full((1, 3), 1 / 3)):
            raise KeyError("boom")
    assert not model.state.merged
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_inference_mode_generation_and_a_rebuild_inside_it():
    layer = make_layer(trainable=(3,))
    x = torch.randn(2, 5, 12)
    layer.state.weights = torch.softmax(torch.randn(2, 4), dim=-1)
    with torch.no_grad():
        expected = naive_forward(layer, x)
    layer.lora_A[2].data = layer.lora_A[2].data.clone()  # forces a rebuild at the next call
    with torch.inference_mode():
        layer.state.weights = layer.state.weights.clone()  # an inference tensor
        assert torch.allclose(layer(x), expected, atol=TOL, rtol=0)
    layer.state.weights = layer.state.weights.clone()
    assert not any(p.is_inference() for p in layer.parameters())
    layer(x).sum().backward()  # still trainable after a rebuild in inference mode
    assert layer.lora_A[3].grad is not None
