"""Tokenise examples once and pad them into batches for each model family.

Causal LMs see `prompt + answer + EOS` with the loss on the answer only, right-padded for training and
left-padded for generation. Seq2seq models see the prompt in the encoder and `answer + EOS` as labels.
`prompt_mask` marks the prompt tokens the router pools over (never the answer, never padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sapt.data import Example, format_prompt


@dataclass(frozen=True)
class Encoded:
    prompt: list[int]
    target: list[int]  # the first reference + EOS


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """Keep the start (the task definition) and the end (the input's tail and "Output:")."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head):]


def encode(
    tokenizer, family: str, definition: str, examples: Sequence[Example], max_source: int, max_target: int,
    template: str | None = None,
) -> list[Encoded]:
    """Each example as prompt ids (the template `template`, a key of sapt.data.PROMPT_TEMPLATES, None for
    the family's; cut in the middle to `max_source`) and target ids (its first reference cut to
    `max_target` - 1 tokens, then EOS). Callers pass the model's `SAPTModel.template`."""
    if not examples:
        return []
    prompts = [format_prompt(definition, ex.input, family, template) for ex in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer([ex.outputs[0] for ex in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, t in zip(prompt_ids, target_ids):
        if family == "causal" and p and p[-1] == eos:
            p = p[:-1]  # some tokenizers append EOS to every text; the answer must follow the prompt
        out.append(Encoded(truncate_middle(list(p), max_source), list(t)[: max_target - 1] + [eos]))
    return out


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def collate_train(items: Sequence[Encoded], family: str, pad_id: int) -> dict[str, torch.Tensor]:
    if family == "seq2seq":
        input_ids = _pad([e.prompt for e in items], pad_id)
        mask = _pad([[1] * len(e.prompt) for e in items], 0)
        return {"input_ids": input_ids, "attention_mask": mask, "prompt_mask": mask,
                "labels": _pad([e.target for e in items], -100)}
    seqs = [e.prompt + e.target for e in items]
    return {
        "input_ids": _pad(seqs, pad_id),
        "attention_mask": _pad([[1] * len(s) for s in seqs], 0),
        "prompt_mask": _pad([[1] * len(e.prompt) + [0] * len(e.target) for e in items], 0),
        "labels": _pad([[-100] * len(e.prompt) + e.target for e in items], -100),
    }


def collate_prompts(items: Sequence[Encoded], family: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts only, for generation: left-padded for causal LMs so every row ends where decoding starts."""
    left = family == "causal"
    input_ids = _pad([e.prompt for e in items], pad_id, left=left)
    mask = _pad([[1] * len(e.prompt) for e in items], 0, left=left)
    return {"input_ids": input_ids, "attention_mask": mask, "prompt_mask": mask}


def length_sorted_batches(items: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Index batches of similar prompt length (less padding); callers restore the original order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
