"""LoRA blocks (`--pet lora`, the default): config, the mixture layer, the injector, merge, O-LoRA's losses,
the block type and its PEFT export."""
from sapt.modules.blocks.lora.blocks import LoRABlocks
from sapt.modules.blocks.lora.config import LoRAConfig
from sapt.modules.blocks.lora.fused import FusedQKVLoRA, MixtureLoRASlice
from sapt.modules.blocks.lora.inject import inject_mixture_lora
from sapt.modules.blocks.lora.layer import MixtureLoRALinear

BLOCK_TYPE = LoRABlocks  # the registry's entry (sapt.modules.blocks.registry)

__all__ = ["BLOCK_TYPE", "FusedQKVLoRA", "LoRABlocks", "LoRAConfig", "MixtureLoRALinear", "MixtureLoRASlice", "inject_mixture_lora"]
