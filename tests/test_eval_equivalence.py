"""Evaluation's fast path gives the greedy answers of the straightforward one (issue 28, item 2).

The fast path is `sapt.evaluation.generation.predict`: prompts grouped by length into batches, left-padded, the
routing weights computed once per input (from the padded batch), transformers' generate with its KV
cache, each answer ending at EOS or (stop_at_newline) at its first stop token, the batch ending when
every answer has. The straightforward path answers one prompt at a time, unpadded, with no cache: the
whole sequence through the backbone at every step, argmax of the last position, stop at EOS / the stop
token. On a float32 tiny model both must give the same answers and the same mixing weights, for SAPT's
routing and for a method that gives its weights (`weights_fn`), with answers that end at different steps
in one batch.
"""
import random

import pytest
import torch

from sapt.batching import Encoded
from sapt.evaluation.generation import predict
from sapt.methods import make_method
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel

MAX_NEW = 6


def tiny_model(n_tasks=3, seed=0):
    torch.manual_seed(seed)
    model = SAPTModel(load_model("tiny-llama", seed=seed), block_type=LoRABlocks(LoRAConfig(r=2)))
    for t in range(n_tasks):
        model.add_task(f"t{t}")
    with torch.no_grad():  # blocks that change the answers, a router that does not route uniformly
        for layer in model.blocks.layers.values():
            for b in layer.lora_B:
                b.normal_(0, 0.5)
        for p in model.router.parameters():
            p.normal_(0, 1.0)
    return model.eval()


def prompts(model, n=11, seed=0):
    """Prompts of 3 to 20 tokens (so the batches pad), each a BOS then random byte tokens."""
    rng = random.Random(seed)
    vocab = len(model.tokenizer)
    return [Encoded([3] + [rng.randrange(4, vocab) for _ in range(rng.randrange(2, 20))], [1])
            for _ in range(n)]


@torch.no_grad()
def straightforward(model, item, weights, stop_tokens=()):
    """One prompt, unpadded, no cache: the full sequence through the backbone at every step."""
    ids = list(item.prompt)
    new = []
    with model.routed(weights):
        for _ in range(MAX_NEW):
            logits = model.base(input_ids=torch.tensor([ids])).logits
            token = int(logits[0, -1].argmax())
            new.append(token)
            ids.append(token)
            if token == model.tokenizer.eos_token_id or token in stop_tokens:
                break
    text = model.tokenizer.decode(new, skip_special_tokens=True)
    if stop_tokens:
        text = text.split("\n", 1)[0]
    return text.strip(), new


def single_batch(item):
    mask = torch.ones(1, len(item.prompt), dtype=torch.long)
    return {"input_ids": torch.tensor([item.prompt]), "attention_mask": mask, "prompt_mask": mask}


def stop_tokens_ending_at_different_steps(model, items, weights_of):
    """Tokens to mark as line breaks so that, in the straightforward answers, some end at their first
    step and others later: a batch holds answers that end at different steps."""
    ids = [straightforward(model, it, weights_of(it))[1] for it in items]
    return {ids[0][0], ids[1][min(2, len(ids[1]) - 1)]}


def check_equal(model, items, weights_fn, weights_of, batch_size):
    for stop_at_newline in (False, True):
        stops = set()
        if stop_at_newline:
            stops = stop_tokens_ending_at_different_steps(model, items, weights_of)
            model._newline_tokens = torch.zeros(len(model.tokenizer), dtype=torch.bool)
            model._newline_tokens[list(stops)] = True
        fast, weights = predict(model, items, batch_size, MAX_NEW, weights_fn=weights_fn,
                                stop_at_newline=stop_at_newline)
        slow = [straightforward(model, it, weights_of(it), stops) for it in items]
        assert fast == [text for text, _ in slow]
        for k, it in enumerate(items):
            torch.testing.assert_close(weights[k], weights_of(it)[0].float(), rtol=1e-5, atol=1e-6)
        if stop_at_newline:
            steps = {len(new) for _, new in slow}
            assert len(steps) >= 2 and min(steps) == 1  # answers of one batch end at different steps
        model._newline_tokens = None


@pytest.mark.parametrize("batch_size", [4, 16])
def test_sapt_routing_fast_path_equals_one_prompt_at_a_time(batch_size):
    model = tiny_model()
    items = prompts(model)
    weights_of = lambda it: model.routing_weights(single_batch(it)["input_ids"], single_batch(it)["prompt_mask"])  # noqa: E731
    with torch.no_grad():
        check_equal(model, items, None, weights_of, batch_size)


@pytest.mark.parametrize("method_name,index", [("per-task", 1), ("inc-lora", 2)])
def test_weights_fn_fast_path_equals_one_prompt_at_a_time(method_name, index):
    model = tiny_model()
    items = prompts(model, seed=1)
    method = make_method(method_name)
    weights_fn = lambda batch: method.weights(model, batch, index, training=False)  # noqa: E731
    weights_of = lambda it: weights_fn(single_batch(it))  # noqa: E731
    check_equal(model, items, weights_fn, weights_of, 4)
