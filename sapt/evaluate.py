"""Score a model on tasks: batched greedy generation for the matrix, teacher-forced loss for selection."""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from sapt.batching import Encoded, collate_prompts, collate_train, encode, length_sorted_batches
from sapt.data import Task
from sapt.modules.sapt_model import SAPTModel
from sapt.scoring import score_example


def encode_task_split(model: SAPTModel, task: Task, split: str, max_source: int, max_target: int) -> list[Encoded]:
    return encode(model.tokenizer, model.family, task.definition, getattr(task, split), max_source, max_target)


@torch.no_grad()
def predict(
    model: SAPTModel, items: Sequence[Encoded], batch_size: int, max_new_tokens: int, desc: str | None = None
) -> tuple[list[str], torch.Tensor]:
    """Greedy answers in the original order, and each input's routing weights (n, n_tasks)."""
    was_training = model.training
    model.eval()
    preds: list[str] = [""] * len(items)
    weights = torch.zeros(len(items), model.n_tasks)
    pad = model.tokenizer.pad_token_id
    for idx in tqdm(length_sorted_batches(items, batch_size), desc=desc, leave=False, disable=desc is None):
        texts, w = model.generate(collate_prompts([items[i] for i in idx], model.family, pad), max_new_tokens)
        for k, i in enumerate(idx):
            preds[i] = texts[k]
        weights[idx] = w.float().cpu()
    model.train(was_training)
    return preds, weights


@torch.no_grad()
def evaluation_loss(model: SAPTModel, items: Sequence[Encoded], batch_size: int) -> float:
    """Mean per-batch token cross-entropy (weighted by batch size) with dropout off."""
    was_training = model.training
    model.eval()
    pad = model.tokenizer.pad_token_id
    total = 0.0
    for idx in length_sorted_batches(items, batch_size):
        total += float(model(collate_train([items[i] for i in idx], model.family, pad))) * len(idx)
    model.train(was_training)
    return total / len(items)


def evaluate_task(
    model: SAPTModel, task: Task, items: Sequence[Encoded], batch_size: int, max_new_tokens: int,
    task_index: int | None = None,
) -> tuple[float, list[dict]]:
    """The task's score (0-100) and one record per example: input, prediction, references, weights.

    `routed_to_own` says whether the largest routing weight is on the task's own block (`task_index`).
    """
    preds, weights = predict(model, items, batch_size, max_new_tokens, desc=f"eval {task.name}")
    records = []
    for ex, pred, w in zip(task.eval, preds, weights):
        rec = {
            "input": ex.input,
            "prediction": pred,
            "references": list(ex.outputs),
            "score": score_example(task.metric, pred, ex.outputs),
            "weights": [round(float(x), 6) for x in w],
        }
        if task_index is not None:
            rec["routed_to_own"] = int(torch.argmax(w)) == task_index
        records.append(rec)
    score = sum(r["score"] for r in records) / len(records)
    return score, records
