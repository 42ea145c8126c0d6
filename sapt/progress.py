"""Progress bars for a person at a terminal, and nothing otherwise.

A tqdm bar redraws its line with carriage returns: on a terminal that is one line that moves; redirected
to a file (`sapt run > demo.log 2>&1`, a batch job) every redraw stays, and the demo's log was 46 KB in 41
lines of up to 2,660 characters. The bars are therefore drawn only when stderr is a terminal, not under
`sapt run --quiet`, and not when TQDM_DISABLE is set (tqdm's own switch, which sapt's explicit
`disable=` argument used to override). What the bars show is in the log lines anyway (each epoch's losses
and ETA, each stage's time): those stay, on stderr and in RUN_DIR/run.log.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from sapt.rundir.layout import is_quiet

__all__ = ["bars_wanted", "progress_bar"]


def bars_wanted() -> bool:
    """Whether to draw progress bars: stderr is a terminal, not --quiet, TQDM_DISABLE unset (or 0/false/no)."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if is_quiet():
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any):
    """tqdm.auto.tqdm, off (a plain iterator with the same methods) when `disable` or `not bars_wanted()`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=disable or not bars_wanted(), **kwargs)
