"""What a continual-learning method is to the loop (`sapt.train`): a few hooks on one `SAPTModel` (frozen
backbone + one block per task + router), in the manner of Avalanche's strategy plugins, and a registry.

The loop never asks which method it runs; it calls, for a run over `tasks`:

    stages(tasks)                                 what each stage trains on: one per task, or one joint stage
    reflects(arm)                                 does attentive reflection apply (and its replay phase run)?
    for each stage t:
        add_stage(model, t, name)                 add (or reuse) the block and say what trains
        block_index(t)                            the block stage t trains and saves
        prepare_stage(model, task, t, block, router, decoding, old)
                                                  before training: initialise the new block (and router)
        training_items(model, task, tasks, decoding)  the stage's (train, val) items; None: the task's own
        training_size(t, task, tasks)             how many training items that is (`sapt run --dry-run`)
        warmup_steps(router, epochs, t, steps_per_epoch)  optimiser steps the new block trains alone at weight 1
        fits_router(router)                       after training, fit the router with the blocks frozen
        weights(model, batch, task, training)     the mixing weights (batch, n_blocks); None: the router's
        extra_loss(model, t)                      a term added to every micro-batch's loss
        stage_files(sdir, task, seed)             main process, after training: extra files of the stage
        after_stage(model, task, sdir, decoding)  every process, trained or loaded (replay reads its memory)
        eval_tasks(tasks, t)                      the tasks scored after stage t
    run_metrics(matrix, single)                   AP, F.Ra, FWT, BWT from the score matrix
    cannot_extend()                               why `sapt learn` may not add a task, or None

and reads a few facts: `name`; `routed` (the router makes the weights, so routing accuracy and the
reflection's routing targets are defined); `needs_task_id` (the weights need the true task id, so `sapt
predict` refuses the run); `weighs_blocks` (fixed weights change the answer, so `generate(routing=...)`
can honour them); `trained_as` (another method whose training this one's is, bit for bit:
bench/quality.py evaluates a copy of its stages instead of training again). The defaults below are a new block per task, the router
frozen, every block at weight 1 (inc-lora).

A hook is given the sections of the run config it reads (`sapt.config.RunConfig.router`, `.decoding`, `.arm`,
... frozen views), never the whole config: what a method can depend on is in its signatures, and the recipe
(sapt.train) is the one place that holds the whole config and hands the sections out.

A method's own options (o-lora's lambdas, replay's memory) are declared in its own file, as a frozen
dataclass of `sapt.options.option(..., section="method")` fields named by the class attribute `Options`.
sapt.config adds those fields to the run config, under the keys they are named by (flat, as every key is:
`--olora-lambda1`, `olora_lambda1: 0.5` in YAML and config.yaml), so the parser, `sapt run --help`, the
range check, the resume check and config.yaml know them with no edit there. The method is built from its
own options only (`from_options`, given `RunConfig.method_options`), never from the whole config.

Adding a method is one new file in this folder; the package imports every module in it, and the method's
name then works in `--method`, the config check, `sapt run --help` and bench/quality.py. For example,
sapt/methods/last_block.py, "a new block per task, only the newest one used":

    from sapt.methods.base import Method, one_hot_weights, register


    @register
    class LastBlock(Method):
        name = "last-block"

        def weights(self, model, batch, task_index, training):
            return one_hot_weights(model, batch, model.n_blocks - 1)

A method with an option, sapt/methods/last_k.py, "the newest k blocks", is still one file:

    from dataclasses import dataclass

    from sapt.methods.base import Method, register, uniform_weights
    from sapt.options import AT_LEAST_1, option


    @dataclass(frozen=True)
    class LastKOptions:
        last_k: int = option(1, bounds=AT_LEAST_1, section="method", help="last-k: blocks used, the newest")


    @register
    class LastK(Method):
        name = "last-k"
        Options = LastKOptions

        def __init__(self, k: int = 1):
            self.k = k

        @classmethod
        def from_options(cls, options):
            return cls(options.last_k)

        def weights(self, model, batch, task_index, training):
            w = uniform_weights(model, batch)
            w[:, : max(0, model.n_blocks - self.k)] = 0
            return w

`--last-k 2` (or `last_k: 2` in a YAML file) then sets it, `sapt run --help` lists it under "method" with its
default, a value below 1 is refused, and config.yaml records it.

A module here is imported by `sapt --help`: import torch (and model code) inside the hooks, as the
helpers below do, so that the command line starts without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from sapt.data import Task
from sapt.evaluation.metrics import cl_metrics

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from sapt.config import (BlockSection, DecodingSection, OptimisationSection, ReflectionSection,
                             RouterSection)
    from sapt.modules.sapt_model import SAPTModel

__all__ = ["METHODS", "Method", "make_method", "method_names", "one_hot_weights", "register", "top1_weights",
           "uniform_weights"]


class Method:
    """A new block per task, every block mixed at weight 1, the router frozen (inc-lora). Subclasses
    override the hooks they change; see the module docstring for when the loop calls each."""

    name: str = ""
    routed: bool = False  # weights come from the router (routing accuracy is defined)
    needs_task_id: bool = False  # the weights need the true task id (no `sapt predict`)
    # the blocks are combined by the mixing weights, so fixed weights (`TrainedRun.generate(routing=...)`)
    # change the answer; False for progprompt, which puts every prompt before the input whatever the weights
    weighs_blocks: bool = True
    trained_as: str | None = None  # a method whose training this one's is, bit for bit (bench/quality.py)
    summary: str = ""  # one line for the model card of an export (sapt.model_card); "{block}" is the block type's noun
    pet: str | None = None  # the block kind (config `pet`) the method is made for, taken when the config names none
    # The method's own run-config keys: a frozen dataclass of `option(..., section="method")` fields (see the
    # module docstring); None: it has none. `from_options` receives an instance.
    Options: ClassVar[type | None] = None

    def settings(self, router: RouterSection, optim: OptimisationSection,
                 arm: ReflectionSection) -> list[tuple[str, str]]:
        """(name, value) rows of this method's own settings, for the model card: its own options (held since
        `from_options`), and what it makes of the router's, the rates' and the reflection's sections."""
        return []

    @classmethod
    def from_options(cls, options: Any | None) -> Method:
        """The method with its own options (an instance of `Options`, e.g. O-LoRA's lambdas; None for a
        method that has none)."""
        return cls()

    # ---- the run -------------------------------------------------------------------------------------------
    def stages(self, tasks: list[Task]) -> list[Task]:
        """What each stage trains on: one task per stage."""
        return tasks

    def reflects(self, arm: ReflectionSection) -> bool:
        """Whether attentive reflection applies (SAPT's, when `arm.reflection`)."""
        return False

    def cannot_extend(self) -> str | None:
        """Why `sapt learn` cannot add a task to a run of this method; None if it can."""
        return None

    def refuses_pet(self, pet: str) -> str | None:
        """Why this method cannot use blocks of kind `pet` (the config's `pet`); None if it can. Checked when
        the config is validated, before anything is written."""
        return None

    def run_metrics(self, matrix: list[list[float | None]], single: Callable[[], list[float] | None]) -> dict[str, Any]:
        """ap, fra, bwt, fwt of the score matrix; `single()` gives FWT's single-task scores (or None)."""
        return cl_metrics(matrix, single())

    # ---- a stage -------------------------------------------------------------------------------------------
    def block_index(self, t: int) -> int:
        """The block stage t trains and saves."""
        return t

    def add_stage(self, model: SAPTModel, t: int, task_name: str) -> None:
        """Give stage t its block (and the router its key) and make only what the stage trains trainable."""
        model.add_task(task_name)
        model.set_trainable(self.block_index(t), router=self.routed)

    def prepare_stage(self, model: SAPTModel, task: Task, t: int, block: BlockSection, router: RouterSection,
                      decoding: DecodingSection, old_prompts: Sequence[list] = ()) -> None:
        """Before stage t trains (not when it is loaded): with `block_init: previous`, a new block starts as
        a copy of the previous stage's. `old_prompts`: the encoded reflection inputs of the earlier tasks."""
        b = self.block_index(t)
        if block.block_init == "previous" and t > 0 and b != self.block_index(t - 1):
            model.load_block(b, model.block_state(self.block_index(t - 1)))  # train_stage broadcasts it

    def training_items(self, model: SAPTModel, task: Task, tasks: list[Task],
                       decoding: DecodingSection) -> tuple[list | None, list | None]:
        """The stage's encoded training and validation items (cut to `decoding`'s lengths); None for the task's
        own."""
        return None, None

    def training_size(self, t: int, task: Task, tasks: list[Task]) -> int:
        """How many training items stage t's `training_items` gives, counted without a model (every example
        is one item): the task's own training examples."""
        return len(task.train)

    def warmup_steps(self, router: RouterSection, epochs: int, t: int, steps_per_epoch: int) -> int:
        """How many of stage t's first optimiser steps (of `epochs` x `steps_per_epoch`) train the new block
        alone (weight 1, router frozen)."""
        return 0

    def fits_router(self, router: RouterSection) -> bool:
        """Whether each stage ends with a router fit, the blocks frozen (`sapt.router_fit`); the stage's
        block then trains alone for the whole stage (`warmup_steps` covers it)."""
        return False

    def weights(self, model: SAPTModel, batch: dict[str, torch.Tensor], task_index: int,
                training: bool) -> torch.Tensor | None:
        """Mixing weights (batch, n_blocks), or None for the router's. `task_index` is the true task."""
        return uniform_weights(model, batch)

    def extra_loss(self, model: SAPTModel, t: int) -> torch.Tensor | None:
        """A term added to the loss of every micro-batch of stage t (divided by the accumulation)."""
        return None

    def stage_files(self, sdir: Path, task: Task, seed: int) -> list[str]:
        """Main process, after stage training: write the method's own files of the stage into `sdir`
        (recorded and checksummed with the trained phase), drawing under the run's `seed`; returns their
        names."""
        return []

    def after_stage(self, model: SAPTModel, task: Task, sdir: Path, decoding: DecodingSection) -> None:
        """Every process, once the stage is trained or loaded (its files are on disk); `decoding`: the lengths
        its items are encoded to."""

    def eval_tasks(self, tasks: list[Task], t: int) -> list[Task]:
        """The tasks scored after stage t: those seen so far."""
        return tasks[: t + 1]


# ---- mixing weights, for the `weights` hook (torch imported here, not at the top: see the docstring) ---------
def uniform_weights(model: SAPTModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weight 1 on every block."""
    import torch

    return torch.ones(batch["input_ids"].shape[0], model.n_blocks, device=batch["input_ids"].device)


def one_hot_weights(model: SAPTModel, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
    """Weight 1 on block `index`, 0 on the others."""
    import torch

    w = torch.zeros(batch["input_ids"].shape[0], model.n_blocks, device=batch["input_ids"].device)
    w[:, index] = 1.0
    return w


def top1_weights(w: torch.Tensor) -> torch.Tensor:
    """Each row's largest weight set to 1, the others to 0."""
    import torch

    return torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype)


# ---- the registry ------------------------------------------------------------------------------------------
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available as `--method cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__}: a method needs a name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"two methods named {cls.name!r}: {METHODS[cls.name].__qualname__} and {cls.__qualname__}")
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(METHODS)


def make_method(name: str, options: Any | None = None, **kwargs: Any) -> Method:
    """The method `name`, with its own options: an instance of its `Options` (a run's: `RunConfig.method_options`)
    or given as keywords of its constructor (e.g. `make_method("o-lora", lambda_1=2.0)`); neither: its defaults."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (available: {', '.join(METHODS)})")
    return METHODS[name].from_options(options) if options is not None else METHODS[name](**kwargs)
