"""The settings of SAPT's LoRA blocks, as PEFT's `LoraConfig` holds them for its adapters: the run config's
LoRA keys (`LoRAOptions`, --lora-r, ...) and the layers' settings made from them (`LoRAConfig`).

Read by the run config's check (sapt.config adds `LoRAOptions` to it), so it imports no torch: the family's
default q/v patterns (`targets.TARGET_PATTERNS`, beside the torch code that finds the modules) are looked up
when a pattern is asked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sapt.options import AT_LEAST_1, POSITIVE, Bounds, option

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
class LoRAOptions:
    """LoRA's keys of the run config (section block; `--pet lora`): the rank, alpha and dropout of every block,
    and the Linears that get blocks. `LoRABlocks.from_config` makes its `LoRAConfig` from them."""

    lora_r: int = option(4, bounds=AT_LEAST_1, section="block", help="LoRA rank")
    lora_alpha: float = option(32.0, bounds=POSITIVE, section="block", help="LoRA alpha")
    lora_dropout: float = option(0.0, bounds=Bounds(0, 1, high_open=True), section="block", help="LoRA dropout")
    # The Linears that get LoRA blocks, as PEFT's target_modules (`target_pattern`): names (a module whose name
    # is one of them or ends in ".<name>") or one regular expression matched against the whole module name.
    # None: q and v of every attention (TARGET_PATTERNS, per model family). Kept as the text the user gave: a
    # regex may hold commas ({1,2}). A YAML list of names is joined with commas (`sapt.config.coerce`).
    target_modules: str | None = option(None, section="block", default_help="q and v of every attention",
                                        help="--pet lora: the Linear modules that get LoRA blocks, as PEFT's "
                                             "target_modules: comma-separated names (q_proj,v_proj: a module named so "
                                             "or ending in .q_proj) or a regular expression matched against the whole "
                                             "module name; a fused q/k/v projection still gets blocks on q and v only")


OPTIONS = LoRAOptions  # the registry's entry (sapt.modules.blocks.registry.block_options_type)


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
        from sapt.modules.blocks.targets import TARGET_PATTERNS  # (torch: see the module docstring)

        return self.target_pattern or TARGET_PATTERNS[family]
