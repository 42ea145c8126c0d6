"""inc-lora: a new block per task, the old ones frozen, every block at weight 1 (the base defaults)."""
from __future__ import annotations

from sapt.methods.base import Method, register


@register
class IncLoRA(Method):
    name = "inc-lora"
    summary = "one {block} per task; at test time every block with weight 1, the sum of the adapters"
