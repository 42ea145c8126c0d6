"""Logits of the answer positions only: the same loss and gradients as transformers' full-logit loss;
the LM head's contiguous input changes no output; a bfloat16 backbone trains float32 blocks."""
import pytest
import torch

from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel
from sapt.modules.target_logits import causal_lm_loss, head_positions


def mixture(n_tasks: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0) -> SAPTModel:
    torch.manual_seed(seed)
    model = SAPTModel(load_model("tiny-llama", dtype=dtype), LoRABlocks(LoRAConfig(r=4)))
    for i in range(n_tasks):
        model.add_task(f"t{i}")
    with torch.no_grad():  # trained-looking blocks: B is zero at initialisation
        for layer in model.blocks.layers.values():
            for b in layer.lora_B:
                b.normal_(std=0.1)
    return model


def ragged_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Three right-padded rows: prompts of 7, 5 and 9 tokens, answers of 3, 4 and 1, padding after."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (3, 12), generator=g)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate([(7, 3), (5, 4), (9, 1)]):
        labels[row, prompt:prompt + answer] = ids[row, prompt:prompt + answer]
        mask[row, :prompt + answer] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_loss_and_every_trainable_gradient_equal_the_full_logit_loss():
    model = mixture()
    batch = ragged_batch()
    weights = torch.tensor([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    trainable = model.trainable_parameters()
    with model.routed(weights):
        full = model.base(**batch).loss
        full_grads = torch.autograd.grad(full, trainable, allow_unused=True)
        mine = causal_lm_loss(model.base, **batch)
        my_grads = torch.autograd.grad(mine, trainable, allow_unused=True)
    assert torch.allclose(mine, full, atol=1e-6, rtol=1e-6)
    used = 0
    for a, b in zip(full_grads, my_grads):
        assert (a is None) == (b is None)
        if a is not None:
            used += 1
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert used > 0
    # and through SAPTModel, routed by the router (a gradient to the query MLP too)
    model.zero_grad()
    routed = model({**batch, "prompt_mask": batch["attention_mask"]})
    assert torch.isfinite(routed) and routed.requires_grad


def test_head_positions_projects_only_the_kept_positions_and_is_removed_after():
    model = mixture()
    batch = ragged_batch()
    keep = torch.zeros(3, 12, dtype=torch.bool)
    keep[0, 2], keep[2, 5], keep[2, 6] = True, True, True
    with torch.no_grad(), model.routed(torch.full((3, 2), 0.5)):
        full = model.base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with head_positions(model.base, keep):
            kept = model.base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        after = model.base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert kept.shape == (3, full.shape[-1])
    assert torch.allclose(kept, full[keep], atol=1e-5)
    assert torch.equal(after, full)


def test_generation_is_unchanged_by_the_contiguous_head_input():
    model = mixture()
    prompts = {"input_ids": torch.tensor([[0, 0, 9, 8, 7], [3, 4, 5, 6, 7]]),
               "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    prompts["prompt_mask"] = prompts["attention_mask"]
    texts, _ = model.generate(prompts, 6)
    head = model.base.get_output_embeddings()
    hooks = dict(head._forward_pre_hooks)
    head._forward_pre_hooks.clear()  # without the hook: transformers' own non-contiguous slice
    try:
        plain, _ = model.generate(prompts, 6)
    finally:
        head._forward_pre_hooks.update(hooks)
    assert texts == plain


def test_bfloat16_backbone_keeps_float32_blocks_and_a_loss_close_to_float32():
    f32, b16 = mixture(dtype=torch.float32), mixture(dtype=torch.bfloat16)
    assert b16.base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in b16.trainable_parameters())
    batch = {**ragged_batch(), "prompt_mask": ragged_batch()["attention_mask"]}
    weights = torch.tensor([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    loss32, loss16 = f32(batch, weights), b16(batch, weights)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    loss16.backward()
    grads = [p.grad for p in b16.trainable_parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
