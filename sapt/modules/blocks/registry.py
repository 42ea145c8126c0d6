"""The block types, by the name `--pet` (config `pet`) gives them: one folder each, found, not listed.

A folder `sapt/modules/blocks/<name>/` whose `__init__` sets `BLOCK_TYPE` (its `BlockType` subclass, whose
`name` is the folder's) is the block type `<name>`: `sapt run --pet <name>`, the config check
(sapt.config.PETS), `sapt.train.build_model`, the export, the model card and tests/blocks/test_conformance.py
all take it from here, so a new type is its folder and nothing else. The names are read from the folders
without importing them (the config check needs no torch); a type's module is imported when it is asked for.

A type's own run-config keys (LoRA's `lora_r`, ..., the prompt's `prompt_len`, ...) are declared in its folder,
in `<name>/config.py` as `OPTIONS`, a frozen dataclass of `sapt.options.option(..., section="block")` fields
(`lora.config.LoRAOptions`); the type's class names the same class as `Options` (None: no keys of its own, as
IA3). sapt.config adds them to the run config as flat keys (`block_options_type`), so that module, and the
folder's `__init__` above it, must load no torch: a folder's `__init__` names its exports with
`lazy_exports`, imported on first use.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sapt.config import BlockSection
    from sapt.modules.blocks.base import BlockType

DEFAULT = "lora"
_FOLDER = Path(__file__).parent


def block_type_names() -> tuple[str, ...]:
    """Every block type's name, the default (lora) first, then the others by name."""
    found = sorted(m.name for m in pkgutil.iter_modules([str(_FOLDER)]) if m.ispkg and not m.name.startswith("_"))
    return tuple(sorted(found, key=lambda n: n != DEFAULT))


def block_options_type(name: str) -> type | None:
    """The options class block type `name` declares (`OPTIONS` of its folder's config.py), or None when it
    declares none. Imports only that config module (and the folder's lazy `__init__`): no torch."""
    if name not in block_type_names():
        raise KeyError(f"no block type {name!r} (have: {', '.join(block_type_names())})")
    if not (_FOLDER / name / "config.py").is_file():
        return None
    return getattr(importlib.import_module(f"{__package__}.{name}.config"), "OPTIONS", None)


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports each name of `exports` from its module on first use:
    {name: "module"} takes `package.module.name`, {name: "module:attr"} `package.module.attr` (a type folder's
    `BLOCK_TYPE`). So that importing the package (as importing its config.py does) loads none of them."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = exports[name].partition(":")
        return getattr(importlib.import_module(f"{package}.{module}"), attr or name)

    return __getattr__


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
