"""Per-task PET blocks behind one interface (`base.BlockType`), one folder per type as PEFT has its tuners:
LoRA (`lora/`), soft prompts (`prompt/`), IA3 (`ia3/`); `registry.BLOCK_TYPES` finds them by folder. Shared:
the routing weights (`routing.py`), target finding (`targets.py`), the PEFT export's common part
(`peft_export.py`).

The names below are imported on first use, so that `sapt.modules.blocks.registry` (read by the config check)
loads no torch."""
from __future__ import annotations

from sapt.modules.blocks.registry import lazy_exports

_LAZY = {
    "BlockType": "base", "Exported": "base", "RoutingState": "routing",
    "BLOCK_TYPES": "registry", "block_type_names": "registry", "build_block_type": "registry",
    "LoRABlocks": "lora", "LoRAConfig": "lora", "PromptBlocks": "prompt", "PromptConfig": "prompt",
    "IA3Blocks": "ia3", "IA3Config": "ia3",
    "LoRAOptions": "lora", "PromptOptions": "prompt",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
