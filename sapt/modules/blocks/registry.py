"""The block types, by the name `--pet` (config `pet`) gives them: one folder each, found, not listed.

A folder `sapt/modules/blocks/<name>/` whose `__init__` sets `BLOCK_TYPE` (its `BlockType` subclass, whose
`name` is the folder's) is the block type `<name>`: `sapt run --pet <name>`, the config check
(sapt.config.PETS), `sapt.train.build_model`, the export, the model card and tests/blocks/test_conformance.py
all take it from here, so a new type is its folder and nothing else. The names are read from the folders
without importing them (the config check needs no torch); a type's module is imported when it is asked for.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sapt.config import BlockSection
    from sapt.modules.blocks.base import BlockType

DEFAULT = "lora"
_FOLDER = Path(__file__).parent


def block_type_names() -> tuple[str, ...]:
    """Every block type's name, the default (lora) first, then the others by name."""
    found = sorted(m.name for m in pkgutil.iter_modules([str(_FOLDER)]) if m.ispkg and not m.name.startswith("_"))
    return tuple(sorted(found, key=lambda n: n != DEFAULT))


class _Registry(Mapping):
    """name -> BlockType subclass, imported on first use."""

    def __getitem__(self, name: str) -> type[BlockType]:
        if name not in block_type_names():
            raise KeyError(f"no block type {name!r} (have: {', '.join(block_type_names())})")
        cls = importlib.import_module(f"{__package__}.{name}").BLOCK_TYPE
        if cls.name != name:
            raise TypeError(f"sapt/modules/blocks/{name}/ holds block type {cls.name!r}: a type's name is its folder's")
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(block_type_names())

    def __len__(self) -> int:
        return len(block_type_names())


BLOCK_TYPES: Mapping[str, type[BlockType]] = _Registry()


def block_type_of(pet: str | None) -> type[BlockType]:
    """The block type class named `pet` (the run config's key; None, as runs written before the key existed
    have it: LoRA)."""
    return BLOCK_TYPES[pet or DEFAULT]


def build_block_type(block: BlockSection, seed: int) -> BlockType:
    """The run's block type with its settings from the config's block section and the run's seed
    (`BlockType.from_config`)."""
    return block_type_of(block.pet).from_config(block, seed)
