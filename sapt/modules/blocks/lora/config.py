"""The settings of SAPT's LoRA blocks, as PEFT's `LoraConfig` holds them for its adapters."""
from __future__ import annotations

import re
from dataclasses import dataclass

from sapt.modules.blocks.targets import TARGET_PATTERNS

# A --target-modules text (sapt.config.RunConfig.target_modules), read as PEFT reads its target_modules: names
# (PEFT's list) match a module whose full name is one of them or ends in "." + one; anything else is one regular
# expression (PEFT's string) that must match the whole module name. Names are letters, digits, _ and ".".
MODULE_NAMES = re.compile(r"[\w.]+(\s*,\s*[\w.]+)*")


def target_pattern(target_modules: str) -> str:
    r"""The pattern `targets.find_targets` searches for, from a --target-modules text: `q_proj,v_proj` gives
    `(^|\.)(q_proj|v_proj)$`, a regular expression R gives `\A(?:R)\Z` (a whole-name match, as PEFT's
    re.fullmatch). A ValueError for a text that names nothing or a regular expression that does not compile."""
    text = target_modules.strip()
    if not text:
        raise ValueError("names no module: give comma-separated module names or a regular expression, or leave it out")
    if MODULE_NAMES.fullmatch(text):
        names = dict.fromkeys(n.strip() for n in text.split(","))
        return r"(^|\.)(" + "|".join(map(re.escape, names)) + r")$"
    pattern = rf"\A(?:{text})\Z"
    try:
        re.compile(text)  # its own error first: the positions it names are the user's
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{text!r} is neither comma-separated module names nor a valid regular expression ({e})") from None
    return pattern


@dataclass(frozen=True)
class LoRAConfig:
    """Block i of an adapted Linear W is the update (alpha / r) * B_i A_i, A_i (r, in), B_i (out, r).

    `target_pattern`: a regular expression searched in each module's full name; None takes the model
    family's q/v pattern (`TARGET_PATTERNS`). `target_modules`: a user's --target-modules text instead
    (`target_pattern` of it); a refusal then names the option and the model's Linear modules
    (`inject.check_user_targets`). `dropout` applies to the blocks' input, as in PEFT.
    """

    r: int = 4
    alpha: float = 32.0
    dropout: float = 0.0
    target_pattern: str | None = None
    target_modules: str | None = None

    def pattern(self, family: str) -> str:
        if self.target_pattern is None and self.target_modules is not None:
            return target_pattern(self.target_modules)
        return self.target_pattern or TARGET_PATTERNS[family]
