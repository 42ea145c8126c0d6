"""replay: seq-lora that stores `replay_memory` real training examples (with answers) of each task in the
stage's memory.jsonl, and trains every later stage on its task's examples plus all those stored."""
from __future__ import annotations

import json
import random

from sapt.methods.base import register
from sapt.methods.seq_lora import SeqLoRA


@register
class Replay(SeqLoRA):
    name = "replay"
    summary = "one LoRA block trained on each task in turn, with stored real examples of earlier tasks mixed in"

    def settings(self, cfg):
        return [("stored real examples per task", str(cfg.replay_memory))]

    def __init__(self):
        self.memory: list = []  # encoded real examples of the old tasks

    def training_items(self, model, task, tasks, cfg):
        if not self.memory:
            return None, None
        from sapt.evaluation.generation import encode_task_split

        return encode_task_split(model, task, "train", cfg.max_source_length, cfg.max_target_length) + self.memory, None

    def training_size(self, t, task, tasks, cfg):
        """The task's examples and those stored of each earlier task (`memory_examples`)."""
        return len(task.train) + sum(min(cfg.replay_memory, len(old.train)) for old in tasks[:t])

    def stage_files(self, sdir, task, cfg):
        from sapt import io

        io.write_jsonl(sdir / "memory.jsonl", [{"task": task.name, "input": ex.input, "outputs": list(ex.outputs)}
                                               for ex in memory_examples(task, cfg)])
        return ["memory.jsonl"]

    def after_stage(self, model, task, sdir, cfg):
        from sapt.batching import encode
        from sapt.data import Example

        rows = [json.loads(line) for line in (sdir / "memory.jsonl").read_text(encoding="utf-8").splitlines() if line]
        self.memory += encode(model.tokenizer, model.family, task.definition,
                              [Example(r["input"], tuple(r["outputs"])) for r in rows],
                              cfg.max_source_length, cfg.max_target_length, model.template)


def memory_examples(task, cfg) -> list:
    """A seeded sample of `replay_memory` real training examples (with answers) of a task."""
    rng = random.Random(f"{cfg.seed}:{task.name}:memory")
    return rng.sample(task.train, min(cfg.replay_memory, len(task.train)))
