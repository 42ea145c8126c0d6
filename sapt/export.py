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
per-input mixture itself (see sapt/modules/blocks/lora/layer.py); router.* holds what is needed to compute
the weights, and PEFT's `add_weighted_adapter` or per-example `adapter_names=` can then use them.

The export reads the stage files of the run directory only (no model is loaded): the blocks from
stages/NN_<task>/adapter.safetensors, the keys from each stage's router.safetensors (key t is frozen
after stage t) and the query MLP and centre from the last stage's. Every stage is first checked against
the run's manifest.json checksums (a damaged stage is refused, never exported), and the export is built
in a temporary folder next to OUT and renamed into place only when it is complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from sapt import io
from sapt.config import ConfigError
from sapt.models import RESERVED
from sapt.rundir import load_run_config, trained_stages

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


def _load(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a stage file; an unreadable one is a damaged run, not a crash."""
    try:
        return io.load_tensors(path)
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); run the same `sapt run` command again to redo "
                          "its stage") from None


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


def _install(work: Path, out: Path) -> None:
    """Move the finished export to `out` by renames. An absent or empty `out` is the folder itself; into a
    non-empty one (a previous export, or any folder with --force) each exported entry is moved, replacing
    only the entries of the same name (router.json last: it marks the folder as an export). Replaced
    entries are put aside first and put back if a rename fails."""
    if not out.exists() or (not out.is_symlink() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(work, out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
    entries = sorted(work.iterdir(), key=lambda p: (p.name == "router.json", p.name))
    replaced, placed = [], []
    try:
        for entry in entries:
            target = out / entry.name
            if target.exists() or target.is_symlink():
                os.replace(target, aside / entry.name)
                replaced.append(entry.name)
            os.replace(entry, target)
            placed.append(entry.name)
    except BaseException:
        for name in placed:
            os.replace(out / name, work / name)
        for name in replaced:
            os.replace(aside / name, out / name)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the PEFT adapters and the router of a run; returns a summary (also router.json's content).

    The export is built in a temporary folder next to OUT and moved into place by renames only once it
    is complete, so a failure (a damaged stage, a full disk) leaves OUT as it was."""
    run_dir, out = Path(run_dir), Path(out).absolute()
    cfg = load_run_config(run_dir)
    stages = trained_stages(run_dir)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export."))
    try:
        work = holder / "export"
        work.mkdir()  # inside the private temporary folder, with the usual permissions (umask) for OUT
        info = _write_export(run_dir, cfg, stages, work)
        _check_out(out, force)  # again: something may have appeared meanwhile
        _install(work, out)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return info


def _write_export(run_dir: Path, cfg: Any, stages: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """Write the export into the (new, empty) folder `out`; returns router.json's content."""
    keys, adapters, all_modules = [], {}, None
    for t, (task, sdir) in enumerate(stages):
        state, modules = peft_state(_load(sdir / "adapter.safetensors"))
        if all_modules is None:
            all_modules = modules
        elif modules != all_modules:
            raise ConfigError(f"{sdir}: adapts other modules than stage 0")
        family = _family(modules)
        targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
        adir = out / task
        io.save_tensors(adir / "adapter_model.safetensors", state, {"format": "pt"})
        io.write_json(adir / "adapter_config.json", adapter_config(cfg, family, targets))
        router = _load(sdir / "router.safetensors")
        keys.append(router["key"].float())
        adapters[task] = task

    last_router = _load(stages[-1][1] / "router.safetensors")
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
