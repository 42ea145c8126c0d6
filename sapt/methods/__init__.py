"""Continual-learning methods as plugins of one loop (`sapt.train`): SAPT and the baselines share the data,
model, evaluation and outputs, and differ only in the hooks of `sapt.methods.base.Method`.

| method     | module        | blocks          | mixing weights                                 | extra                      |
|------------|---------------|-----------------|------------------------------------------------|----------------------------|
| sapt       | sapt.py       | one per task    | router (shared attention), reflection KL       | router warm-up, centre     |
| sapt-hard  | sapt_hard.py  | one per task    | router in training; top-1 block at evaluation  |                            |
| seq-lora   | seq_lora.py   | one, shared     | 1                                              |                            |
| inc-lora   | inc_lora.py   | one per task    | 1 for every block                              |                            |
| o-lora     | o_lora.py     | one per task    | 1 for every block                              | orthogonal A's, L2         |
| replay     | replay.py     | one, shared     | 1                                              | stored real examples mixed |
| per-task   | per_task.py   | one per task    | one-hot on the true task id (an oracle)        |                            |
| mtl        | mtl.py        | one, shared     | 1; one stage over all tasks (upper bound)      |                            |

Every module of this folder is imported here and registers its method (`@register`): the eight above
first, in this order (that of error messages, `sapt run --help` and bench/quality.py's table), then any
other, by file name. A new method is one new file (see `sapt.methods.base`), with no edit here.
"""
from __future__ import annotations

import importlib
import pkgutil

from sapt.methods.base import METHODS, Method, make_method, method_names, register

_FIRST = ("sapt", "sapt_hard", "seq_lora", "inc_lora", "o_lora", "replay", "per_task", "mtl")
for _module in [*_FIRST, *sorted({m.name for m in pkgutil.iter_modules(__path__)} - {*_FIRST, "base"})]:
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

from sapt.methods.o_lora import l2_loss, orthogonality_loss  # noqa: E402

__all__ = ["METHODS", "Method", "l2_loss", "make_method", "method_names", "orthogonality_loss", "register"]
