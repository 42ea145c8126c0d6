"""Pseudo inputs of a finished task, for the Attentive Reflection Module (docs/method.md).

After task t is trained, its routing must be protected while later tasks train, without keeping any of
its real data. So a *generator* learns to write task inputs: a temporary PEFT LoRA on the same frozen
backbone. Only inputs are ever generated; answers are never needed.

Better than the public release. Its generator maps a bare trigger `__gen__` to
`<definition>__inp__<input>`: the model must reproduce the whole task definition verbatim before every
input, under a repetition penalty of 2.5 that punishes exactly that copying; on long SuperNI definitions
the samples are cut before `__inp__`, and most tasks end up with 2-20 samples. Here the definition is
known (it is part of the task, not of its data), so it goes into the *prompt* -- `<definition>` then the
trigger -- and the target is the input alone. The generator learns only what varies, every sample is an
input, and well-formed means: non-empty and not an echo of the trigger.

Why the care around the SAPT model:
- The generator sits on the *inner* `nn.Linear` of the project's q/v mixture layers, and the SAPT task
  blocks are switched off (zero routing weights = the frozen backbone exactly) while it trains and
  samples, so it learns from the base model only and touches none of the task blocks.
- Afterwards it is unloaded completely: the model has the same modules and a bit-identical state_dict,
  and the caller's trainable set (`set_trainable(n_tasks - 1)`) and train/eval mode are restored.
- Everything random (LoRA init, shuffling, dropout, sampling) runs under `cfg.seed` inside
  `torch.random.fork_rng()`, so results are reproducible and the caller's RNG stream is untouched.

If fewer well-formed distinct samples than wanted come out within the attempt cap, fewer are returned,
possibly none: the caller decides what to do (e.g. skip reflection on that task); `stats` says so.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from sapt.batching import Encoded, collate_prompts, collate_train, truncate_middle
from sapt.distributed import get_dist
from sapt.progress import progress_bar

if TYPE_CHECKING:
    from sapt.config import OptimisationSection, ReflectionSection
    from sapt.data import Task
    from sapt.modules.sapt_model import SAPTModel

TRIGGER = "__gen__"
ADAPTER = "pseudo_generator"  # PEFT adapter name; distinct from the mixture's own `lora_A.N` params


@dataclass
class PseudoConfig:
    ratio: float = 0.02  # wanted count = max(1, round(ratio * len(task.train))), capped by max_samples
    max_samples: int = 50
    r: int = 8
    alpha: float = 32.0
    lr: float = 1e-3
    # The generator's steps: `steps` if set, else `epochs` passes over the inputs if set, else the budget,
    # `step_fraction` of the task's own training batches (`task_epochs` passes of `batch_size`), at least 1.
    epochs: int | None = None
    steps: int | None = None
    step_fraction: float = 0.25
    task_epochs: int = 1  # the run's epochs per task: what the task itself trained
    batch_size: int = 8  # generator training batch
    top_k: int = 20
    repetition_penalty: float = 2.5
    temperature: float = 1.0
    # The length limit of a sample; None: from the task's inputs (`sample_length`). An input longer than the
    # limit is learned cut, and its samples come out cut.
    max_new_tokens: int | None = None
    oversample: int = 4  # at most oversample * wanted samples are drawn
    seed: int = 0
    sample_batch_size: int = 16  # sequences drawn per generate() call

    def __post_init__(self) -> None:
        if self.ratio <= 0 or self.max_samples < 1 or self.oversample < 1 or self.step_fraction <= 0 or \
                self.task_epochs < 1 or (self.epochs is not None and self.epochs < 0) or \
                (self.steps is not None and self.steps < 1) or \
                (self.max_new_tokens is not None and self.max_new_tokens < 1):
            raise ValueError(f"bad pseudo-sample settings: {self}")

    # Each setting that a run config sets, and its key there (the generator trains with the run's batch size);
    # the others (alpha, temperature, oversample, sample_batch_size) keep their defaults here.
    RUN_KEYS: ClassVar[dict[str, str]] = {
        "ratio": "pseudo_ratio", "max_samples": "pseudo_max", "r": "pseudo_r", "lr": "pseudo_lr",
        "epochs": "pseudo_epochs", "steps": "pseudo_steps", "step_fraction": "pseudo_step_fraction",
        "task_epochs": "epochs", "batch_size": "batch_size", "top_k": "pseudo_top_k",
        "repetition_penalty": "pseudo_repetition_penalty", "max_new_tokens": "pseudo_max_new_tokens",
    }

    @classmethod
    def from_run(cls, arm: ReflectionSection, optim: OptimisationSection, seed: int) -> PseudoConfig:
        """The generator's settings of a run, sampling under `seed`: the reflection section's pseudo_* keys,
        and the optimisation section's epochs and batch size."""
        def value(key: str) -> Any:
            return getattr(arm, key) if hasattr(arm, key) else getattr(optim, key)

        return cls(**{name: value(key) for name, key in cls.RUN_KEYS.items()}, seed=seed)


def wanted_count(n_train: int, cfg: PseudoConfig) -> int:
    """How many samples to generate: `sapt.reflection.replay_count` with the config's ratio and cap."""
    from sapt.reflection import replay_count  # here, so importing sapt.pseudo keeps loading no model code

    return replay_count(n_train, cfg.ratio, cfg.max_samples)


def generator_prompt(definition: str) -> str:
    """What the generator is conditioned on: the task definition, then the trigger."""
    return f"{definition}\n{TRIGGER}\n" if definition else f"{TRIGGER}\n"


def parse_sample(text: str) -> str | None:
    """The stripped sample, or None if it is not well-formed: empty, or echoing the trigger."""
    inp = text.strip()
    if not inp or TRIGGER in inp:
        return None
    return inp


# ---- pieces ------------------------------------------------------------------------------------------
def _encode(model: SAPTModel, task: Task, max_source: int, max_target: int,
            max_new_tokens: int | None) -> tuple[list[Encoded], list[int], int]:
    """Prompt = definition + trigger, target = the input + EOS (loss on the target only), and the samples'
    length limit (`max_new_tokens`, or `sample_length` of the inputs when None). The generator is trained on
    inputs no longer than it may write, so that its samples end with EOS instead of being cut."""
    tok = model.tokenizer
    prompt = list(tok([generator_prompt(task.definition)], add_special_tokens=True)["input_ids"][0])
    if model.family == "causal" and prompt and prompt[-1] == tok.eos_token_id:
        prompt = prompt[:-1]  # the sample must follow the trigger, as in sapt.batching.encode
    prompt = truncate_middle(prompt, max_source)
    targets = [list(t) for t in tok([ex.input for ex in task.train], add_special_tokens=False)["input_ids"]]
    length = max_new_tokens if max_new_tokens is not None else sample_length([len(t) for t in targets], max_source)
    cut = min(max_target, length)
    items = [Encoded(prompt, t[: cut - 1] + [tok.eos_token_id]) for t in targets]
    return items, prompt, length


def _attach_generator(model: SAPTModel, cfg: PseudoConfig):
    """A PEFT LoRA on the frozen linears the block type names; returns (peft model, its parameters)."""
    # Exact module names rather than a pattern: right whatever target_pattern the SAPT model was built with.
    # The block type names them: for LoRA, the frozen Linear inside every mixture layer.
    targets = model.blocks.frozen_targets()
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations PEFT still calls
        peft_model = get_peft_model(model.base, config, adapter_name=ADAPTER)
    params = []
    for module in model.base.modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            params += list(module.lora_A[ADAPTER].parameters()) + list(module.lora_B[ADAPTER].parameters())
    model.requires_grad_(False)  # PEFT leaves anything named "lora_" alone, the mixture blocks included
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise RuntimeError("the pseudo-sample generator found no layer to adapt")
    return peft_model, params


def batches_per_pass(n_items: int, cfg: PseudoConfig) -> int:
    return -(-n_items // cfg.batch_size)


def generator_steps(n_items: int, cfg: PseudoConfig) -> int:
    """How many batches the generator trains on: `cfg.steps`, else `cfg.epochs` passes over the items, else
    the budget: `cfg.step_fraction` of the batches the task itself trained on, rounded up.

    Why a fraction by default: with one pass, a 1-epoch task paid as much again for its generator, and a
    user who did not know the keys paid 80% more than seq-lora for a run (issue 28). Reflection needs
    replay inputs that route like the task's, not a generator that writes them well: long-mini's tuned
    8 steps for a 32-step task kept all of reflection's effect (BENCHMARKS.md, "Reflection on a budget"),
    and the default budget is that quarter."""
    if cfg.steps is not None:
        return cfg.steps
    per_pass = batches_per_pass(n_items, cfg)
    if cfg.epochs is not None:
        return cfg.epochs * per_pass
    return max(1, math.ceil(cfg.step_fraction * cfg.task_epochs * per_pass))


# The budgeted sample length stays within these: 8 tokens say something about a task's inputs, and 64 is the
# length long-mini's tuned budget kept all of reflection's effect with (BENCHMARKS.md, "Reflection on a budget":
# old tasks routed 99.4% against 91.8% with 128-token samples); with a 128 cap long-mini's default run took
# 1.28x seq-lora's wall time, with 64 1.23x, at the same AP and BWT ("The default generator budget").
SAMPLE_LENGTH_MIN, SAMPLE_LENGTH_MAX = 8, 64


def sample_length(input_lengths: list[int], max_source: int) -> int:
    """The default length limit of a sample: the 75th percentile of the task's input lengths in tokens,
    rounded up to a multiple of 8, within 8..min(64, max_source).

    A replay prompt is cut to `max_source` tokens anyway, and the router reads a pooled prompt, so a sample
    needs the look of the task's inputs, not their full length: most inputs fit whole, the longest are
    learned and written cut. sst2's sentences get 24 tokens, mnli's pairs 56, amazon's reviews 64."""
    if not input_lengths:
        return min(SAMPLE_LENGTH_MAX, max_source)
    ordered = sorted(input_lengths)
    p75 = ordered[min(len(ordered) - 1, math.ceil(0.75 * len(ordered)) - 1)]
    rounded = -(-p75 // 8) * 8
    return max(SAMPLE_LENGTH_MIN, min(rounded, SAMPLE_LENGTH_MAX, max_source))


def generator_batches(n_items: int, cfg: PseudoConfig) -> list[list[int]]:
    """The generator's training batches (`generator_steps` of them): reshuffled passes over the items, the
    last pass cut short."""
    steps = generator_steps(n_items, cfg)
    batches: list[list[int]] = []
    while len(batches) < steps:
        perm = torch.randperm(n_items).tolist()
        batches += [perm[b:b + cfg.batch_size] for b in range(0, n_items, cfg.batch_size)]
    return batches[:steps]


def pass_means(losses: list[float], per_pass: int) -> list[float]:
    """Mean loss of each pass over the inputs (the last one may be partial)."""
    chunks = [losses[i:i + per_pass] for i in range(0, len(losses), per_pass)]
    return [sum(c) / len(c) for c in chunks]


def _train_generator(model: SAPTModel, items: list[Encoded], params: list[torch.nn.Parameter],
                     cfg: PseudoConfig) -> list[float]:
    """The loss of every step. The SAPT blocks are off: zero routing weights leave the backbone alone."""
    device = model.device
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    pad = model.tokenizer.pad_token_id
    losses: list[float] = []
    model.train()
    bar = progress_bar(generator_batches(len(items), cfg), desc="pseudo-sample generator", leave=False,
               disable=not get_dist().is_main)
    for idx in bar:
        batch = collate_train([items[i] for i in idx], model.family, pad)
        loss = model(batch, torch.zeros(len(idx), model.n_blocks, device=device))
        if not torch.isfinite(loss):
            raise RuntimeError(f"pseudo-sample generator: non-finite loss ({float(loss)}); lower its lr")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


@torch.no_grad()
def _sample(model: SAPTModel, prompt: list[int], k: int, cfg: PseudoConfig) -> list[str]:
    """k sampled continuations of the trigger, decoded and stripped."""
    device = model.device
    tok = model.tokenizer
    batch = collate_prompts([Encoded(prompt, [])], model.family, tok.pad_token_id)
    model.eval()
    with model.routed(torch.zeros(1, model.n_blocks, device=device)):  # repeated for the k rows
        out = model.base.generate(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
            do_sample=True, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty,
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, num_return_sequences=k,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, synced_gpus=model.sharded,
        )
    if model.family == "causal":
        out = out[:, len(prompt):]
    texts = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    # Under FSDP every process samples in step; all keep the main process's draws, so that they agree on
    # when to stop drawing even if their samples could differ.
    return get_dist().broadcast(texts) if model.sharded else texts


def _collect(sample: Callable[[int], list[str]], n: int, cfg: PseudoConfig) -> tuple[list[str], dict[str, Any]]:
    """Draw batches until n distinct well-formed inputs are found or oversample * n samples were drawn.
    Each batch asks for a quarter more than are still missing (not a whole `sample_batch_size`): on a CPU
    the cost of a sampling call grows with its batch, and most samples come out usable."""
    cap = cfg.oversample * n
    found: list[str] = []
    attempts = well_formed = 0
    preview: list[str] = []
    bar = progress_bar(total=n, desc="pseudo samples", leave=False, disable=not get_dist().is_main)
    while len(found) < n and attempts < cap:
        texts = sample(min(cfg.sample_batch_size, cap - attempts, math.ceil(1.25 * (n - len(found)))))
        attempts += len(texts)
        preview += texts[: max(0, 3 - len(preview))]
        for text in texts:
            inp = parse_sample(text)
            if inp is None:
                continue
            well_formed += 1
            if inp not in found:
                found.append(inp)
                bar.update(1 if len(found) <= n else 0)
    bar.close()
    distinct = len(found)
    stats = {
        "attempts": attempts,
        "well_formed_fraction": well_formed / attempts if attempts else 0.0,
        "distinct_fraction": distinct / well_formed if well_formed else 0.0,  # among the well-formed
        "preview": preview,  # a few raw samples, to eyeball what the generator writes
    }
    return found[:n], stats


# ---- the entry point ---------------------------------------------------------------------------------
def generate_pseudo_inputs(
    model: SAPTModel, task: Task, cfg: PseudoConfig, max_source: int = 512, max_target: int = 256
) -> tuple[list[str], dict[str, Any]]:
    """Train a generator on `task.train`, sample pseudo inputs, remove the generator.

    Returns the inputs (the task's input part only, to be formatted with the task definition by the
    caller) and stats: wanted, count, attempts, well_formed_fraction, distinct_fraction (distinct among
    the well-formed), novel_fraction (returned inputs equal to no training input), steps, loss (mean per pass
    over the inputs), preview, seconds, settings (with the sample length in force as max_new_tokens).
    The list may be shorter than `wanted`, or empty.
    """
    if not task.train:
        raise ValueError(f"task {task.name!r} has no training examples to learn pseudo inputs from")
    t0 = time.time()
    n = wanted_count(len(task.train), cfg)
    items, prompt, length = _encode(model, task, max_source, max_target, cfg.max_new_tokens)
    cfg = replace(cfg, max_new_tokens=length)
    was_training = model.training
    peft_model = None
    try:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            peft_model, params = _attach_generator(model, cfg)
            losses = _train_generator(model, items, params, cfg)
            inputs, stats = _collect(lambda k: _sample(model, prompt, k, cfg), n, cfg)
    finally:
        if peft_model is not None:
            peft_model.unload()  # puts the original nn.Linear back inside every mixture layer
        if model.n_tasks:
            model.set_trainable(model.n_tasks - 1)
        else:
            model.requires_grad_(False)
        model.train(was_training)
    train_inputs = {ex.input.strip() for ex in task.train}
    novel = sum(inp not in train_inputs for inp in inputs)
    stats = {
        "wanted": n,
        "count": len(inputs),
        **stats,
        "novel_fraction": novel / len(inputs) if inputs else 0.0,
        "steps": len(losses),
        "loss": pass_means(losses, batches_per_pass(len(items), cfg)),
        "seconds": round(time.time() - t0, 2),
        "settings": asdict(cfg),
    }
    return inputs, stats
