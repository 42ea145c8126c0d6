"""Per-task PET blocks behind one interface (`base.BlockType`); LoRA is the first kind (`lora/`)."""
from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.blocks.routing import RoutingState

__all__ = ["BlockType", "LoRABlocks", "LoRAConfig", "RoutingState"]
