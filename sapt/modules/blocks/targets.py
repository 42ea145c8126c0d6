"""Which modules of a backbone a block type adapts: found by module-name pattern, as PEFT's injector finds its
`target_modules`, for every block type (LoRA's q/v, IA3's k/v/feed-forward, the prompt type's frozen q/v that
the pseudo-sample generator may adapt).

No model file is forked: any checkpoint whose module names follow one of the conventions of
`TARGET_PATTERNS` works (T5, mT5, Flan-T5; LLaMA, Mistral, Qwen2, Gemma, SmolLM; Phi-3; GPT-NeoX / Pythia,
Falcon), whatever its sizes.
"""
from __future__ import annotations

import re

from torch import nn

# q and v of every attention module. T5: encoder self-attention, decoder self-attention and decoder
# cross-attention. Causal LMs, every self-attention, by the module names of their convention:
#   self_attn.q_proj / self_attn.v_proj      LLaMA, Mistral, Qwen2, Gemma, SmolLM (separate projections)
#   self_attn.qkv_proj                       Phi-3 (fused [q; k; v])
#   attention.query_key_value                GPT-NeoX / Pythia (fused, per head [q; k; v])
#   self_attention.query_key_value           Falcon (fused; its layout follows the config's flags)
# A fused projection gets LoRA blocks on its q and v parts only (`lora/fused.py`). k and o get no LoRA block
# (docs/method.md).
TARGET_PATTERNS = {
    "seq2seq": r"(^|\.)(SelfAttention|EncDecAttention)\.(q|v)$",
    "causal": r"(^|\.)(self_attn\.(q_proj|v_proj|qkv_proj)|(attention|self_attention)\.query_key_value)$",
}

__all__ = ["TARGET_PATTERNS", "check_user_targets", "find_targets", "linear_names", "model_type"]


def find_targets(model: nn.Module, pattern: str) -> list[str]:
    """Names of the `nn.Linear` modules whose full name matches `pattern`."""
    regex = re.compile(pattern)
    return [n for n, m in model.named_modules() if regex.search(n) and isinstance(m, nn.Linear)]


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last parts of the names of the model's `nn.Linear` modules, in the model's order
    (q_proj, k_proj, ..., lm_head): what --target-modules can name."""
    return list(dict.fromkeys(n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n))


def check_user_targets(model: nn.Module, target_modules: str, pattern: str) -> None:
    """Refuse a --target-modules text (`pattern`, from `lora.config.target_pattern`) that matches no Linear of
    the model, naming the Linears there are, or that matches the output layer (the LM head): its input holds
    only the answer positions of a batch (sapt.modules.target_logits), which a per-example mixture cannot
    weigh, and PEFT's "all-linear" leaves it out too."""
    from sapt.models import ModelLoadError

    names = find_targets(model, pattern)
    if not names:
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.Linear)), None)
        raise ModelLoadError(f"--target-modules {target_modules!r} matches no Linear module of the model (model type "
                             f"{model_type(model)!r}); its Linear modules: {', '.join(linear_names(model))}"
                             + (f" (full names such as {first})" if first else ""))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hit = next((n for n in names if head is not None and model.get_submodule(n) is head), None)
    if hit is not None:
        raise ModelLoadError(f"--target-modules {target_modules!r} matches {hit}, the model's output layer (LM head), "
                             "which sapt does not adapt; name the modules without it")


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__
