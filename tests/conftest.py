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
