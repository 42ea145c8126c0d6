"""The names `--model` accepts, checked before anything is loaded: no torch here (sapt.config uses it).

A name is one of sapt's reserved names, a local path that exists, or a Hugging Face hub id. A name that is
none of these used to go to the hub as it was: `tiny-lama` cost 28 s of connection retries and ended in a
generic connection error, never saying that `tiny-llama` was meant. It is refused at once instead, in one
line that names the reserved names and the closest one.

A plausible hub id is `owner/name`, or a bare legacy name (`gpt2`, `t5-large`), which the hub still
redirects to its owner's repository (`openai-community/gpt2`) and which papers and scripts still use. A bare
name that is close to a reserved name (`smollm`, `tiny_t5`), or that starts with `tiny-`, is taken for a typo
of it and refused: that is the case that cost the network wait.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

__all__ = ["RESERVED", "TINY", "model_name_problem"]

TINY = ("tiny-t5", "tiny-llama", "tiny-qwen2", "tiny-gemma", "tiny-phi3", "tiny-gpt-neox")
RESERVED = ("smollm2", *TINY)

# the hub's rule for a repo id: owner/name, each of letters, digits, "-", "_", ".", not starting with "-" or
# ".", without "--" or "..", at most 96 characters
_HUB_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[\w])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_HUB_PART_ONLY = re.compile(_HUB_PART)


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot be a model (one line, with the closest reserved name when there is one); None
    when it is a reserved name, an existing local path or a plausible hub id."""
    if name in RESERVED or Path(name).expanduser().exists():
        return None
    if _HUB_ID.fullmatch(name) and "--" not in name and ".." not in name:
        return None
    close = difflib.get_close_matches(name, RESERVED, n=1, cutoff=0.6)
    if _HUB_PART_ONLY.fullmatch(name) and not close and not name.startswith("tiny-"):
        return None  # a bare legacy hub name (gpt2, t5-large)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"model {name!r} is unknown: {hint}it is not a reserved name ({', '.join(RESERVED)}), "
            "a local path that exists or a hub id (owner/name, e.g. google-t5/t5-large)")
