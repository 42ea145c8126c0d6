"""Export a run's task blocks as standard PEFT LoRA adapters, and its router as plain tensors.

    OUT/<task>/adapter_config.json        a PEFT LoraConfig (r, lora_alpha, target_modules, base model)
    OUT/<task>/adapter_model.safetensors  block t of every adapted projection, under PEFT's key names
    OUT/router.safetensors                "keys" [T, d] (one per task, in training order), "centre" [d]
                                          and the query MLP ("query_mlp.0.weight" [hidden, d],
                                          "query_mlp.1.weight" [d, hidden], "query_mlp.3.weight"/".bias"
                                          [d]: the LayerNorm)
    OUT/router.json                       tasks, d_model, hidden, model, LoRA r/alpha, target modules,
                                          and how the routing is computed

Each task adapter loads with `peft.PeftModel.from_pretrained(base_model, OUT/<task>)` and then behaves
exactly as the SAPT model with all routing weight on that task's block. PEFT cannot reproduce the
per-input mixture itself (see sapt/modules/mixture_lora.py); router.* holds what is needed to compute
the weights, and PEFT's `add_weighted_adapter` or per-example `adapter_names=` can then use them.

The export reads the stage files of the run directory only (no model is loaded): the blocks from
stages/NN_<task>/adapter.safetensors, the keys from each stage's router.safetensors (key t is frozen
after stage t) and the query MLP and centre from the last stage's. Every file is written atomically.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from sapt import io
from sapt.config import ConfigError
from sapt.models import RESERVED

PEFT_PREFIX = "base_model.model."
TASK_TYPE = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")

ROUTING_DESCRIPTION = (
    "SAPT shared attention routing. For an input, embed the prompt tokens with the base model's input "
    "embedding table, max-pool over the prompt positions (padding excluded) to a vector p of size d_model, "
    "compute query = LayerNorm(SiLU(W1 (W0 (p - centre)))) with W0 = query_mlp.0.weight [hidden, d_model], "
    "W1 = query_mlp.1.weight [d_model, hidden] and LayerNorm(weight = query_mlp.3.weight, bias = "
    "query_mlp.3.bias, eps = layer_norm_eps), then weights = softmax(keys @ query / sqrt(d_model)) over the "
    "tasks (keys [T, d_model], row t = task t). The output of every adapted projection is then "
    "W x + b + sum_t weights[t] * (lora_alpha / r) * B_t A_t x, with block t = the PEFT adapter of task t; "
    "the same weights serve every layer and every decoding step. A one-hot weight vector gives exactly "
    "the single PEFT adapter of that task."
)


def stage_dirs(run_dir: Path) -> list[tuple[str, Path]]:
    """(task, stage directory) of every trained stage, in order; refuses gaps (as load_trained does)."""
    done = sorted((run_dir / "stages").glob("*/stage.json"))
    if not done:
        raise ConfigError(f"{run_dir}: no trained stage to export")
    out = []
    for t, path in enumerate(done):
        sdir = path.parent
        name = sdir.name.split("_", 1)[1] if "_" in sdir.name else sdir.name
        if sdir.name != f"{t:02d}_{name}":
            raise ConfigError(f"{run_dir}: stage {t} is missing (found {sdir.name})")
        out.append((name, sdir))
    return out


def peft_state(block: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SAPT block tensors ('<module>.lora_A.weight') under PEFT's names, and the adapted module paths."""
    state, modules = {}, set()
    for key, tensor in block.items():
        m = _KEY.match(key)
        if not m:
            raise ConfigError(f"unexpected tensor {key!r} in a SAPT adapter file")
        modules.add(m["module"])
        state[PEFT_PREFIX + key] = tensor.contiguous()
    for module in modules:
        for ab in "AB":
            if f"{module}.lora_{ab}.weight" not in block:
                raise ConfigError(f"adapter tensor {module}.lora_{ab}.weight is missing")
    return state, sorted(modules)


def adapter_config(cfg: Any, family: str, targets: list[str]) -> dict[str, Any]:
    """A PEFT LoraConfig as a JSON dict. Fields PEFT does not find take its defaults when loading."""
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPE.get(family),
        "base_model_name_or_path": cfg.model,
        "revision": None,
        "inference_mode": True,
        "r": int(cfg.lora_r),
        "lora_alpha": float(cfg.lora_alpha),
        "lora_dropout": float(cfg.lora_dropout),
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def _family(modules: list[str]) -> str:
    return "seq2seq" if any(re.search(r"(^|\.)(SelfAttention|EncDecAttention)\.", m) for m in modules) else "causal"


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "router.json").exists() and not force:
        raise ConfigError(f"{out} is not empty and holds no sapt export; use another --out (or --force)")


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the PEFT adapters and the router of a run; returns a summary (also router.json's content)."""
    from sapt.train import load_run_config

    run_dir, out = Path(run_dir), Path(out)
    cfg = load_run_config(run_dir)
    stages = stage_dirs(run_dir)
    _check_out(out, force)

    keys, adapters, all_modules = [], {}, None
    for t, (task, sdir) in enumerate(stages):
        state, modules = peft_state(io.load_tensors(sdir / "adapter.safetensors"))
        if all_modules is None:
            all_modules = modules
        elif modules != all_modules:
            raise ConfigError(f"{sdir}: adapts other modules than stage 0")
        family = _family(modules)
        targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
        adir = out / task
        io.save_tensors(adir / "adapter_model.safetensors", state, {"format": "pt"})
        io.write_json(adir / "adapter_config.json", adapter_config(cfg, family, targets))
        router = io.load_tensors(sdir / "router.safetensors")
        keys.append(router["key"].float())
        adapters[task] = task

    last_router = io.load_tensors(stages[-1][1] / "router.safetensors")
    mlp = {k: v.contiguous() for k, v in last_router.items() if k.startswith("query_mlp.")}
    # runs written before the centre existed trained without one: zero
    mlp["centre"] = last_router.get("centre", torch.zeros(mlp["query_mlp.0.weight"].shape[1])).contiguous()
    stacked = torch.stack(keys).contiguous()
    io.save_tensors(out / "router.safetensors", {"keys": stacked, **mlp}, {"format": "pt"})

    hidden, d_model = mlp["query_mlp.0.weight"].shape
    info = {
        "format": "sapt-router/1",
        "tasks": [task for task, _ in stages],
        "adapters": adapters,
        "model": cfg.model,
        "model_family": family,
        "d_model": int(d_model),
        "hidden": int(hidden),
        "layer_norm_eps": 1e-5,
        "lora_r": int(cfg.lora_r),
        "lora_alpha": float(cfg.lora_alpha),
        "lora_scaling": float(cfg.lora_alpha) / int(cfg.lora_r),
        "target_modules": targets,
        "adapted_modules": all_modules,
        "router_tensors": {k: list(v.shape) for k, v in {"keys": stacked, **mlp}.items()},
        "routing": ROUTING_DESCRIPTION,
        "source_run": str(run_dir.resolve()),
    }
    if cfg.model in RESERVED:
        how = f"sapt.models.load_model({cfg.model!r}" + (f", seed={cfg.seed})" if cfg.model.startswith("tiny-") else ")")
        info["model_note"] = f"{cfg.model!r} is a name reserved by sapt: the base model is {how}.model"
    io.atomic_write_text(out / "router.json", json.dumps(info, indent=2) + "\n")
    return info
