"""The run configuration: one dataclass, resolved as defaults < preset < YAML file < command line.

The resolved config is saved as `config.yaml` in the run directory; resuming checks it is unchanged.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


PRECISIONS = ("no", "bf16", "fp16")  # --mixed-precision (sapt.distributed)
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")  # --backbone-dtype (sapt.models)
ROUTER_KEY_INITS = ("random", "task")  # --router-key-init (sapt.train.init_key_from_task)
TRACKERS = ("jsonl", "tensorboard", "wandb")  # --log-with (sapt.tracking)


@dataclass
class RunConfig:
    output: str = "runs/demo"
    model: str = "smollm2"
    method: str = "sapt"  # see sapt.methods: sapt, sapt-hard, seq-lora, inc-lora, o-lora, replay, per-task, mtl
    reference: str | None = None  # a per-task run of the same tasks: its diagonal gives FWT's s_j
    olora_lambda1: float = 0.5  # O-LoRA orthogonality weight
    olora_lambda2: float = 0.0  # O-LoRA L2 weight
    replay_memory: int = 10  # replay: real examples stored per old task
    # data: with no data_dir, the built-in generated suite (sapt.data.builtin) is used
    data_dir: str | None = None
    benchmark: str | None = None
    tasks: list[str] | None = None
    extra_tasks: list[str] = field(default_factory=list)  # task folders appended by `sapt learn`
    order: int | None = None
    val_size: float = 0.1  # fraction of the training examples, or a count when >= 1
    max_train_per_task: int | None = None
    max_eval_per_task: int | None = None
    # SALS
    lora_r: int = 4
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    query_hidden: int = 100
    # optimisation (METHOD.md: lr 3e-4 constant, no warmup, AdamW)
    lr: float = 3e-4
    router_lr: float | None = None  # defaults to lr
    # Share of a stage's optimiser steps (stages 2..T) during which the router stays frozen while the new,
    # zero-initialised block learns; see train_stage. 0 = the paper's schedule.
    router_warmup: float = 0.25
    # Subtract the mean pooled prompt of the tasks seen so far before the query MLP (sapt.train.update_centre);
    # false with router_warmup 0 is the paper's router.
    router_centre: bool = True
    # A new task's key: "random" (the paper) or "task" (sapt.train.init_key_from_task)
    router_key_init: str = "random"
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 42
    mixed_precision: str = "no"  # or bf16 / fp16: autocast around forward passes; the LoRA weights stay float32
    # The frozen backbone's weights in this dtype (LoRA blocks, router and optimiser stay float32): bfloat16
    # is what makes a CPU with bf16 instructions fast (BENCHMARKS.md "bf16 on CPU").
    backbone_dtype: str = "float32"
    log_with: list[str] = field(default_factory=lambda: ["jsonl"])  # trackers (sapt.tracking): jsonl, tensorboard, wandb
    # lengths and decoding
    max_source_length: int = 512
    max_target_length: int = 128
    max_new_tokens: int = 50
    eval_batch_size: int = 16
    # An answer ends at its first line break where no answer of the task has one (sapt.evaluate)
    stop_at_newline: bool = True
    # attentive reflection (ARM)
    reflection: bool = True
    reflection_source: str = "generated"  # or "real": a few stored training inputs
    kl_ratio: float | None = None  # None: per model family and benchmark (sapt.reflection)
    replay_every: int = 1  # optimiser steps between replay batches
    pseudo_ratio: float = 0.02  # replay inputs kept per task, as a fraction of its training size
    pseudo_max: int = 50
    pseudo_epochs: int = 1  # generator LoRA training
    pseudo_steps: int | None = None  # the generator's optimiser steps (a budget of its own); None: pseudo_epochs passes
    pseudo_lr: float = 1e-3
    pseudo_r: int = 8
    pseudo_top_k: int = 20
    pseudo_repetition_penalty: float = 2.5
    pseudo_max_new_tokens: int = 128
    notes: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        positive = ["lora_r", "epochs", "batch_size", "grad_accum", "max_source_length",
                    "max_target_length", "max_new_tokens", "eval_batch_size", "query_hidden"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "lora_alpha", "pseudo_lr", "pseudo_repetition_penalty"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.router_lr is not None and not self.router_lr > 0:
            raise ConfigError(f"router_lr must be > 0, got {self.router_lr}")
        if not 0 <= self.router_warmup < 1:
            raise ConfigError(f"router_warmup must be in [0, 1), got {self.router_warmup}")
        if not self.val_size > 0 or (self.val_size >= 1 and self.val_size != int(self.val_size)):
            raise ConfigError(f"val_size must be a fraction in (0, 1) or a whole count >= 1, got {self.val_size}")
        if not 0 <= self.seed < 2**32:  # what numpy and torch accept as a seed
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        for name in ("olora_lambda1", "olora_lambda2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_train_per_task", "max_eval_per_task"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.router_key_init not in ROUTER_KEY_INITS:
            raise ConfigError(f"router_key_init must be one of {', '.join(ROUTER_KEY_INITS)}, got {self.router_key_init!r}")
        if self.backbone_dtype not in BACKBONE_DTYPES:
            raise ConfigError(f"backbone_dtype must be one of {', '.join(BACKBONE_DTYPES)}, got {self.backbone_dtype!r}")
        if self.pseudo_steps is not None and self.pseudo_steps < 1:
            raise ConfigError(f"pseudo_steps must be >= 1, got {self.pseudo_steps}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        unknown = sorted(set(self.log_with) - set(TRACKERS))
        if unknown:
            raise ConfigError(f"log_with: unknown tracker(s) {', '.join(unknown)} (available: {', '.join(TRACKERS)})")
        if self.reflection_source not in ("generated", "real"):
            raise ConfigError(f"reflection_source must be 'generated' or 'real', got {self.reflection_source!r}")
        if self.kl_ratio is not None and self.kl_ratio < 0:
            raise ConfigError(f"kl_ratio must be >= 0, got {self.kl_ratio}")
        for name in ("replay_every", "pseudo_max", "pseudo_epochs", "pseudo_r", "pseudo_top_k", "pseudo_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.pseudo_ratio <= 1:
            raise ConfigError(f"pseudo_ratio must be in (0, 1], got {self.pseudo_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        from sapt.methods import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r} (available: {', '.join(METHODS)})")
        if self.replay_memory < 1:
            raise ConfigError(f"replay_memory must be >= 1, got {self.replay_memory}")
        if self.data_dir is not None and self.benchmark is None:
            raise ConfigError("--benchmark is required with --data-dir (e.g. Long_Sequence or SuperNI)")
        if self.data_dir is None and self.benchmark is not None:
            raise ConfigError("--benchmark needs --data-dir")


# The built-in suite is a few hundred short examples for a CPU demo: larger steps than the paper's
# 3e-4 x 100 epochs so that a 135M model learns each task in two or three epochs.
# A real backbone in bfloat16: about 2x faster on a CPU with bf16 instructions, same scores (BENCHMARKS.md
# "bf16 on CPU"); the tiny random test models stay float32, where runs are compared to 1e-4.
BUILTIN_PRESET: dict[str, Any] = {
    "lr": 2e-3, "lora_r": 8, "epochs": 3, "batch_size": 8, "pseudo_ratio": 0.1, "pseudo_max_new_tokens": 64,
    "backbone_dtype": "bfloat16",
}

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# Keys that may change between a run and its resumption without changing what is computed.
RESUMABLE_KEYS = {"output", "eval_batch_size", "notes", "data_dir", "reference", "log_with"}


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
    cfg = RunConfig(**values)
    cfg.validate()
    return cfg


def from_saved(run_dir: str | Path) -> RunConfig:
    """The config a run directory was made with (RUN_DIR/config.yaml), checked as a --config file is."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a sapt run directory (no config.yaml)")
    cfg = RunConfig(**coerce_all(load_yaml(path), source=str(path)))
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


def coerce(key: str, value: Any) -> Any:
    """`value` as the type of config field `key`, or a ConfigError naming the key.

    YAML 1.1 (PyYAML) reads `1e-4` as a string (it wants `1.0e-4`), so a numeric string is taken as a
    number where the field is numeric; a list field takes a comma-separated string (`log_with: jsonl` is
    one tracker, not five letters). Non-finite floats (nan, inf) are refused everywhere: a NaN option
    silently disables what it weighs and cannot be written to JSON."""
    hint = _TYPES[key]
    args = typing.get_args(hint)
    optional = type(None) in args
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
    return dataclasses.asdict(cfg)


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
