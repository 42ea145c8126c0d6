"""Find the attention projections to adapt by module-name pattern and wrap them, as PEFT's injector does.

The targets are found by `sapt.modules.blocks.targets`, shared by every block type: any checkpoint whose
module names follow one of the conventions of `targets.TARGET_PATTERNS` works (T5, mT5, Flan-T5; LLaMA,
Mistral, Qwen2, Gemma, SmolLM; Phi-3; GPT-NeoX / Pythia, Falcon), whatever its sizes (T5 with
n_heads*d_kv != d_model too). A matched separate projection becomes a `MixtureLoRALinear`; a matched fused q/k/v projection (`fused.FUSED_QKV`) becomes a
`FusedQKVLoRA` whose q and v parts are adapted layers of their own, `<module>.q` and `<module>.v`.
"""
from __future__ import annotations

from torch import nn

from sapt.modules.blocks.lora.fused import FUSED_QKV, FusedQKVLoRA, qkv_layouts
from sapt.modules.blocks.lora.layer import MixtureLoRALinear
from sapt.modules.blocks.routing import RoutingState
from sapt.modules.blocks.targets import TARGET_PATTERNS, find_targets, model_type

__all__ = ["inject_mixture_lora"]


def inject_mixture_lora(
    model: nn.Module, pattern: str, state: RoutingState, r: int, alpha: float, dropout: float = 0.0
) -> dict[str, MixtureLoRALinear]:
    """Replace every matching linear layer by a `MixtureLoRALinear` (a fused q/k/v one by a `FusedQKVLoRA`);
    returns the adapted layers by name (a fused module's as `<module>.q` and `<module>.v`)."""
    from sapt.models import ModelLoadError

    names = find_targets(model, pattern)
    if not names:
        kind = model_type(model)
        if pattern in TARGET_PATTERNS.values():
            raise ModelLoadError(
                f"model type {kind!r} has no recognised attention projections: LoRA blocks go on q_proj/v_proj "
                "(LLaMA, Qwen2, Gemma, Mistral), qkv_proj (Phi-3), query_key_value (GPT-NeoX, Falcon) "
                "or T5's q/v Linears; --target-modules names other Linear modules to adapt")
        raise ModelLoadError(f"no Linear of the model (model type {kind!r}) matches the LoRA target pattern {pattern!r}")
    layers: dict[str, MixtureLoRALinear] = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if child in FUSED_QKV:
            if not linear.weight.is_floating_point():
                # FusedRows computes each part from a slice of the fused weight's rows, which a 4/8-bit
                # packed weight (bitsandbytes) does not have as rows: refused rather than wrong.
                raise ModelLoadError(f"{name} is a fused q/k/v projection with {linear.weight.dtype} (quantised) "
                                     "weights: sapt adapts the q and v rows of a float weight only; load this "
                                     "model without --quantize")
            fused = FusedQKVLoRA(linear, qkv_layouts(getattr(model, "config", None), child, linear.out_features), state, r, alpha, dropout)
            setattr(parent, child, fused)
            layers[f"{name}.q"], layers[f"{name}.v"] = fused.q, fused.v
        else:
            layer = MixtureLoRALinear(linear, state, r, alpha, dropout)
            setattr(parent, child, layer)
            layers[name] = layer
    return layers
