"""The run configuration: one dataclass, resolved as defaults < preset < YAML file < command line.

The resolved config is saved as `config.yaml` in the run directory; resuming checks it is unchanged.

Every field is declared with `option(...)`: its default, its help, its section, its command-line flag and
whether it may change when a run is resumed. That one declaration is the source of the `sapt run` parser
(sapt.cli), of the resume check (`RESUMABLE_KEYS`, `CHANGEABLE_KEYS`, `differences`) and of the
documentation (`SECTIONS`, `FIELDS`, `section_fields`, `default_text`). `option` itself is declared below
the config, the methods and the block types (sapt.options), since a method declares its own keys in its own
file (`Method.Options`) and a block type in its folder (`sapt/modules/blocks/<name>/config.py`: LoRA's
lora_r, lora_alpha, lora_dropout, target_modules; the prompt's prompt_len, prompt_mlp_hidden), and they are
added here as flat keys (`_with_method_options`, `_with_block_options`). Only `pet` and `block_init`, which
every type has, are declared here in the block section. This module imports no torch: the block types'
options are read from their config.py alone (`registry.block_options_type`).

The components below the recipe take the sections they read, not the whole config: `cfg.optim`,
`cfg.router`, `cfg.decoding`, ... are frozen views of the one flat dataclass (`SECTION_TYPES`), a method
gets its own options (`cfg.method_options`), and a block type its section with its own options
(`cfg.block.options`). The flat fields stay: config.yaml, --config files and the flags are flat. Only the
recipes (sapt.train, and sapt.export for `sapt export`), api, cli and bench read the whole config
(tests/test_config_owner.py holds every other module of the package to that).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import re
import sys
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sapt.errors import ConfigError
from sapt.methods import METHODS, method_names
from sapt.options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, RESUME_POLICIES, SECTIONS, Bounds, option  # noqa: F401
from sapt.modules.blocks.registry import block_options_type, block_type_names


PRECISIONS = ("no", "bf16", "fp16")  # --mixed-precision (sapt.distributed)
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")  # --backbone-dtype (sapt.models)
QUANTIZE = ("none", "8bit", "4bit")  # --quantize: bitsandbytes through transformers (sapt.models.quantization_config)
BLOCK_INITS = ("zero", "previous")  # --block-init (sapt.methods.base.Method.prepare_stage)
ROUTER_KEY_INITS = ("random", "task")  # --router-key-init (sapt.router_setup.init_key_from_task)
ROUTER_SCHEDULES = ("joint", "learn-then-route")  # --router-schedule (sapt.router_fit)
TRACKERS = ("jsonl", "tensorboard", "wandb")  # --log-with (sapt.tracking)
REFLECTION_SOURCES = ("generated", "real")  # --reflection-source (sapt.train.make_replay_inputs)
# --pet: the block types, one folder each under sapt/modules/blocks/ (read without importing them: no torch),
# and the options class each declares in its folder's config.py (None: none; imported without torch)
PETS = block_type_names()
BLOCK_OPTIONS: dict[str, type | None] = {name: block_options_type(name) for name in PETS}
TEMPLATES = ("family", "release")  # --template: the prompt template (sapt.data.prompts.template_key)
# --lr-scheduler: transformers' schedules that need nothing but the step counts (sapt.stage_trainer.make_scheduler).
# Left out: reduce_lr_on_plateau and greedy (driven by a metric, not the step), cosine_with_min_lr,
# cosine_warmup_with_min_lr and warmup_stable_decay (they need settings of their own), polynomial (it decays
# from the optimiser's default rate, not the groups' rates).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "inverse_sqrt")
# --tracker-project: characters W&B refuses in a project name, and path separators (it is a folder too)
TRACKER_PROJECT_REFUSED = "/\\#?%:"

# ---- command-line value types (sapt run), also used for the fields' declarations -------------------------
def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of task names")
    return items


def _num(value: str) -> float:
    x = float(value)
    return int(x) if math.isfinite(x) and x >= 1 and x == int(x) else x  # the config refuses inf and nan


def _with_declared_options(cls: type, section: str, declared_by: Iterable[type], owner: str) -> type:
    """`cls` (RunConfig, before it is made a dataclass) with the fields of each options class of `declared_by`
    (frozen dataclasses of `option(...)` fields in `section`, declared by a method or a block type in its own
    file) inserted after `cls`'s fields of that section, in the order given. A key declared twice (by two
    owners, or by an owner and the config) or in another section is a RuntimeError naming it: keys are flat,
    so one name is one key, with one default, help and resume policy.

    Why the owner's file and not here: a method or a block type with options was two files (its class, and
    its keys here), and every component read them from the whole config. Why flat fields of RunConfig still:
    the keys are flat everywhere a user or a saved run meets them (`--olora-lambda1`, `--lora-r`,
    `lora_r: 8` in a --config file and in every config.yaml written so far), and as fields they get the
    parser, `sapt run --help`, the range check, the resume policy, coercion and config.yaml's key order from
    the one declaration, as every key does. The owner reads them back as its options object only
    (`RunConfig.method_options`, `RunConfig.block_options`)."""
    own = dict(cls.__annotations__)
    declared: dict[str, tuple[Any, dataclasses.Field]] = {}
    for options in dict.fromkeys(declared_by):
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            if f.name in own or f.name in declared:
                raise RuntimeError(f"{options.__qualname__}.{f.name}: a {owner} option must be a config key of its own")
            if f.metadata.get("section") != section:
                raise RuntimeError(f"{options.__qualname__}.{f.name}: a {owner} option is declared in section {section}")
            kwargs = {"default": f.default} if f.default is not dataclasses.MISSING else \
                {"default_factory": f.default_factory}
            declared[f.name] = (hints[f.name], field(metadata=f.metadata, **kwargs))
    names = list(own)
    last = max(i for i, name in enumerate(names) if vars(cls)[name].metadata["section"] == section)
    order = names[: last + 1] + list(declared) + names[last + 1:]
    cls.__annotations__ = {name: own[name] if name in own else declared[name][0] for name in order}
    for name, (_, f) in declared.items():
        setattr(cls, name, f)
    return cls


def _with_method_options(cls: type) -> type:
    """`cls` with the fields each method declares in its own file (`sapt.methods.base.Method.Options`: o-lora's
    `olora_lambda1`, replay's `replay_memory`, ...) after the "method" section's, in the methods' registry
    order (`_with_declared_options`)."""
    return _with_declared_options(cls, "method", (m.Options for m in METHODS.values() if m.Options is not None),
                                  "method")


def _with_block_options(cls: type) -> type:
    """`cls` with the fields each block type declares in its folder (`OPTIONS` of
    sapt/modules/blocks/<name>/config.py: LoRA's `lora_r`, ..., the prompt's `prompt_len`, ...) after the
    generic "block" keys (`pet`, `block_init`), in the registry's order, LoRA first
    (`_with_declared_options`)."""
    return _with_declared_options(cls, "block", (o for o in BLOCK_OPTIONS.values() if o is not None), "block type")


@dataclass
@_with_block_options
@_with_method_options
class RunConfig:
    # ---- run and output -------------------------------------------------------------------------------
    output: str = option("runs/demo", section="run", resume="free", help="run directory")
    model: str = option("smollm2", section="run",
                        help="hub id or local path of a T5, LLaMA, Qwen2, Gemma, Phi-3 or GPT-NeoX-family model, or a reserved "
                             "name: smollm2, tiny-t5, tiny-llama, tiny-qwen2, tiny-gemma, tiny-phi3, tiny-gpt-neox")
    # The frozen backbone's weights in this dtype (LoRA blocks, router and optimiser stay float32): bfloat16
    # is what makes a CPU with bf16 instructions fast (BENCHMARKS.md "bf16 on CPU").
    backbone_dtype: str = option("float32", section="run", choices=BACKBONE_DTYPES,
                                 help="dtype of the frozen backbone's weights: the LoRA blocks, router and "
                                      "optimiser stay float32")
    # The frozen backbone loaded in 8 or 4 bits by bitsandbytes, through transformers' quantisation config
    # (sapt.models.quantization_config): QLoRA's memory saving. The LoRA blocks and router stay float32, as PEFT's
    # QLoRA keeps its adapters. Fixed on resume: the blocks were trained on the quantised weights' outputs.
    quantize: str = option("none", section="run", choices=QUANTIZE,
                           help="load the frozen backbone (a hub id or local path) in 8 or 4 bits with bitsandbytes "
                                "(a CUDA GPU only; 4bit is NF4, computing in --backbone-dtype); the LoRA blocks and "
                                "router stay float32")
    # autocast around forward passes (sapt.distributed); the LoRA weights stay float32
    mixed_precision: str = option("no", section="run", choices=PRECISIONS,
                                  help="autocast the forward passes; the LoRA weights and optimiser stay float32")
    log_with: list[str] = option(["jsonl"], section="run", resume="free",
                                 help="trackers, comma-separated: jsonl, tensorboard, wandb; through accelerate, "
                                      "into RUN_DIR/trackers (train_log.jsonl is always written)")
    # The W&B project and the TensorBoard sub-folder of RUN_DIR/trackers (sapt.tracking.Trackers); None: the run
    # directory's name, as before. With a project, a W&B run is named after the run directory.
    tracker_project: str | None = option(None, section="run", resume="free", default_help="the run directory's name",
                                         help="--log-with wandb / tensorboard: the W&B project (the run is named after "
                                              "the run directory) and the TensorBoard sub-folder of RUN_DIR/trackers")
    notes: dict[str, Any] = option({}, section="run", flag=False, resume="free",
                                   help="free-form notes kept with the run (YAML only)")
    # Score every task seen so far only after every K-th stage and after the last (sapt.train.StageLoop.evaluates):
    # evaluation after each stage costs O(T^2) task scorings over a run of T tasks (BENCHMARKS.md, "Scale").
    # Free on resume: it decides which rows are computed, never what a computed row holds (a row is scored right
    # after its stage, with the blocks of that stage, whatever K is), so a run resumed with another K is the same
    # run with other rows filled in.
    eval_every: int = option(1, bounds=AT_LEAST_1, section="run", resume="free",
                             help="score the tasks seen so far only after every K-th stage and after the last; the "
                                  "other rows of the score matrix stay null, and BWT / F.Ra cover the tasks whose "
                                  "row right after learning them was scored (1 = after every stage)")

    # ---- method (sapt.methods) ------------------------------------------------------------------------
    method: str = option("sapt", section="method",
                         help=", ".join(method_names()[:-1]) + " or " + method_names()[-1])
    # a per-task run of the same tasks: its diagonal gives FWT's s_j
    reference: str | None = option(None, section="method", resume="free",
                                   help="run directory of a per-task run of the same tasks: fills in FWT")
    # here `_with_method_options` adds each method's own options (`Method.Options`, in its file in sapt/methods/)

    # ---- data: with no data_dir, the built-in generated suite (sapt.data.builtin) is used --------------
    data_dir: str | None = option(None, section="data", resume="free",
                                  help="folder holding <benchmark>/<task>/train.json; omit for the built-in suite")
    benchmark: str | None = option(None, section="data",
                                   help="benchmark folder under --data-dir: SuperNI, Long_Sequence or your own")
    tasks: list[str] | None = option(None, section="data", help="comma-separated task names, in training order")
    extra_tasks: list[str] = option([], section="data", flag=False,
                                    help="task folders appended by `sapt learn`")
    order: int | None = option(None, section="data",
                               help="a built-in task order: SuperNI 1 or 2, Long_Sequence 1-6 (O-LoRA's numbering)")
    unseen: list[str] = option([], section="data",
                               help="comma-separated tasks of the same benchmark (or built-in suite) never trained on, "
                                    "scored on the base model and after every stage")
    val_size: float = option(0.1, section="data", type=_num,
                             help="validation carved from train: a fraction, or a count if >= 1")
    max_train_per_task: int | None = option(None, bounds=AT_LEAST_1, section="data",
                                            help="seeded subset of each task's training examples")
    max_eval_per_task: int | None = option(None, bounds=AT_LEAST_1, section="data",
                                           help="seeded subset of each task's evaluation examples")
    input_field: str = option("input", section="data",
                              help="name of the input key / column in train and test .jsonl, .csv and datasets "
                                   "folders (not train.json)")
    output_field: str = option("output", section="data",
                               help="name of the output key / column in train and test .jsonl, .csv and datasets "
                                    "folders (not train.json)")
    # "family": one template per model family (sapt.data.prompts); "release": the public release's template of
    # the benchmark, whatever the family (SuperNI and Long_Sequence only).
    template: str = option("family", section="data", choices=TEMPLATES,
                           help="prompt template: family (one per model family) or release (the public release's "
                                "template of the benchmark: SuperNI or Long_Sequence)")

    # ---- per-task blocks (SALS) -----------------------------------------------------------------------
    # The kind of per-task block (sapt.modules.blocks.registry): LoRA on q/v (the paper), a soft prompt of
    # prompt_len virtual tokens prepended to the input (sapt.modules.blocks.prompt), or any other folder there
    # (ia3); methods whose math is LoRA's refuse the others.
    pet: str = option("lora", section="block", choices=PETS,
                      help="the per-task block type, a folder of sapt/modules/blocks: lora (LoRA on q/v, the paper), "
                           "prompt (a soft prompt per task), ...")
    # A new task's block: "zero" (the paper: LoRA's B = 0, so the block starts as no change) or "previous"
    # (a copy of the block before it, so that a task starts from what the last one learned, as a single
    # sequentially trained LoRA does; the old blocks stay frozen). Methods with one shared block ignore it.
    block_init: str = option("zero", section="block", choices=BLOCK_INITS,
                             help="a new task's block: zero (the paper) or previous: a copy of the previous "
                                  "task's block")
    # here `_with_block_options` adds each block type's own keys (`OPTIONS` of its folder's config.py: LoRA's
    # lora_r, lora_alpha, lora_dropout, target_modules; the prompt's prompt_len, prompt_mlp_hidden)

    # ---- router ---------------------------------------------------------------------------------------
    query_hidden: int = option(100, bounds=AT_LEAST_1, section="router", help="hidden width of the router's query MLP")
    # Share of a stage's optimiser steps (stages 2..T) during which the router stays frozen while the new,
    # zero-initialised block learns; see sapt.stage_trainer.train_stage. 0 = the paper's schedule.
    router_warmup: float = option(0.25, bounds=Bounds(0, 1, high_open=True), section="router",
                                  help="share of each later stage's steps with the router frozen while the new "
                                       "block starts; 0 = off")
    # Subtract the mean pooled prompt of the tasks seen so far before the query MLP (sapt.router_setup.update_centre);
    # false with router_warmup 0 is the paper's router.
    router_centre: bool = option(True, section="router",
                                 help="do not centre the router's query on the tasks' mean pooled prompt; with "
                                      "--router-warmup 0 this is the paper's router")
    # A new task's key: "random" (the paper) or "task" (sapt.router_setup.init_key_from_task)
    router_key_init: str = option("random", section="router", choices=ROUTER_KEY_INITS,
                                  help="a new task's router key: random (the paper) or task: routed to its block "
                                       "from the start")

    # "learn-then-route" (the default): the new block trains alone, as the per-task oracle's does, then the
    # router is fitted with every block frozen (sapt.router_fit.fit_router). "joint": the router trains with
    # the new block (the paper). The default since round 2 of the router-starvation study (BENCHMARKS.md,
    # "Round 2" and "The default schedule"): on long-learn's three seeds the joint schedule starved a new task
    # on every seed and learn-then-route none, +4.3 +- 4.1 AP; docs/method.md argues the choice.
    router_schedule: str = option("learn-then-route", section="router", choices=ROUTER_SCHEDULES,
                                  help="learn-then-route (the default): the block first learns alone, then the "
                                       "router is fitted to route its task to it while reflection holds the old "
                                       "tasks; joint: the router trains with the new block (the paper)")
    # A cross-entropy on the router's logits of each training batch towards the stage's own block, during joint
    # training after the warm-up (the task is known at training time; sapt.stage_trainer.StageTrainer.router_ce).
    router_ce: float = option(0.0, bounds=NON_NEGATIVE, section="router",
                              help="joint schedule: weight of a cross-entropy that routes each training batch to "
                                   "the stage's own block (routing supervision); 0 = off (the paper)")
    # 1000 steps and a KL weight of 10: bench/router_refit.py on long-learn (BENCHMARKS.md): 300 steps and weight
    # 1 let old tasks' real inputs drift to the new block (yelp 84% own-block routing, mean 93.4%); 1000 and 10
    # keep them (96.5%, mean 98.9%). A fit step costs a small MLP, so 1000 steps take a few seconds.
    router_fit_steps: int = option(1000, bounds=AT_LEAST_1, section="router",
                                   help="learn-then-route: optimiser steps of the router fit after each stage's "
                                        "block (cheap: the router reads only pooled token embeddings)")
    router_fit_kl: float = option(10.0, bounds=NON_NEGATIVE, section="router",
                                  help="learn-then-route: weight of each old task's reflection KL in the router fit "
                                       "(against the cross-entropy that routes the new task, weight 1)")
    # A share of the router fit's prompts also without the task's definition, so that an input given without
    # one (predict with no --definition) is routed as trained (sapt.router_fit: why added, not replacing). 0:
    # the router of before, byte for byte. Learn-then-route only (validate says why).
    route_without_definition: float = option(0.0, bounds=Bounds(0, 1, text="a share in [0, 1]"), section="router",
                                             help="learn-then-route: share of each task's training inputs (and of "
                                                  "the old tasks' replay inputs) also given to the router fit "
                                                  "without the task's definition, so that inputs are routed without "
                                                  "one; 0 = off, 1 = every input")

    # ---- optimisation (docs/method.md: lr 3e-4 constant, no warmup, AdamW) -----------------------------
    # lr and router_lr may be lowered on resume (--allow-config-change), e.g. to get past a non-finite loss;
    # each epoch's rates are in its stage.json history.
    lr: float = option(3e-4, bounds=POSITIVE, section="optimisation", resume="changeable",
                       help="learning rate of the LoRA blocks")
    router_lr: float | None = option(None, bounds=POSITIVE,
                                     section="optimisation", resume="changeable", default_help="--lr",
                                     help="learning rate of the query MLP and keys")
    epochs: int = option(3, bounds=AT_LEAST_1, section="optimisation", help="epochs per task")
    batch_size: int = option(8, bounds=AT_LEAST_1, section="optimisation", help="training batch size")
    grad_accum: int = option(1, bounds=AT_LEAST_1, section="optimisation", help="gradient accumulation steps")
    # Clip the total gradient norm of the trainable parameters before each optimiser step
    # (sapt.stage_trainer.StageTrainer.optimiser_step). 0 keeps the measured runs' behaviour; the paper
    # configs set the release's 1.0 (Hugging Face's default max_grad_norm).
    max_grad_norm: float = option(0.0, bounds=Bounds(0, note="0 = off"), section="optimisation",
                                  help="clip the total gradient norm of the blocks and router (the reflection KL's "
                                       "gradient included) to this before each optimiser step; 0 = off (the release: 1)")
    # The learning rate's schedule over one stage's optimiser steps (sapt.stage_trainer.make_scheduler): each
    # task's stage is its own training run, so every stage warms up and decays again. "constant" with no warm-up
    # is the paper's and the release's (and sapt's before this option): no scheduler is built at all.
    lr_scheduler: str = option("constant", section="optimisation", choices=LR_SCHEDULERS,
                               help="learning-rate schedule of transformers (get_scheduler) over each stage's "
                                    "optimiser steps: every task's stage is its own run, warmed up and decayed anew "
                                    "(the router-fit phase of learn-then-route keeps a constant rate)")
    warmup_ratio: float = option(0.0, bounds=Bounds(0, 1), section="optimisation",
                                 help="share of each stage's optimiser steps over which the learning rate warms up "
                                      "from 0 (rounded up, as transformers' Trainer does); needs a schedule with a "
                                      "warm-up, not constant")
    # what numpy and torch accept as a seed
    seed: int = option(42, bounds=Bounds(0, 2**32, high_open=True, text="in [0, 2**32)"),
                       section="optimisation", help="seed for data splits, initialisation and shuffling")

    # ---- lengths and decoding -------------------------------------------------------------------------
    max_source_length: int = option(512, bounds=AT_LEAST_1,
                                    section="decoding", help="prompt tokens kept, cut in the middle")
    max_target_length: int = option(128, bounds=AT_LEAST_1, section="decoding", help="answer tokens trained on")
    max_new_tokens: int = option(50, bounds=AT_LEAST_1, section="decoding", help="generation length at evaluation")
    eval_batch_size: int = option(16, bounds=AT_LEAST_1,
                                  section="decoding", resume="free", help="evaluation batch size")
    # An answer ends at its first line break where no answer of the task has one (sapt.evaluation.generation)
    stop_at_newline: bool = option(True, section="decoding",
                                   help="generate up to --max-new-tokens or EOS even for tasks whose answers are "
                                        "one line (default: such an answer ends at its first line break)")

    # ---- attentive reflection (ARM) -------------------------------------------------------------------
    reflection: bool = option(True, section="reflection", help="ablate attentive reflection (no KL replay)")
    reflection_source: str = option("generated", section="reflection", choices=REFLECTION_SOURCES,
                                    help="replay inputs: generated pseudo samples or stored real inputs")
    # None: per model family and benchmark (sapt.reflection)
    kl_ratio: float | None = option(None, bounds=NON_NEGATIVE, section="reflection",
                                    default_help="1 for LLaMA-family, 0.5 SuperNI / 0.1 Long_Sequence for T5",
                                    help="weight of the reflection KL")
    replay_every: int = option(1, bounds=AT_LEAST_1,
                               section="reflection", help="optimiser steps between replay batches")
    # None: by schedule (`schedule_defaults`). In learn-then-route the replay inputs serve only the router fit,
    # where a few short pseudo inputs held an old task's real inputs badly (BENCHMARKS.md, "More replay inputs
    # for the router fit"); the joint schedule keeps the paper's 2%.
    pseudo_ratio: float | None = option(None, bounds=Bounds(0, 1, low_open=True), section="reflection",
                                        default_help="0.2 with the learn-then-route schedule, 0.02 (the paper's) "
                                                     "with joint",
                                        help="replay inputs per task as a fraction of its training size, at least 1")
    pseudo_max: int = option(50, bounds=AT_LEAST_1,
                             section="reflection", help="at most this many replay inputs per task")
    # The generator's cost scales with the task's by default (issue 28): a quarter of the task's own training
    # batches, and samples as long as most of the task's inputs. `pseudo_steps` or `pseudo_epochs` set a budget
    # of their own; a run saved before the budget wrote `pseudo_epochs: 1` and `pseudo_max_new_tokens: 128`.
    pseudo_epochs: int | None = option(None, bounds=AT_LEAST_1, section="reflection",
                                       default_help="--pseudo-step-fraction of the task's training batches",
                                       help="passes of the pseudo-sample generator LoRA over the task's inputs")
    pseudo_steps: int | None = option(None, bounds=AT_LEAST_1, section="reflection",
                                      default_help="--pseudo-step-fraction of the task's training batches",
                                      help="optimiser steps of the generator LoRA, a budget of its own")
    pseudo_step_fraction: float = option(0.25, bounds=Bounds(0, 10, low_open=True), section="reflection",
                                         help="the generator's steps as a fraction of the task's own training "
                                              "batches (epochs x batches per epoch), at least 1; used when neither "
                                              "--pseudo-steps nor --pseudo-epochs is given")
    pseudo_lr: float = option(1e-3, bounds=POSITIVE, section="reflection", help="learning rate of the generator LoRA")
    pseudo_r: int = option(8, bounds=AT_LEAST_1, section="reflection", help="rank of the generator LoRA")
    pseudo_top_k: int = option(20, bounds=AT_LEAST_1, section="reflection", help="top-k sampling of pseudo inputs")
    pseudo_repetition_penalty: float = option(2.5, bounds=POSITIVE,
                                              section="reflection", help="repetition penalty of pseudo sampling")
    pseudo_max_new_tokens: int | None = option(None, bounds=AT_LEAST_1, section="reflection",
                                               default_help="the 75th percentile of the task's input lengths in "
                                                            "tokens, rounded up to 8, within 8..min(64, "
                                                            "--max-source-length)",
                                               help="length limit of a pseudo sample")

    # ---- the sections, as the components below the recipe take them ---------------------------------------
    def section(self, name: str) -> Any:
        """Section `name` of SECTIONS as a frozen view (`SECTION_TYPES[name]`): its fields' values, copied, so
        that a component given a section reads its own keys and can change none of the run's. The block and
        method sections' `options` is the selected type's or method's own (`block_options`, `method_options`)."""
        view = SECTION_TYPES[name]
        values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(view) if f.name in FIELDS}
        if name in OWNED_OPTIONS:
            values["options"] = getattr(self, OWNED_OPTIONS[name][1])
        return view(**values)

    @property
    def run(self) -> RunSection:
        """The run and output keys: model, backbone dtype, quantisation, mixed precision, trackers, ..."""
        return self.section("run")

    @property
    def data(self) -> DataSection:
        """Which tasks, how they are split and cut, and the prompt template."""
        return self.section("data")

    @property
    def block(self) -> BlockSection:
        """The per-task blocks: the type (`pet`), a new block's start (`block_init`) and the type's own options
        (`options`: `block_options`, e.g. a `LoRAOptions`; None for a type with none, IA3).

        The selected type's options only, not every type's keys: a block type is built, exported and described
        from its own keys (`BlockType.from_config(block, seed)` reads `block.options`), so that a LoRA run's
        prompt_len, which it never uses, reaches no LoRA code, and a new type's keys reach its code with no
        edit to this view."""
        return self.section("block")

    @property
    def router(self) -> RouterSection:
        """The router: its query, warm-up, centre, a new key, the schedule and the router fit."""
        return self.section("router")

    @property
    def optim(self) -> OptimisationSection:
        """Optimisation: rates, epochs, batches, accumulation, clipping, the schedule, the seed."""
        return self.section("optimisation")

    @property
    def decoding(self) -> DecodingSection:
        """Lengths (prompt, answer, generation), the evaluation batch and where an answer stops."""
        return self.section("decoding")

    @property
    def arm(self) -> ReflectionSection:
        """Attentive reflection (the paper's ARM): on or off, its inputs, KL weight, the pseudo-sample generator.
        Named for the paper's module, since `reflection` is the key that turns it on."""
        return self.section("reflection")

    @property
    def method_options(self) -> Any | None:
        """The selected method's own options, an instance of its `Options` (`sapt.methods.base.Method`) from
        the flat keys it declares; None when it declares none (or the method is unknown: `validate` says so)."""
        method = METHODS.get(self.method)
        return self._options(method.Options if method is not None else None)

    @property
    def block_options(self) -> Any | None:
        """The selected block type's own options (`pet`'s), an instance of the `OPTIONS` its folder's config.py
        declares (`LoRAOptions`, `PromptOptions`) from the flat keys; None when it declares none (IA3)."""
        return self._options(BLOCK_OPTIONS.get(self.pet))

    def _options(self, options: type | None) -> Any | None:
        """An instance of options class `options` (None: None) from this config's flat keys, copied."""
        if options is None:
            return None
        return options(**{f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(options)})

    def validate(self) -> None:
        """Each field's declared range and choices, then the rules between fields."""
        for name, f in FIELDS.items():
            bounds, value = f.metadata["bounds"], getattr(self, name)
            if bounds is not None and value is not None and not bounds.holds(value):
                raise ConfigError(f"{name} must be {bounds}, got {value}")
        if self.router_ce and self.router_schedule != "joint":
            # Refused, not ignored: since learn-then-route became the default, a --router-ce given alone
            # would otherwise change nothing and say nothing (the router fit has its own cross-entropy).
            raise ConfigError(f"router_ce {self.router_ce:g} is routing supervision for the joint schedule; with "
                              f"router_schedule {self.router_schedule} the router fit already routes each task "
                              "with a cross-entropy: add --router-schedule joint, or drop --router-ce")
        self._validate_route_without_definition()
        if not self.val_size > 0 or (self.val_size >= 1 and self.val_size != int(self.val_size)):
            raise ConfigError(f"val_size must be a fraction in (0, 1) or a whole count >= 1, got {self.val_size}")
        for name, f in FIELDS.items():  # the choices a field declares (the CLI offers the same ones)
            choices = f.metadata.get("choices")
            if choices and getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        self._validate_schedule_targets_tracker()
        self._validate_quantize()
        if self.template == "release":
            from sapt.data.prompts import RELEASE_BENCHMARKS

            if self.benchmark not in RELEASE_BENCHMARKS:
                where = f"benchmark {self.benchmark!r}" if self.benchmark else "the built-in suite"
                raise ConfigError(f"template release: the public release has templates for "
                                  f"{' and '.join(RELEASE_BENCHMARKS)} only, not for {where} (use template: family)")
        if self.method in method_names():  # a method whose math needs one kind of block refuses the others
            from sapt.methods import make_method

            refused = make_method(self.method, self.method_options).refuses_pet(self.pet)
            if refused:
                raise ConfigError(refused)
        unknown = sorted(set(self.log_with) - set(TRACKERS))
        if unknown:
            raise ConfigError(f"log_with: unknown tracker(s) {', '.join(unknown)} (available: {', '.join(TRACKERS)})")
        if self.method not in method_names():
            raise ConfigError(f"unknown method {self.method!r} (available: {', '.join(method_names())})")
        if self.data_dir is not None and self.benchmark is None:
            raise ConfigError("--benchmark is required with --data-dir (e.g. Long_Sequence or SuperNI)")
        if self.data_dir is None and self.benchmark is not None:
            raise ConfigError("--benchmark needs --data-dir")
        self._validate_task_lists()

    def _validate_task_lists(self) -> None:
        """tasks and unseen: no empty list, no name twice, no task in both."""
        if self.tasks is not None and not self.tasks:  # the API's tasks=[]: not "every task" by surprise
            raise ConfigError("tasks: an empty list names no task; leave tasks out (null) for every task")
        # Scores, stages and blocks are keyed by task name: a task named twice would mix two stages' scores in
        # one column of the matrix (and its second block would shadow the first at export).
        for key, names in (("tasks", self.tasks or []), ("unseen", self.unseen)):
            dupes = sorted({t for t in names if names.count(t) > 1})
            if dupes:  # the data validator's wording (sapt.data.validate), which a --data-dir run met first
                raise ConfigError(f"{key}: duplicate task names in the task list: "
                                  + ", ".join(f"{t} ({names.count(t)} times)" for t in dupes))
        trained = sorted(set(self.unseen) & set(self.tasks or []))
        if trained:
            raise ConfigError(f"unseen: task(s) {', '.join(trained)} are also in --tasks; an unseen task is never trained on")

    def _validate_route_without_definition(self) -> None:
        """route_without_definition is a share in [0, 1], taught by the learn-then-route router fit only.

        Refused with the joint schedule rather than implemented there: the joint router reads the pooled
        prompt of the very batch the block trains on, so routing a share of it from another prompt would need a
        second prompt per row through collation and the model's forward (and the reflection batches likewise),
        in the schedule kept as the paper's; the router fit reads pooled prompts only and takes the extra rows for
        a few more pooled vectors. Refused, not ignored, with a method that has no router fit: it would change
        nothing and say nothing."""
        share = self.route_without_definition  # its range [0, 1] is the field's
        if not share:
            return
        if self.method in method_names():
            from sapt.methods import make_method

            if not make_method(self.method, self.method_options).routed:
                raise ConfigError(f"route_without_definition {share:g}: method {self.method} has no router to teach; "
                                  "leave it out (a routed method: sapt, sapt-hard)")
        if self.router_schedule != "learn-then-route":
            raise ConfigError(f"route_without_definition {share:g} is taught by the router fit of --router-schedule "
                              f"learn-then-route, not by the {self.router_schedule} schedule: use --router-schedule "
                              "learn-then-route, or drop --route-without-definition")

    def _validate_quantize(self) -> None:
        """A reserved model name is refused with --quantize: none of them is loaded through a quantisation
        config. smollm2 is a GGUF file de-quantised to float32 by transformers' GGUF reader, which takes no
        bitsandbytes config, so its hub original is named instead; the tiny-* models are random ones built
        from a config (no weights to load in 4/8 bits). Whether bitsandbytes and a CUDA device are here is
        the machine's, not the config's: `sapt.models.quantize_backend_problem`, before the run directory."""
        if self.quantize == "none":
            return
        from sapt.model_names import TINY

        if self.model == "smollm2":
            raise ConfigError(f"quantize {self.quantize}: model smollm2 is a GGUF file (Q4_1) de-quantised to float32 "
                              "on load, not loaded through a quantisation config; use its hub id "
                              "HuggingFaceTB/SmolLM2-135M-Instruct with --quantize")
        if self.model in TINY:
            raise ConfigError(f"quantize {self.quantize}: model {self.model} is a small random test model built from a "
                              "config, with no weights to load in 8 or 4 bits; --quantize takes a hub id or local path")

    def _validate_schedule_targets_tracker(self) -> None:
        """lr_scheduler / warmup_ratio, target_modules and tracker_project (part of `validate`)."""
        if self.warmup_ratio > 0 and self.lr_scheduler == "constant":  # transformers' constant ignores a warm-up
            raise ConfigError(f"warmup_ratio {self.warmup_ratio}: lr_scheduler constant has no warm-up; use "
                              "constant_with_warmup (or linear, cosine, ...) or warmup_ratio 0")
        if self.target_modules is not None:
            if self.pet != "lora":
                what = "soft prompts" if self.pet == "prompt" else "its own modules"
                raise ConfigError(f"target_modules: pet {self.pet} ({what}) adapts no module; target_modules "
                                  "is for LoRA blocks: leave it out")
            from sapt.modules.blocks.lora.config import target_pattern

            try:
                target_pattern(self.target_modules)
            except ValueError as e:
                raise ConfigError(f"target_modules: {e}") from None
        if self.tracker_project is not None:
            bad = sorted(set(self.tracker_project) & set(TRACKER_PROJECT_REFUSED))
            if not self.tracker_project.strip() or self.tracker_project.strip() in (".", "..") or bad \
                    or len(self.tracker_project) > 128:
                why = f"holds {' '.join(map(repr, bad))}" if bad else "is not a folder name of at most 128 characters"
                raise ConfigError(f"tracker_project {self.tracker_project!r} {why}: it names a W&B project and a "
                                  "sub-folder of RUN_DIR/trackers")
            if not set(self.log_with) & {"tensorboard", "wandb"}:
                raise ConfigError(f"tracker_project {self.tracker_project!r}: log_with {','.join(self.log_with)} has "
                                  "no tracker with a project; add tensorboard or wandb to log_with, or leave it out")


# The built-in suite is a few hundred short examples for a CPU demo: larger steps than the paper's
# 3e-4 x 100 epochs so that a 135M model learns each task in two or three epochs.
# A real backbone in bfloat16: about 2x faster on a CPU with bf16 instructions, same scores (BENCHMARKS.md
# "bf16 on CPU"); the tiny random test models stay float32, where runs are compared to 1e-4.
BUILTIN_PRESET: dict[str, Any] = {
    "lr": 2e-3, "lora_r": 8, "epochs": 3, "batch_size": 8, "pseudo_ratio": 0.1, "pseudo_max_new_tokens": 64,
    "backbone_dtype": "bfloat16",
}

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def section_fields(section: str) -> list[dataclasses.Field]:
    """The fields of one section of SECTIONS, in the order of the source."""
    return [f for f in FIELDS.values() if f.metadata["section"] == section]


# The keys a block type declares in its folder (`_with_block_options`): {key: type name}
BLOCK_OPTION_KEYS = {f.name: name for name, options in BLOCK_OPTIONS.items() if options is not None
                     for f in dataclasses.fields(options)}
# The keys a method declares in its file (`_with_method_options`): {key: method name}
METHOD_OPTION_KEYS = {f.name: name for name, method in METHODS.items() if method.Options is not None
                      for f in dataclasses.fields(method.Options)}
# The sections whose keys are partly declared by their owners (a block type, a method): their view holds the
# selected owner's options as `options` (the RunConfig property named here) instead of every owner's keys.
OWNED_OPTIONS: dict[str, tuple[dict[str, str], str]] = {
    "block": (BLOCK_OPTION_KEYS, "block_options"),
    "method": (METHOD_OPTION_KEYS, "method_options"),
}


def _section_type(section: str) -> type:
    """The frozen dataclass of one section's keys, made from RunConfig's fields (the one declaration of each
    key: a view cannot drift from the config). Its name says the section: "optimisation" -> OptimisationSection.
    The block section holds its generic keys (pet, block_init) and `options`, the selected type's own
    (`RunConfig.block`), instead of every type's keys; the method section likewise (method, reference and the
    selected method's `options`), so that no view carries another owner's keys (`OWNED_OPTIONS`)."""
    hints = typing.get_type_hints(RunConfig)
    owned = OWNED_OPTIONS.get(section, ({}, ""))[0]
    keys = [(f.name, hints[f.name]) for f in section_fields(section) if f.name not in owned]
    if section in OWNED_OPTIONS:
        keys.append(("options", Any))
    view = dataclasses.make_dataclass(f"{section.title()}Section", keys, frozen=True)
    view.__module__ = __name__  # (make_dataclass's module= is Python 3.12's)
    return view


# Each section's view (`RunConfig.section`, and its properties: run, data, block, router, optim, decoding, arm).
SECTION_TYPES: dict[str, type] = {s: _section_type(s) for s in SECTIONS}
RunSection, DataSection, BlockSection, RouterSection, OptimisationSection, DecodingSection, ReflectionSection = (
    SECTION_TYPES[s] for s in ("run", "data", "block", "router", "optimisation", "decoding", "reflection"))


def _resume(policy: str) -> tuple[str, ...]:
    return tuple(k for k, f in FIELDS.items() if f.metadata["resume"] == policy)


# Keys that may change between a run and its resumption without changing what is computed.
RESUMABLE_KEYS = frozenset(_resume("free"))
# Keys that may differ from the saved config when a run is resumed with --allow-config-change (to get past
# a non-finite loss). Every other difference is refused. Each epoch's rates are in its stage.json history.
CHANGEABLE_KEYS = _resume("changeable")

# The order of the keys in RUN_DIR/config.yaml, as sapt has always written them (the source's order
# changed when the fields were grouped by section; a run's config.yaml stays byte-identical). A key that
# is not listed here goes after these, in the source's order.
SAVED_ORDER = (
    "output", "model", "method", "reference", "olora_lambda1", "olora_lambda2", "replay_memory",
    "data_dir", "benchmark", "tasks", "extra_tasks", "order", "val_size", "max_train_per_task", "max_eval_per_task",
    "lora_r", "lora_alpha", "lora_dropout", "query_hidden",
    "lr", "router_lr", "router_warmup", "router_centre", "router_key_init",
    "epochs", "batch_size", "grad_accum", "seed", "mixed_precision", "backbone_dtype", "log_with",
    "max_source_length", "max_target_length", "max_new_tokens", "eval_batch_size", "stop_at_newline",
    "reflection", "reflection_source", "kl_ratio", "replay_every", "pseudo_ratio", "pseudo_max", "pseudo_epochs",
    "pseudo_steps", "pseudo_lr", "pseudo_r", "pseudo_top_k", "pseudo_repetition_penalty", "pseudo_max_new_tokens",
    "notes",
    "block_init",  # keys added later go here, at the end
    "input_field", "output_field", "unseen",
    "pet", "prompt_len",
    "router_schedule", "router_fit_steps", "router_ce", "router_fit_kl",
    "prompt_mlp_hidden", "max_grad_norm", "template",
    "lr_scheduler", "warmup_ratio", "target_modules", "tracker_project",
    "eval_every",
    "route_without_definition",
    "quantize",
    "pseudo_step_fraction",
)
if len(set(SAVED_ORDER)) != len(SAVED_ORDER) or not set(SAVED_ORDER) <= set(FIELDS):
    raise RuntimeError("SAVED_ORDER must list config keys, each once")
_KEY_ORDER = SAVED_ORDER + tuple(k for k in FIELDS if k not in SAVED_ORDER)


def flag_of(name: str) -> str | None:
    """The `sapt run` flag of config key `name` (None if it has none): --name-with-dashes, or --no-name for
    a boolean that defaults to true, unless its declaration names another."""
    f = FIELDS[name]
    flag = f.metadata["flag"]
    if flag is False:
        return None
    if isinstance(flag, str):
        return flag
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if f.default is True else f"--{dashed}"


def default_text(name: str) -> str | None:
    """The default of config key `name` as the help shows it, with the built-in suite's where the preset
    differs: "(default 4; 8 on the built-in suite)", "(default: --lr)" (what a default of None means), or
    None (nothing to say)."""
    f = FIELDS[name]
    value = default_value(name)
    preset = f"; {_show(BUILTIN_PRESET[name])} on the built-in suite" if name in BUILTIN_PRESET else ""
    if value is None or value in ([], {}):
        return f"(default: {f.metadata['default_help']}{preset})" if f.metadata["default_help"] else None
    text = f"(default {_show(value)}"
    if name in BUILTIN_PRESET and BUILTIN_PRESET[name] != value:
        text += f"; {_show(BUILTIN_PRESET[name])} on the built-in suite"
    return text + ")"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):  # 3e-4 rather than 0.0003, 32 rather than 32.0
        plain = f"{value:g}"
        mantissa, _, exponent = f"{value:e}".partition("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return short if len(short) < len(plain) and float(short) == value else plain
    return str(value)


def resolve(overrides: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """Defaults, then the built-in preset when no data is given, then the YAML file, then `overrides`."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(coerce_all(load_yaml(config_file), source=str(config_file)))
    values.update(coerce_all(overrides))
    if values.get("data_dir") is None:
        preset = dict(BUILTIN_PRESET)
        if str(values.get("model", RunConfig.model)).startswith("tiny-"):
            del preset["backbone_dtype"]
        values = {**preset, **values}
    values = schedule_defaults(values)
    if "pet" not in values:  # a method made for one kind of block (seq-prompt, progprompt) brings its kind
        from sapt.methods import METHODS

        method = METHODS.get(values.get("method", RunConfig.method))
        if method is not None and method.pet is not None:
            values["pet"] = method.pet
    cfg = RunConfig(**values)
    cfg.validate()
    from sapt.model_names import model_name_problem  # a typo is refused here, before any network wait

    problem = model_name_problem(cfg.model)
    if problem is not None:
        raise ConfigError(problem)
    return cfg


# Defaults that depend on the router schedule, for keys left unset (None): {key: {schedule: value}}.
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {"pseudo_ratio": {"learn-then-route": 0.2, "joint": 0.02}}


def schedule_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with each key of SCHEDULE_DEFAULTS that is unset or None given its schedule's default.

    Filled when a config is resolved, so that config.yaml saves the value in force and a resumed or re-read
    run keeps it whatever a later default becomes. The value is the schedule's, not a preset's guess: with
    learn-then-route the replay inputs serve only the router fit, which reads their pooled embeddings (no
    backbone pass), so more of them cost only their generation, at most `pseudo_max` a task."""
    schedule = values.get("router_schedule") or RunConfig.router_schedule
    out = dict(values)
    for key, by_schedule in SCHEDULE_DEFAULTS.items():
        if out.get(key) is None and schedule in by_schedule:
            out[key] = by_schedule[schedule]
    return out


# Keys whose default changed after runs were saved without them: such a run was trained with the value here,
# not with today's default, so reading (and resuming) it keeps that value. router_schedule came in
# learn-then-route's release with "joint" as its default, and became learn-then-route later; a config.yaml
# with no router_schedule key was written by a sapt that trained every router jointly.
SAVED_BEFORE_THE_KEY = {"router_schedule": "joint"}


def from_saved(path: str | Path) -> RunConfig:
    """The config a run was made with, from the config.yaml file at `path` (which sapt.rundir finds in a
    run directory), checked as a --config file is, with the defaults of keys saved before they existed."""
    saved = load_yaml(path)
    cfg = RunConfig(**schedule_defaults(coerce_all({**SAVED_BEFORE_THE_KEY, **saved}, source=str(path))))
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return {k.replace("-", "_"): v for k, v in data.items()}


# ---- types: every value is checked against its field's annotation before RunConfig sees it ------------
_TYPES = typing.get_type_hints(RunConfig)
# Text keys that also take a list of names (YAML `target_modules: [q_proj, v_proj]`, as PEFT's), kept joined
# by commas: the text form, a single regex, may itself hold commas, so the key is not a list of strings.
NAME_LISTS = ("target_modules",)


def coerce_all(values: dict[str, Any], source: str = "") -> dict[str, Any]:
    """`values` with each one coerced to its field's type (`coerce`); unknown keys are refused.
    `source` (a file) is named in the error."""
    where = f"{source}: " if source else ""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}unknown config key(s): {', '.join(unknown)}")
    try:
        return {k: coerce(k, v) for k, v in values.items()}
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def base_type(key: str) -> type:
    """The type of config field `key` without its None and its items: bool, int, float, str, list or dict."""
    hint = _TYPES[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if type(None) in typing.get_args(hint) else hint
    return typing.get_origin(base) or base


def coerce(key: str, value: Any) -> Any:
    """`value` as the type of config field `key`, or a ConfigError naming the key.

    YAML 1.1 (PyYAML) reads `1e-4` as a string (it wants `1.0e-4`), so a numeric string is taken as a
    number where the field is numeric; a list field takes a comma-separated string (`log_with: jsonl` is
    one tracker, not five letters). Non-finite floats (nan, inf) are refused everywhere: a NaN option
    silently disables what it weighs and cannot be written to JSON.

    Values of the Python API that stand for a plain one are taken as it (`_plain`): a numpy scalar
    (`lr=np.float64(2e-3)` from an `np.logspace` sweep, `epochs=np.int64(3)`) and a path
    (`output=Path("runs/x")`). Without this np.int64 was refused as "expected a number", and np.float64 (a
    float subclass) passed every check but config.yaml's writer, after the model had loaded."""
    hint = _TYPES[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    value = _plain(value)
    if isinstance(value, (list, tuple)):
        value = [_plain(v) for v in value]
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            _check_encodable(key, text)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required (got null)")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base) or base
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if origin in (int, float):
        return _number(key, value, origin)
    if origin is str:
        if isinstance(value, str):
            return value
        if key in NAME_LISTS and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            if not all(re.fullmatch(r"\s*[\w.]+\s*", v) for v in value):  # names, not patterns (PEFT's list)
                raise ConfigError(f"{key}: a list holds module names (letters, digits, _ and .); give a regular "
                                  f"expression as one string, got {value!r}")
            return ",".join(v.strip() for v in value)  # a YAML list of names, as PEFT's target_modules list
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return list(items)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _check_encodable(key: str, text: str) -> None:
    """A string the run can write: config.yaml, run.log and file names are UTF-8, and a lone surrogate (what
    Python makes of bytes that are not UTF-8, or a half of a pair) is not, so it crashed a write after the
    model had loaded, with a UnicodeEncodeError. Refused in one line that does not print it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{key}: holds a lone surrogate (U+{ord(text[e.start]):04X} at position {e.start}), "
                          "which is not UTF-8 text (bytes of another encoding?)") from None


def _plain(value: Any) -> Any:
    """The plain Python value a numpy scalar (np.float64, np.int64, np.bool_, np.str_) or a path stands for;
    anything else as it is. A subclass of a plain type (np.float64 is a float) becomes the plain type, which
    yaml.safe_dump writes. numpy is looked up only if it is already imported: a value cannot be one of its
    scalars otherwise, and `sapt --help` stays light."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value) in (bool, int, float, str):  # (True is an int too: it stays True)
        return value
    for plain in (bool, int, float, str):
        if isinstance(value, plain) and type(value) is not plain:
            return plain(value)
    return value


def _number(key: str, value: Any, kind: type) -> int | float:
    x = value
    if isinstance(x, str):
        try:
            x = float(x.strip()) if kind is float or not x.strip().lstrip("+-").isdigit() else int(x.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(x):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if kind is int:
        if x != int(x):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return int(x)
    return x


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config's keys and values, in the order of config.yaml (SAVED_ORDER)."""
    values = dataclasses.asdict(cfg)
    return {k: values[k] for k in _KEY_ORDER}


def differences(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Keys whose values differ between a saved run config and `cfg`, ignoring resumable keys."""
    now = to_dict(cfg)
    keys = (set(saved) | set(now)) - RESUMABLE_KEYS
    # a key the saved config lacks (written by an older sapt) had its default then
    old = {k: saved[k] if k in saved else default_value(k) for k in keys}
    return sorted(k for k in keys if old[k] != now.get(k))


def default_value(key: str) -> Any:
    f = FIELDS.get(key)
    if f is None:
        return None
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
