import contextlib
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


@contextlib.contextmanager
def one_torch_thread():
    """Runs whose bytes a test compares with another run's, made with one torch thread, as those other runs
    are: with two, a reduction's split can follow the machine's load, and a module fixture is built before
    a function's own one-thread fixture takes hold (the bytes then matched only on an idle machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_script(name: str):
    """bench/<name>.py loaded as a module (bench/ is scripts, not a package), for tests of its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The settings every small tiny-llama run of the tests starts from; each test file adds its own on top.
TINY_RUN = {"model": "tiny-llama", "epochs": 1, "max_train_per_task": 8, "max_eval_per_task": 4, "max_new_tokens": 3}


def tiny_config(out, **settings):
    """The resolved config of a small tiny-llama run writing to `out`: TINY_RUN, then `settings` over it.

    A test file fixes its own settings with `functools.partial(tiny_config, ...)`; a call's keywords
    override the partial's."""
    from sapt.config import resolve  # here: the environment above is set before sapt loads

    return resolve({**TINY_RUN, "output": str(out), **settings})


def peft_matches_sapt_one_hot(run_dir, out, kw, dtype=None, atol=1e-5) -> list:
    """For each task of an exported run: its PEFT adapter (LoRA or prompt tuning) on a fresh base model gives
    the logits of SAPT with all routing weight on that task (to `atol`), and differs from the bare base.
    `dtype`: both sides computed in it, the base loaded in the run's backbone dtype first (the same rounded
    weights as the run's). Returns the PEFT logits."""
    import peft
    import torch

    from sapt.models import load_model
    from sapt.train import load_trained

    cfg, model, names = load_trained(run_dir)
    if dtype is not None:
        model.to(dtype)
    outputs = []
    for t, task in enumerate(names):
        if dtype is None:
            base = load_model(cfg.model, seed=cfg.seed).model
        else:
            base = load_model(cfg.model, seed=cfg.seed, dtype=getattr(torch, cfg.backbone_dtype)).model.to(dtype)
        with torch.no_grad():
            plain = base(**kw).logits
        peft_model = peft.PeftModel.from_pretrained(base, str(out / task)).eval()
        one_hot = torch.zeros(kw["input_ids"].shape[0], len(names))
        one_hot[:, t] = 1.0
        with torch.no_grad(), model.routed(one_hot):
            expected = model.base(**model.blocks.prefix(model.base, dict(kw))).logits  # prefix: identity for LoRA
        with torch.no_grad():
            got = peft_model(**kw).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)
        n_virtual = got.shape[1] - plain.shape[1]  # a causal LM's soft prompt positions come first
        assert (got[:, n_virtual:] - plain).abs().max() > 1e-4  # the adapter was loaded and does something
        outputs.append(got)
    return outputs


def validator_agrees_with_loader(data_dir, benchmark: str, task: str = "t") -> None:
    """validate_benchmark never crashes, gives one-line messages naming files under the benchmark, and when
    it finds no error the loader loads the task with train, validation and evaluation examples."""
    import warnings

    from sapt.data import load_task
    from sapt.data.validate import validate_benchmark

    errors, warns = validate_benchmark(data_dir, benchmark, [task])
    assert all(isinstance(m, str) and m and "\n" not in m for m in errors + warns)
    assert all(m.startswith(str(Path(data_dir) / benchmark)) for m in errors + warns)
    if not errors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_task(data_dir, benchmark, task)
        assert loaded.train and loaded.val and loaded.eval
