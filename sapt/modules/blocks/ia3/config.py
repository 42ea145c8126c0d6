"""The modules IA3 blocks adapt, per model family, as PEFT's defaults for T5 and LLaMA-family models
(`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`: k, v and the feed-forward down projection)."""
from __future__ import annotations

from dataclasses import dataclass

# k and v of every attention (outputs scaled) and the feed-forward down projection (input scaled).
# T5: SelfAttention / EncDecAttention k, v and DenseReluDense.wo; LLaMA, Mistral, Qwen2, Gemma, SmolLM:
# self_attn.k_proj / v_proj and mlp.down_proj. A fused q/k/v projection has no k or v Linear of its own.
TARGET_PATTERNS = {
    "seq2seq": r"(^|\.)((SelfAttention|EncDecAttention)\.(k|v)|DenseReluDense\.wo)$",
    "causal": r"(^|\.)(self_attn\.(k_proj|v_proj)|mlp\.down_proj)$",
}
FEEDFORWARD = r"(^|\.)(wo|down_proj)$"  # of those, the modules whose input is scaled (PEFT's feedforward_modules)


@dataclass(frozen=True)
class IA3Config:
    """`target_pattern`: a regular expression searched in each module's full name (None: the family's,
    `TARGET_PATTERNS`); `feedforward_pattern`: which of them have their input scaled, not their output."""

    target_pattern: str | None = None
    feedforward_pattern: str = FEEDFORWARD

    def pattern(self, family: str) -> str:
        return self.target_pattern or TARGET_PATTERNS[family]
