"""The settings of SAPT's LoRA blocks, as PEFT's `LoraConfig` holds them for its adapters."""
from __future__ import annotations

from dataclasses import dataclass

# q and v of every attention module. T5: encoder self-attention, decoder self-attention and decoder
# cross-attention. Causal LMs, every self-attention, by the module names of their convention:
#   self_attn.q_proj / self_attn.v_proj      LLaMA, Mistral, Qwen2, Gemma, SmolLM (separate projections)
#   self_attn.qkv_proj                       Phi-3 (fused [q; k; v])
#   attention.query_key_value                GPT-NeoX / Pythia (fused, per head [q; k; v])
#   self_attention.query_key_value           Falcon (fused; its layout follows the config's flags)
# A fused projection gets blocks on its q and v parts only (`fused.py`). k and o get no block (docs/method.md).
TARGET_PATTERNS = {
    "seq2seq": r"(^|\.)(SelfAttention|EncDecAttention)\.(q|v)$",
    "causal": r"(^|\.)(self_attn\.(q_proj|v_proj|qkv_proj)|(attention|self_attention)\.query_key_value)$",
}


@dataclass(frozen=True)
class LoRAConfig:
    """Block i of an adapted Linear W is the update (alpha / r) * B_i A_i, A_i (r, in), B_i (out, r).

    `target_pattern`: a regular expression searched in each module's full name; None takes the model
    family's q/v pattern (`TARGET_PATTERNS`). `dropout` applies to the blocks' input, as in PEFT.
    """

    r: int = 4
    alpha: float = 32.0
    dropout: float = 0.0
    target_pattern: str | None = None

    def pattern(self, family: str) -> str:
        return self.target_pattern or TARGET_PATTERNS[family]
