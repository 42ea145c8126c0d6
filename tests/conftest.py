import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "CL_Benchmark"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "Long_Sequence").is_dir():
        pytest.skip("../shared/data/CL_Benchmark is absent")
    return SHARED_DATA


# The settings every small tiny-llama run of the tests starts from; each test file adds its own on top.
TINY_RUN = {"model": "tiny-llama", "epochs": 1, "max_train_per_task": 8, "max_eval_per_task": 4, "max_new_tokens": 3}


def tiny_config(out, **settings):
    """The resolved config of a small tiny-llama run writing to `out`: TINY_RUN, then `settings` over it.

    A test file fixes its own settings with `functools.partial(tiny_config, ...)`; a call's keywords
    override the partial's."""
    from sapt.config import resolve  # here: the environment above is set before sapt loads

    return resolve({**TINY_RUN, "output": str(out), **settings})
