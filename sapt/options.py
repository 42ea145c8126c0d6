"""How a run config key is declared: `option(...)` with its default, help, section, flag, resume policy and
`Bounds`, for `sapt.config.RunConfig`, for the options a method declares in its own file
(`sapt.methods.base.Method.Options`) and for those a block type declares in its folder
(`sapt/modules/blocks/<name>/config.py`, `BlockType.Options`).

A module of its own, below all three: the config reads the methods and the block types (their names, their
options) and each declares its options with `option`, so the declaration cannot live in sapt.config without
an import cycle. It imports nothing of the package.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["AT_LEAST_1", "NON_NEGATIVE", "POSITIVE", "RESUME_POLICIES", "SECTIONS", "Bounds", "option"]

# The sections of the config, in the order of the source, of `sapt run --help` and of the docs.
SECTIONS: dict[str, str] = {
    "run": "run and output",
    "method": "method",
    "data": "data",
    "block": "per-task blocks",
    "router": "router",
    "optimisation": "optimisation",
    "decoding": "lengths and decoding",
    "reflection": "attentive reflection",
}
# May a key differ between a run and its resumption? "free": yes, it does not change what is computed;
# "changeable": only with --allow-config-change (recorded in manifest.json); "fixed": never.
RESUME_POLICIES = ("free", "changeable", "fixed")


@dataclass(frozen=True)
class Bounds:
    """The values a numeric field takes, declared on the field (`option(..., bounds=...)`) so that `validate`
    checks every field's range in one loop and keeps only the rules that relate fields to each other. A
    field whose default is None takes None as well (its default's meaning), whatever its bounds.

    `note` is added to the message ("0 = off"); `text` replaces the written range where its numbers would
    not say it (a seed's 2**32)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    text: str = ""

    def holds(self, value: float) -> bool:
        """Whether `value` is within the bounds; NaN never is."""
        if not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.text:
            return self.text
        if self.high is None:
            written = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            written = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"{written} ({self.note})" if self.note else written


AT_LEAST_1 = Bounds(1)  # counts and sizes
POSITIVE = Bounds(0, low_open=True)  # rates and scales
NON_NEGATIVE = Bounds(0)  # loss weights, where 0 turns the term off


def option(default: Any, *, help: str, section: str, flag: str | bool | None = None, resume: str = "fixed",
           choices: Sequence[str] | None = None, type: Callable[[str], Any] | None = None,
           default_help: str | None = None, bounds: Bounds | None = None) -> Any:
    """A config field with its documentation.

    `help`: the help of its command-line flag (for a boolean that defaults to true: of its --no-X flag).
    `section`: a key of SECTIONS. `flag`: None for the usual one (--name-with-dashes, or --no-name for a
    boolean that defaults to true), a string for another, False for none (a key of YAML files only).
    `resume`: see RESUME_POLICIES. `choices`: the values the flag accepts. `type`: what turns the flag's
    text into a value when the field's annotation does not say (int, float, a comma-separated list).
    `default_help`: what a default of None means, for the help (e.g. "--lr"). `bounds`: the values a
    number takes (`RunConfig.validate` checks them)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}")
    if resume not in RESUME_POLICIES:
        raise ValueError(f"unknown resume policy {resume!r}")
    meta = {"help": help, "section": section, "flag": flag, "resume": resume,
            "choices": tuple(choices) if choices is not None else None, "type": type, "default_help": default_help,
            "bounds": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)
