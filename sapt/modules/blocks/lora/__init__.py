"""LoRA blocks: config, the mixture layer, the injector, merge, O-LoRA's losses, and the block type."""
from sapt.modules.blocks.lora.blocks import LoRABlocks
from sapt.modules.blocks.lora.config import TARGET_PATTERNS, LoRAConfig
from sapt.modules.blocks.lora.fused import FusedQKVLoRA, MixtureLoRASlice
from sapt.modules.blocks.lora.inject import find_targets, inject_mixture_lora
from sapt.modules.blocks.lora.layer import MixtureLoRALinear

__all__ = ["FusedQKVLoRA", "LoRABlocks", "LoRAConfig", "MixtureLoRALinear", "MixtureLoRASlice", "TARGET_PATTERNS", "find_targets", "inject_mixture_lora"]
