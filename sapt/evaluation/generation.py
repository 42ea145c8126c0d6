"""Score a model on tasks: batched greedy generation for the matrix, teacher-forced loss for selection."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from sapt.batching import Encoded, collate_prompts, collate_train, encode, length_sorted_batches
from sapt.data import Task
from sapt.distributed import get_dist
from sapt.methods import Method
from sapt.modules.sapt_model import SAPTModel
from sapt.progress import progress_bar
from sapt.evaluation.scoring import score_example


def encode_task_split(model: SAPTModel, task: Task, split: str, max_source: int, max_target: int) -> list[Encoded]:
    return encode(model.tokenizer, model.family, task.definition, getattr(task, split), max_source, max_target,
                  model.template)


WeightsFn = Callable[[dict[str, torch.Tensor]], "torch.Tensor | None"]


@torch.no_grad()
def predict(
    model: SAPTModel, items: Sequence[Encoded], batch_size: int, max_new_tokens: int, desc: str | None = None,
    weights_fn: WeightsFn | None = None, batches: Sequence[tuple[list[int], bool]] | None = None,
    stop_at_newline: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """Greedy answers in the original order, and each input's mixing weights (n, n_blocks).
    `stop_at_newline`: see `SAPTModel.generate`.

    `weights_fn(batch)` gives the mixing weights of a batch for methods that don't route (None: route).
    `batches` ((indices, real) pairs, see `Dist.lockstep_batches`) answers only those; the others stay ""."""
    was_training = model.training
    model.eval()
    preds: list[str] = [""] * len(items)
    weights = torch.zeros(len(items), model.n_blocks)
    pad = model.tokenizer.pad_token_id
    if batches is None:
        batches = [(idx, True) for idx in length_sorted_batches(items, batch_size)]
    for idx, real in progress_bar(batches, desc=desc, leave=False, disable=desc is None):
        batch = collate_prompts([items[i] for i in idx], model.family, pad)
        texts, w = model.generate(batch, max_new_tokens, weights_fn(batch) if weights_fn else None, stop_at_newline)
        if real:
            for k, i in enumerate(idx):
                preds[i] = texts[k]
            weights[idx] = w.float().cpu()
    model.train(was_training)
    return preds, weights


@torch.no_grad()
def evaluation_loss(
    model: SAPTModel, items: Sequence[Encoded], batch_size: int, weights_fn: WeightsFn | None = None,
    batches: Sequence[tuple[list[int], bool]] | None = None,
) -> float:
    """Mean per-batch token cross-entropy (weighted by batch size) with dropout off. With `batches`
    ((indices, real) pairs, see `Dist.lockstep_batches`): the *sum* over the real ones, for the caller
    to add up across processes."""
    was_training = model.training
    model.eval()
    pad = model.tokenizer.pad_token_id
    total = 0.0
    for idx, real in batches if batches is not None else [(b, True) for b in length_sorted_batches(items, batch_size)]:
        batch = collate_train([items[i] for i in idx], model.family, pad)
        loss = float(model(batch, weights_fn(batch) if weights_fn else None))
        total += loss * len(idx) if real else 0.0
    model.train(was_training)
    return total if batches is not None else total / len(items)


def one_line_answers(task: Task) -> bool:
    """True if no training or validation answer of the task holds a line break.

    The evaluation references are never read: whether an answer may end at its first line break is a
    decoding rule, and a decoding rule chosen from the test set's answers is the test set steering the
    model's output (a leak, however small). What the model was trained to write is what the rule follows.
    An unseen task (`--unseen`) has its training data too, so the same holds for it."""
    return not any("\n" in out for split in (task.train, task.val) for ex in split for out in ex.outputs)


def evaluate_task(
    model: SAPTModel, task: Task, items: Sequence[Encoded], batch_size: int, max_new_tokens: int,
    task_index: int | None, method: Method | None, stop_at_newline: bool = False,
) -> tuple[float, float | None, list[dict]]:
    """The task's score (0-100), its routing accuracy (% of inputs whose largest routing weight is on the
    task's own block `task_index`; None for methods that don't route) and one record per example:
    input, prediction, references, score, the mixing weights `method` used, and `routed_to_own`.

    `stop_at_newline` (and the task's training and validation answers are all one line, `one_line_answers`):
    each answer ends at its first line break, as the answers the model was trained on do.

    An unseen task (`--unseen`): `task_index` None, no task id is given to the method's weights (-1) and
    there is no routing accuracy; `method` None as well: the base model, no block at all (zero weights)."""
    stop_at_newline = stop_at_newline and one_line_answers(task)
    dist = get_dist()
    routed = method is not None and method.routed and task_index is not None
    if method is None:
        weights_fn = lambda batch: torch.zeros(batch["input_ids"].shape[0], model.n_blocks)  # noqa: E731
    else:
        index = -1 if task_index is None else task_index
        weights_fn = lambda batch: method.weights(model, batch, index, training=False)  # noqa: E731
    desc = f"eval {task.name}" if dist.is_main else None
    if dist.fsdp:  # whole batches per process, as many on each (see Dist.lockstep_batches)
        batches = dist.lockstep_batches(length_sorted_batches(items, batch_size))
        preds, weights = predict(model, items, batch_size, max_new_tokens, desc, weights_fn, batches, stop_at_newline)
        mine = sorted(i for idx, real in batches if real for i in idx)
        preds, weights = [preds[i] for i in mine], weights[mine]
    else:
        mine = list(range(len(items)))[dist.rank::dist.world]  # each process answers its slice
        preds, weights = predict(model, [items[i] for i in mine], batch_size, max_new_tokens, desc, weights_fn,
                                 stop_at_newline=stop_at_newline)
    if dist.world > 1:
        gathered = dist.gather([(i, p, w.tolist()) for i, p, w in zip(mine, preds, weights)])
        preds, rows = [""] * len(items), [None] * len(items)
        for i, p, w in gathered:
            preds[i], rows[i] = p, w
        weights = torch.tensor(rows)
    records = []
    for ex, pred, w in zip(task.eval, preds, weights):
        rec = {
            "input": ex.input,
            "prediction": pred,
            "references": list(ex.outputs),
            "score": score_example(task.metric, pred, ex.outputs),
            "weights": [round(float(x), 6) for x in w],
        }
        if routed:
            rec["routed_to_own"] = int(torch.argmax(w)) == task_index
        records.append(rec)
    score = sum(r["score"] for r in records) / len(records)
    routing = 100.0 * sum(r["routed_to_own"] for r in records) / len(records) if routed else None
    return score, routing, records
