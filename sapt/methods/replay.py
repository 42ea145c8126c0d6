"""replay: seq-lora that stores `replay_memory` real training examples (with answers) of each task in the
stage's memory.jsonl, and trains every later stage on its task's examples plus all those stored.
`replay_memory` is declared here (`ReplayOptions`)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from sapt.methods.base import register
from sapt.methods.seq_lora import SeqLoRA
from sapt.options import AT_LEAST_1, option


@dataclass(frozen=True)
class ReplayOptions:
    """replay's key of the run config (section method)."""

    replay_memory: int = option(10, bounds=AT_LEAST_1,
                                section="method", help="replay: real examples stored per old task")


@register
class Replay(SeqLoRA):
    name = "replay"
    summary = "one LoRA block trained on each task in turn, with stored real examples of earlier tasks mixed in"
    Options = ReplayOptions

    def settings(self, router, optim, arm):
        return [("stored real examples per task", str(self.memory_size))]

    def __init__(self, memory_size: int = ReplayOptions.replay_memory):
        self.memory_size = memory_size  # real examples stored per task
        self.memory: list = []  # encoded real examples of the old tasks

    @classmethod
    def from_options(cls, options):
        return cls(options.replay_memory)

    def training_items(self, model, task, tasks, decoding):
        if not self.memory:
            return None, None
        from sapt.evaluation.generation import encode_task_split

        return encode_task_split(model, task, "train", decoding.max_source_length,
                                 decoding.max_target_length) + self.memory, None

    def training_size(self, t, task, tasks):
        """The task's examples and those stored of each earlier task (`memory_examples`)."""
        return len(task.train) + sum(min(self.memory_size, len(old.train)) for old in tasks[:t])

    def stage_files(self, sdir, task, seed):
        from sapt import io

        io.write_jsonl(sdir / "memory.jsonl", [{"task": task.name, "input": ex.input, "outputs": list(ex.outputs)}
                                               for ex in memory_examples(task, seed, self.memory_size)])
        return ["memory.jsonl"]

    def after_stage(self, model, task, sdir, decoding):
        from sapt.batching import encode
        from sapt.data import Example

        rows = [json.loads(line) for line in (sdir / "memory.jsonl").read_text(encoding="utf-8").splitlines() if line]
        self.memory += encode(model.tokenizer, model.family, task.definition,
                              [Example(r["input"], tuple(r["outputs"])) for r in rows],
                              decoding.max_source_length, decoding.max_target_length, model.template)


def memory_examples(task, seed: int, size: int) -> list:
    """A seeded sample of `size` real training examples (with answers) of a task."""
    rng = random.Random(f"{seed}:{task.name}:memory")
    return rng.sample(task.train, min(size, len(task.train)))
