"""Per-task PET blocks behind one interface (`base.BlockType`): LoRA (`lora/`) and soft prompts (`prompt.py`)."""
from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.blocks.prompt import PromptBlocks, PromptConfig
from sapt.modules.blocks.routing import RoutingState

__all__ = ["BlockType", "LoRABlocks", "LoRAConfig", "PromptBlocks", "PromptConfig", "RoutingState"]
