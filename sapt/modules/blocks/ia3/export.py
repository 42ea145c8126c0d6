"""IA3 blocks as standard PEFT IA3 adapters, and back (`IA3Blocks.export_adapters` / `read_adapters`).

    OUT/<task>/adapter_config.json        a PEFT IA3Config (target_modules, feedforward_modules, base model)
    OUT/<task>/adapter_model.safetensors  `base_model.model.<module>.ia3_l` of every adapted module

Each adapter loads with `peft.PeftModel.from_pretrained(base_model, OUT/<task>)` and equals SAPT with all
routing weight on that task's block.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sapt import io
from sapt.config import BlockSection, ConfigError
from sapt.modules.blocks.base import Exported
from sapt.modules.blocks.ia3.blocks import KEY
from sapt.modules.blocks.ia3.config import FEEDFORWARD
from sapt.modules.blocks.peft_export import (
    PEFT_PREFIX, ROUTER_DESCRIPTION, BaseModelRef, adapter_header, load, model_family,
)

IA3_ROUTING_DESCRIPTION = ROUTER_DESCRIPTION + (
    " Every adapted module then scales by l = sum_t weights[t] * ia3_l_t + (1 - sum_t weights[t]), ia3_l_t the "
    "PEFT IA3 adapter of task t: the output of k and v, the input of the feed-forward modules "
    "(feedforward_modules); the same weights serve every layer and every decoding step. A one-hot weight "
    "vector gives exactly the single PEFT adapter of that task."
)


def export_adapters(block_config: BlockSection, base: BaseModelRef,
                    blocks: list[tuple[str, Path, dict[str, torch.Tensor]]], out: Path) -> Exported:
    """One PEFT IA3 adapter per task; every stage must adapt stage 0's modules."""
    family, all_modules = model_family(base), None
    for task, sdir, block in blocks:
        if not block or any(not k.endswith(f".{KEY}") for k in block):
            raise ConfigError(f"{sdir}/adapter.safetensors holds no IA3 block (tensors: {', '.join(sorted(block)[:3])})")
        modules = sorted(k.removesuffix(f".{KEY}") for k in block)
        if all_modules is None:
            all_modules = modules
        elif modules != all_modules:
            raise ConfigError(f"{sdir}: adapts other modules than stage 0")
        io.save_tensors(out / task / "adapter_model.safetensors",
                        {PEFT_PREFIX + k: v.contiguous() for k, v in block.items()}, {"format": "pt"})
    targets = sorted({m.rsplit(".", 1)[-1] for m in all_modules})
    feedforward = [t for t in targets if re.search(FEEDFORWARD, t)]
    config = {**adapter_header("IA3", base, family), "target_modules": targets, "feedforward_modules": feedforward,
              "fan_in_fan_out": False, "modules_to_save": None, "init_ia3_weights": True}
    for task, _, _ in blocks:
        io.write_json(out / task / "adapter_config.json", config)
    return Exported(family=family, routing=IA3_ROUTING_DESCRIPTION,
                    fields={"target_modules": targets, "feedforward_modules": feedforward, "adapted_modules": all_modules},
                    extra={"pet": "ia3"})


def read_adapters(block_config: BlockSection, base: BaseModelRef, info: dict[str, Any],
                  folders: list[Path]) -> list[dict[str, torch.Tensor]]:
    """Each exported task's IA3 block under SAPT's names (`<module>.ia3_l`)."""
    blocks = []
    for folder in folders:
        adapter = load(folder / "adapter_model.safetensors")
        bad = [k for k in adapter if not (k.startswith(PEFT_PREFIX) and k.endswith(f".{KEY}"))]
        if bad:
            raise ConfigError(f"unexpected tensor {bad[0]!r} in an exported IA3 adapter ({folder})")
        blocks.append({k.removeprefix(PEFT_PREFIX): v for k, v in adapter.items()})
    return blocks
