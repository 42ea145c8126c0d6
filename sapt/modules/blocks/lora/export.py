"""LoRA blocks as standard PEFT LoRA adapters, and back (`LoRABlocks.export_adapters` / `read_adapters`).

    OUT/<task>/adapter_config.json        a PEFT LoraConfig (r, lora_alpha, target_modules, base model)
    OUT/<task>/adapter_model.safetensors  block t of every adapted projection, under PEFT's key names

Each task adapter loads with `peft.PeftModel.from_pretrained(base_model, OUT/<task>)` and then behaves
exactly as the SAPT model with all routing weight on that task's block. PEFT cannot reproduce the
per-input mixture itself (see layer.py); router.* holds what is needed to compute the weights, and PEFT's
`add_weighted_adapter` or per-example `adapter_names=` can then use them.

A fused q/k/v projection (Phi-3's `qkv_proj`, GPT-NeoX's and Falcon's `query_key_value`) has SAPT blocks
on its q and v parts (`<module>.q.lora_A.weight`, ..., fused.py), which PEFT cannot target. It is exported
as one PEFT LoRA on the fused Linear, exactly equal: rank 2r, A = [A_q; A_v] (2r, in) and B (out, 2r) zero
but for B[L_q, :r] = B_q and B[L_v, r:] = B_v, L_q and L_v the q and v rows of the model's layout
(`fused.qkv_layouts`), and lora_alpha 2 * alpha so that PEFT's lora_alpha / r is SAPT's alpha / r (set for
the whole adapter when every adapted module is fused, else through PEFT's `rank_pattern` /
`alpha_pattern`). Finding the layout needs the base model's config and the fused Linear's size: a tiny-*
model is rebuilt (it is small), another from its config on the meta device.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sapt import io
from sapt.config import BlockSection, ConfigError
from sapt.models import RESERVED
from sapt.modules.blocks.base import Exported
from sapt.modules.blocks.lora.config import LoRAOptions
from sapt.modules.blocks.lora.fused import FUSED_QKV, SliceLayout, qkv_layouts
from sapt.modules.blocks.peft_export import PEFT_PREFIX, ROUTER_DESCRIPTION, BaseModelRef, adapter_header, load

_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")

ROUTING_DESCRIPTION = ROUTER_DESCRIPTION + (
    " The output of every adapted projection is then "
    "W x + b + sum_t weights[t] * (lora_alpha / r) * B_t A_t x, with block t = the PEFT adapter of task t; "
    "the same weights serve every layer and every decoding step. A one-hot weight vector gives exactly "
    "the single PEFT adapter of that task."
)


def _fused_of(module: str) -> str | None:
    """The fused q/k/v projection whose q or v part the SAPT module path `module` is, else None."""
    parent, _, part = module.rpartition(".")
    return parent if part in ("q", "v") and parent.rpartition(".")[2] in FUSED_QKV else None


def fused_modules(block: dict[str, torch.Tensor]) -> list[str]:
    """The fused q/k/v projections that a SAPT block file adapts on their q and v parts."""
    return sorted({f for key in block if (m := _KEY.match(key)) and (f := _fused_of(m["module"]))})


def fused_lora(parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
               layouts: dict[str, SliceLayout]) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's (A, B) on a fused projection, of rank 2r, from its q and v parts' SAPT (A_p (r, in),
    B_p (|L_p|, r)): A = [A_q; A_v], B zero but for B[L_q, :r] = B_q and B[L_v, r:] = B_v. With PEFT's
    lora_alpha = 2 alpha, the update (2 alpha / 2r) B A x puts (alpha / r) B_p A_p x on the rows L_p: the
    fused layer's (`FusedQKVLoRA`)."""
    (a_q, b_q), (a_v, b_v) = parts["q"], parts["v"]
    r = a_q.shape[0]
    if a_v.shape != a_q.shape or b_q.shape[1] != r or b_v.shape[1] != r:
        raise ConfigError(f"the q and v blocks of a fused projection disagree in shape: A_q {list(a_q.shape)}, "
                          f"B_q {list(b_q.shape)}, A_v {list(a_v.shape)}, B_v {list(b_v.shape)}")
    out = layouts["q"].groups * layouts["q"].period
    b = torch.zeros(out, 2 * r, dtype=b_q.dtype)
    for (lo, hi), part, b_p in (((0, r), "q", b_q), ((r, 2 * r), "v", b_v)):
        if b_p.shape[0] != layouts[part].size:
            raise ConfigError(f"the {part} block has {b_p.shape[0]} rows but the model's {part} part has "
                              f"{layouts[part].size}: the run was trained on another model")
        b[layouts[part].rows(), lo:hi] = b_p
    return torch.cat([a_q, a_v]).contiguous(), b


def peft_state(block: dict[str, torch.Tensor], layouts: dict[str, dict[str, SliceLayout]] | None = None
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SAPT block tensors ('<module>.lora_A.weight') under PEFT's names, and the adapted module paths
    (PEFT's). A fused projection's q and v parts become one rank-2r LoRA on it (`fused_lora`), placed by
    its layouts, `layouts[<fused module>]` (`qkv_layouts`)."""
    state, modules, fused = {}, set(), {}
    for key, tensor in block.items():
        m = _KEY.match(key)
        if not m:
            raise ConfigError(f"unexpected tensor {key!r} in a SAPT adapter file")
        modules.add(m["module"])
        parent = _fused_of(m["module"])
        if parent is None:
            state[PEFT_PREFIX + key] = tensor.contiguous()
        else:
            fused.setdefault(parent, {}).setdefault(m["module"].rpartition(".")[2], {})[m["ab"]] = tensor
    for module in modules:
        for ab in "AB":
            if f"{module}.lora_{ab}.weight" not in block:
                raise ConfigError(f"adapter tensor {module}.lora_{ab}.weight is missing")
    for parent, parts in fused.items():
        for part in ("q", "v"):
            if part not in parts:
                raise ConfigError(f"adapter tensors {parent}.{part}.lora_A/B.weight are missing (a fused "
                                  "projection has blocks on its q and v parts)")
        if layouts is None or parent not in layouts:
            raise ConfigError(f"{parent} is a fused q/k/v projection: its export needs the model's q/v layout")
        a, b = fused_lora({p: (t["A"], t["B"]) for p, t in parts.items()}, layouts[parent])
        state[f"{PEFT_PREFIX}{parent}.lora_A.weight"], state[f"{PEFT_PREFIX}{parent}.lora_B.weight"] = a, b
    modules = {_fused_of(m) or m for m in modules}
    return state, sorted(modules)


def model_layouts(base: BaseModelRef, fused: list[str]) -> dict[str, dict[str, SliceLayout]]:
    """The q/v layouts of the run's base model's fused projections `fused` (module paths), found as
    `inject_mixture_lora` finds them: from the model's config and each Linear's output size. A tiny-*
    model is rebuilt (small); another model is built from its config on the meta device (no weights)."""
    from sapt.models import ModelLoadError, load_model

    if base.name in RESERVED:
        model = load_model(base.name, seed=base.seed).model
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(base.name)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception as e:  # hub/network/path errors come in many types; one line is what users need
            raise ModelLoadError(f"cannot build model {base.name!r} to find the layout of its fused q/k/v "
                                 f"projections: {str(e).splitlines()[0]}") from None
    layouts = {}
    for name in fused:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"the run adapts {name} but model {base.name!r} has no such module") from None
        layouts[name] = qkv_layouts(getattr(model, "config", None), name.rpartition(".")[2], linear.out_features)
    return layouts



def adapter_config(options: LoRAOptions, base: BaseModelRef, family: str, targets: list[str],
                   fused_targets: list[str] = ()) -> dict[str, Any]:
    """A PEFT LoraConfig as a JSON dict, from the run's LoRA keys (`options`, the block section's). Fields PEFT
    does not find take its defaults when loading.

    `fused_targets`: the targets that are fused q/k/v projections, of rank 2r and lora_alpha 2 alpha
    (`fused_lora`): for the whole adapter when all targets are, else by PEFT's rank and alpha patterns."""
    r, alpha = int(options.lora_r), float(options.lora_alpha)
    all_fused = bool(fused_targets) and set(fused_targets) == set(targets)
    patterns = {} if all_fused else {re.escape(t): 2 for t in sorted(fused_targets)}
    return {
        **adapter_header("LORA", base, family),
        "r": 2 * r if all_fused else r,
        "lora_alpha": 2 * alpha if all_fused else alpha,
        "lora_dropout": float(options.lora_dropout),
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {k: f * r for k, f in patterns.items()},
        "alpha_pattern": {k: f * alpha for k, f in patterns.items()},
    }


def _family(modules: list[str]) -> str:
    return "seq2seq" if any(re.search(r"(^|\.)(SelfAttention|EncDecAttention)\.", m) for m in modules) else "causal"


def sapt_block(state: dict[str, torch.Tensor], layouts: dict[str, dict[str, SliceLayout]] | None = None
               ) -> dict[str, torch.Tensor]:
    """The inverse of `peft_state`: a PEFT LoRA adapter's tensors under SAPT's block names
    ('<module>.lora_A.weight'). A fused q/k/v projection in `layouts` was exported as one rank-2r LoRA
    (`fused_lora`); its q and v blocks are A[:r], A[r:], B[L_q, :r] and B[L_v, r:]."""
    layouts = layouts or {}
    block = {}
    for key, tensor in state.items():
        m = _KEY.match(key.removeprefix(PEFT_PREFIX)) if key.startswith(PEFT_PREFIX) else None
        if not m:
            raise ConfigError(f"unexpected tensor {key!r} in an exported adapter")
        module, ab = m["module"], m["ab"]
        if module not in layouts:
            block[f"{module}.lora_{ab}.weight"] = tensor
            continue
        for i, part in enumerate(("q", "v")):
            if ab == "A":
                r = tensor.shape[0] // 2
                block[f"{module}.{part}.lora_A.weight"] = tensor[i * r:(i + 1) * r].contiguous()
            else:
                r = tensor.shape[1] // 2
                block[f"{module}.{part}.lora_B.weight"] = tensor[layouts[module][part].rows(), i * r:(i + 1) * r].contiguous()
    return block


def export_adapters(block_config: BlockSection, base: BaseModelRef,
                    blocks: list[tuple[str, Path, dict[str, torch.Tensor]]], out: Path) -> Exported:
    """One PEFT LoRA adapter per task (`BlockType.export_adapters`); every stage must adapt stage 0's modules."""
    options: LoRAOptions = block_config.options
    all_modules, layouts = None, None
    for task, sdir, block in blocks:
        fused = fused_modules(block)
        if layouts is None:
            layouts = model_layouts(base, fused) if fused else {}
        state, modules = peft_state(block, layouts)
        if all_modules is None:
            all_modules = modules
        elif modules != all_modules:
            raise ConfigError(f"{sdir}: adapts other modules than stage 0")
        family = _family(modules)
        targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
        fused_targets = sorted({m.rsplit(".", 1)[-1] for m in fused})
        io.save_tensors(out / task / "adapter_model.safetensors", state, {"format": "pt"})
        io.write_json(out / task / "adapter_config.json",
                      adapter_config(options, base, family, targets, fused_targets))
    fields = {
        "lora_r": int(options.lora_r),
        "lora_alpha": float(options.lora_alpha),
        "lora_scaling": float(options.lora_alpha) / int(options.lora_r),
        "target_modules": targets,
        "adapted_modules": all_modules,
        # exported with PEFT rank 2r and lora_alpha 2 * alpha: the same alpha / r (module docstring)
        "fused_qkv_modules": sorted(layouts),
    }
    return Exported(family=family, routing=ROUTING_DESCRIPTION, fields=fields)


def read_adapters(block_config: BlockSection, base: BaseModelRef, info: dict[str, Any],
                  folders: list[Path]) -> list[dict[str, torch.Tensor]]:
    """Each exported task's LoRA block under SAPT's names (`sapt_block`), a fused projection split back."""
    fused = list(info.get("fused_qkv_modules") or [])
    layouts = model_layouts(base, fused) if fused else {}
    return [sapt_block(load(folder / "adapter_model.safetensors"), layouts) for folder in folders]
