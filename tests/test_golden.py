"""Behaviour is preserved: the same command with the same seed writes the same bytes.

For every method (and SAPT on both model families), a tiny run's metrics.json and each stage's adapter,
router and replay inputs are hashed and compared with tests/golden/tiny_runs.json, recorded before a
refactor. A change that is meant to change results regenerates the file on purpose:

    SAPT_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

One torch thread, so that the reductions (and so the bytes) do not depend on the machine's core count.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from sapt.cli import main

GOLDEN = Path(__file__).parent / "golden" / "tiny_runs.json"
COMMON = ["--max-train-per-task", "8", "--max-eval-per-task", "4", "--epochs", "2", "--max-new-tokens", "3",
          "--tasks", "topic,sentiment,addition"]
CASES = {
    "sapt-llama": ["--model", "tiny-llama", "--method", "sapt"],
    # the paper's joint schedule, the default until learn-then-route replaced it: its bytes are those that
    # "sapt-llama" recorded then (test_the_joint_schedule_kept_its_bytes)
    "sapt-joint": ["--model", "tiny-llama", "--method", "sapt", "--router-schedule", "joint"],
    "sapt-llama-generated": ["--model", "tiny-llama", "--method", "sapt", "--reflection-source", "generated",
                             "--pseudo-max-new-tokens", "8"],
    "sapt-t5": ["--model", "tiny-t5", "--method", "sapt", "--reflection-source", "real"],
    "sapt-hard": ["--model", "tiny-llama", "--method", "sapt-hard", "--reflection-source", "real"],
    "seq-lora": ["--model", "tiny-llama", "--method", "seq-lora"],
    "inc-lora": ["--model", "tiny-llama", "--method", "inc-lora"],
    "o-lora": ["--model", "tiny-llama", "--method", "o-lora"],
    "replay": ["--model", "tiny-llama", "--method", "replay"],
    "per-task": ["--model", "tiny-llama", "--method", "per-task"],
    "mtl": ["--model", "tiny-llama", "--method", "mtl"],
}
HASHED = ("adapter.safetensors", "router.safetensors", "replay.jsonl")


def fingerprint(run: Path) -> dict[str, str]:
    out = {"metrics.json": _sha(run / "metrics.json")}
    for sdir in sorted((run / "stages").iterdir()):
        for name in HASHED:
            if (sdir / name).exists():
                out[f"{sdir.name}/{name}"] = _sha(sdir / name)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_recorded(case: str, args: list[str], golden: Path, tmp_path: Path) -> None:
    """Run `sapt run` with `args` and compare its fingerprint with `golden`'s record of `case`."""
    run = tmp_path / case
    assert main(["run", *COMMON, *args, "--output", str(run)]) == 0
    got = fingerprint(run)
    recorded = json.loads(golden.read_text()) if golden.exists() else {}
    if os.environ.get("SAPT_UPDATE_GOLDEN"):
        recorded[case] = got
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert case in recorded, "no recorded fingerprint: run with SAPT_UPDATE_GOLDEN=1 once"
    diff = sorted(k for k in set(got) | set(recorded[case]) if got.get(k) != recorded[case].get(k))
    assert not diff, f"{case}: these files changed: {diff}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tiny_run_writes_the_recorded_bytes(case, one_thread, tmp_path):
    check_recorded(case, CASES[case], GOLDEN, tmp_path)


# Prompt-tuning blocks (`--pet prompt`): recorded apart, in their own file, from the code before the block
# types became a registry (issue 25), so that tiny_runs.json stays as it was.
GOLDEN_PROMPT = Path(__file__).parent / "golden" / "prompt_runs.json"
PROMPT_CASES = {
    "sapt-prompt": ["--model", "tiny-llama", "--method", "sapt", "--pet", "prompt", "--prompt-len", "4"],
    "progprompt": ["--model", "tiny-llama", "--method", "progprompt", "--prompt-len", "4"],
}


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_a_tiny_prompt_run_writes_the_recorded_bytes(case, one_thread, tmp_path):
    check_recorded(case, PROMPT_CASES[case], GOLDEN_PROMPT, tmp_path)
