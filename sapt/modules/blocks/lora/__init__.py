"""LoRA blocks (`--pet lora`, the default): config (and the run config's LoRA keys, `LoRAOptions`), the mixture
layer, the injector, merge, O-LoRA's losses, the block type and its PEFT export.

The names below are imported on first use (`registry.lazy_exports`), so that the run config can read
`config.LoRAOptions` with no torch."""
from sapt.modules.blocks.registry import lazy_exports

_LAZY = {
    "BLOCK_TYPE": "blocks:LoRABlocks",  # the registry's entry (sapt.modules.blocks.registry)
    "FusedQKVLoRA": "fused", "LoRABlocks": "blocks", "LoRAConfig": "config", "LoRAOptions": "config",
    "MixtureLoRALinear": "layer", "MixtureLoRASlice": "fused", "inject_mixture_lora": "inject",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
