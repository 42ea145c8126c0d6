"""Evaluation's early stop: an answer ends at its first line break, only for tasks whose training and
validation answers are one line (never decided from the test references)."""
import dataclasses

import torch

from sapt.data import builtin_suite
from sapt.evaluation.generation import one_line_answers
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel


def model_and_prompts():
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    model.add_task("t0")
    prompts = {"input_ids": torch.tensor([[0, 0, 9, 8, 7], [3, 4, 5, 6, 7]]),
               "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    prompts["prompt_mask"] = prompts["attention_mask"]
    return model, prompts


def test_newline_tokens_are_those_whose_text_holds_a_line_break():
    model, _ = model_and_prompts()
    marked = model.newline_tokens()
    tok = model.tokenizer
    assert marked[tok.convert_tokens_to_ids("Ċ")]  # the byte-level "\n"
    assert int(marked.sum()) == 1  # the byte tokenizer has no other token holding one
    assert not marked[tok.convert_tokens_to_ids("a")]


def test_each_sequence_stops_at_its_first_stop_token_and_the_others_go_on():
    model, prompts = model_and_prompts()
    w = torch.ones(2, 1)
    with torch.no_grad(), model.routed(w):
        full = model.base.generate(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                                   max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=1)[:, 5:]
    stop = int(full[0, 2])  # pretend the third token of row 0 is a line break
    assert stop not in full[0, :2].tolist()
    model._newline_tokens = torch.zeros(len(model.tokenizer), dtype=torch.bool)
    model._newline_tokens[stop] = True
    texts, _ = model.generate(prompts, 8, w, stop_at_newline=True)
    decode = lambda ids: model.tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    assert texts[0] == decode(full[0, :3])
    cut = next((k + 1 for k, x in enumerate(full[1].tolist()) if x == stop), 8)
    assert texts[1] == decode(full[1, :cut])
    plain, _ = model.generate(prompts, 8, w)
    assert plain == [decode(full[0]), decode(full[1])]


def _with_outputs(task, split, text):
    """`task` with the first example of `split` answering `text`."""
    examples = list(getattr(task, split))
    examples[0] = dataclasses.replace(examples[0], outputs=(text,))
    return dataclasses.replace(task, **{split: examples})


def test_only_tasks_whose_training_answers_are_one_line_stop_early():
    task = builtin_suite(seed=0, n_train=8, n_val=2, n_eval=2)[0]
    assert one_line_answers(task)
    assert not one_line_answers(_with_outputs(task, "train", "two\nlines"))
    assert not one_line_answers(_with_outputs(task, "val", "two\nlines"))
    # the test references never decide how the model decodes
    assert one_line_answers(_with_outputs(task, "eval", "two\nlines"))


def test_test_references_with_a_line_break_leave_the_decoding_as_it_was():
    """A task whose training and validation answers are one line stops at a line break whether or not its test
    references hold one (the same predictions, byte for byte); a training answer with a line break turns the
    stop off, so the rule is in force here and the equality is not trivial."""
    from sapt.evaluation.generation import encode_task_split, evaluate_task

    model, _ = model_and_prompts()
    model._newline_tokens = torch.ones(len(model.tokenizer), dtype=torch.bool)  # every token ends a line
    task = builtin_suite(seed=0, n_train=8, n_val=2, n_eval=4)[0]
    items = encode_task_split(model, task, "eval", 64, 8)

    def predictions(variant):
        _, _, records = evaluate_task(model, variant, items, 4, 6, None, None, stop_at_newline=True)
        return [r["prediction"] for r in records]

    one_line = predictions(task)
    assert predictions(_with_outputs(task, "eval", "two\nlines")) == one_line
    unstopped = predictions(_with_outputs(task, "train", "two\nlines"))
    assert unstopped != one_line and all(len(u) >= len(o) for u, o in zip(unstopped, one_line))
