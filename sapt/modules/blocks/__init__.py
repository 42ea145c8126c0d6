"""Per-task PET blocks behind one interface (`base.BlockType`), one folder per type as PEFT has its tuners:
LoRA (`lora/`), soft prompts (`prompt/`), IA3 (`ia3/`); `registry.BLOCK_TYPES` finds them by folder. Shared:
the routing weights (`routing.py`), target finding (`targets.py`), the PEFT export's common part
(`peft_export.py`).

The names below are imported on first use, so that `sapt.modules.blocks.registry` (read by the config check)
loads no torch."""
from __future__ import annotations

import importlib

_LAZY = {
    "BlockType": "base", "Exported": "base", "RoutingState": "routing",
    "BLOCK_TYPES": "registry", "block_type_names": "registry", "build_block_type": "registry",
    "LoRABlocks": "lora", "LoRAConfig": "lora", "PromptBlocks": "prompt", "PromptConfig": "prompt",
    "IA3Blocks": "ia3", "IA3Config": "ia3",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
