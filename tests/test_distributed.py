"""Data parallelism through `accelerate launch` and mixed precision, on tiny models on the CPU (gloo)."""
import json
import os
import re
import socket
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from sapt import io
from sapt.config import resolve
from sapt.data import builtin_suite
from sapt.distributed import get_dist
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel
from sapt.train import stage_sections, train_stage

ROOT = Path(__file__).resolve().parents[1]
# batch 3 over 2 processes: shards of 2 and 1 examples, so the token-count normalisation matters
OPTS = ["--model", "tiny-llama", "--tasks", "topic,sentiment", "--epochs", "2", "--max-train-per-task", "16",
        "--max-eval-per-task", "6", "--max-new-tokens", "3", "--reflection-source", "real", "--batch-size", "3",
        "--lr", "1e-2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sapt_run(out: Path, processes: int, fsdp: bool = False, opts: list[str] = OPTS) -> subprocess.CompletedProcess:
    return sapt_cli(["run", "--output", str(out), *opts], processes, fsdp)


def sapt_cli(args: list[str], processes: int, fsdp: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}

    def launch() -> subprocess.CompletedProcess:
        if processes == 1:
            launcher = [sys.executable, "-m", "sapt.cli"]
        else:
            kind = ["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]
            launcher = [sys.executable, "-m", "accelerate.commands.launch", *kind, "--num_processes",
                        str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port()), "-m", "sapt.cli"]
        return subprocess.run([*launcher, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)

    result = launch()
    if processes > 1 and result.returncode != 0 and GLOO_ABORT in result.stderr:
        # One CI run (2026-12-06: 751 of 752 passed) saw rank 1 of this file's first launch die by SIGABRT;
        # the part of the output it kept held only the launcher's summary, and about twenty launches here,
        # on quiet and on loaded cores, never did it again. gloo on the CPU is known to abort a process now
        # and then when a worker thread outlives the interpreter (pytorch/pytorch#179291). So a launch whose
        # rank died by SIGABRT is tried once more, from scratch on a new port, and says so with the ranks'
        # error lines; an abort that repeats, or any other failure, still fails the test.
        warnings.warn(f"a rank died by SIGABRT; launching once more:\n{rank_errors(result.stderr)}")
        if "--output" in args:
            shutil.rmtree(args[args.index("--output") + 1], ignore_errors=True)
        result = launch()
    return result


GLOO_ABORT = "Signal 6 (SIGABRT)"


def rank_errors(stderr: str, limit: int = 40) -> str:
    """The lines of the ranks' output that say why a launch failed (the launcher's own summary, which is
    all the last 2,000 characters show, names only the signal)."""
    keys = ("Error", "error:", "terminate called", "what():", "Fatal", "Traceback", "Signal", "Exception")
    return "\n".join([line for line in stderr.splitlines() if any(k in line for k in keys)][:limit])


def failed(result: subprocess.CompletedProcess) -> str:
    """The assertion message of a failed launch: the ranks' error lines, then the end of the output."""
    return f"{rank_errors(result.stderr)}\n---- end of the output:\n{result.stderr[-2000:]}"


def assert_same_stages(one: Path, two: Path) -> None:
    """The same files, per-stage blocks and routers to tolerance, and the same score matrix."""
    rel = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.name != ".lock")  # noqa: E731
    assert rel(one) == rel(two)
    for stage in sorted((one / "stages").iterdir()):
        for name in ("adapter.safetensors", "router.safetensors"):
            a, b = io.load_tensors(stage / name), io.load_tensors(two / "stages" / stage.name / name)
            assert a.keys() == b.keys()
            for k in a:
                torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3, msg=f"{stage.name}/{name}:{k}")
        assert any(float(t.abs().max()) > 0 for k, t in io.load_tensors(stage / "adapter.safetensors").items()
                   if "lora_B" in k)  # the blocks did train: the match is not two zeros
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["matrix"] == m2["matrix"] and m1["routing_accuracy"] == m2["routing_accuracy"]


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = sapt_run(one, 1)
    assert r1.returncode == 0, failed(r1)
    r2 = sapt_run(two, 2)
    assert r2.returncode == 0, failed(r2)
    assert "2 processes, global batch 3" in r2.stderr  # really two ranks, not two copies of one
    assert r2.stdout.count("AP ") == 1  # only the main process prints the table
    assert "FSDP" not in r2.stderr
    assert_same_stages(one, two)  # one run directory, with the same files and parameters
    # the logged loss is the global micro-batch's, not one rank's
    l1, l2 = ([json.loads(x)["loss"] for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (one, two))
    assert len(l1) == len(l2)
    assert l2 == pytest.approx(l1, abs=1e-4)


# 13 examples in batches of 3 end with a batch of 1, which leaves the second process an empty slice (its
# stand-in forward keeps FSDP in step); 5 evaluation examples in batches of 2 give the processes 2 and 1
# batches; the reflection inputs are generated (the pseudo-sample generator runs on both, in step)
FSDP_OPTS = ["--model", "tiny-llama", "--tasks", "topic,sentiment", "--epochs", "1", "--max-train-per-task", "13",
             "--max-eval-per-task", "5", "--eval-batch-size", "2", "--max-new-tokens", "3", "--batch-size", "3",
             "--lr", "1e-2", "--pseudo-max-new-tokens", "12", "--pseudo-ratio", "0.2"]


def test_fsdp_shards_the_backbone_and_trains_what_one_process_trains(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = sapt_run(one, 1, opts=FSDP_OPTS)
    assert r1.returncode == 0, failed(r1)
    r2 = sapt_run(two, 2, fsdp=True, opts=FSDP_OPTS)
    assert r2.returncode == 0, failed(r2)
    assert r2.stdout.count("AP ") == 1
    # really sharded: each process holds half of the blocks' backbone weights
    held = re.findall(r"FSDP over 2 processes: (\d+) LlamaDecoderLayer blocks sharded, this process holds (\d+) "
                      r"of their (\d+)", r2.stderr)
    assert len(held) == 1, r2.stderr[-2000:]  # logged once, by the main process
    n_blocks, local, whole = map(int, held[0])
    assert n_blocks == load_model("tiny-llama").model.config.num_hidden_layers
    assert local == pytest.approx(whole / 2, rel=0.05)
    assert_same_stages(one, two)
    assert json.loads((two / "stages/00_topic/stage.json").read_text())["n_train"] % 3 == 1
    for pred in (one / "stages").glob("*/predictions/*.jsonl"):  # answers and routing weights, example by example
        assert pred.read_text() == (two / pred.relative_to(one)).read_text()
    for d in (one, two):  # the generated reflection path ran
        assert json.loads((d / "stages" / "00_topic" / "replay_stats.json").read_text())["source"] == "generated"
    assert (one / "stages/00_topic/replay.jsonl").read_text() == (two / "stages/00_topic/replay.jsonl").read_text()
    # `sapt eval` on the finished run, sharded again after its blocks are loaded: the last row, printed once
    r3 = sapt_cli(["eval", "--run", str(two)], 2, fsdp=True)
    assert r3.returncode == 0, failed(r3)
    assert r3.stdout.count("AP ") == 1 and "FSDP over 2 processes" in r3.stderr
    last = json.loads((two / "metrics.json").read_text())["matrix"][-1]
    assert [v["score"] for v in json.loads((two / "eval" / "scores.json").read_text())["scores"].values()] == last
    # `sapt predict`: in step on both processes, printed once, the answers one process gives
    ask = ["predict", "--run", str(two), "--json", "--definition", "Name the topic.", "A story about a piano.", "Rain again."]
    sharded, single = sapt_cli(ask, 2, fsdp=True), sapt_cli(ask, 1)
    assert sharded.returncode == 0 and single.returncode == 0, sharded.stderr[-2000:] + single.stderr[-2000:]
    assert len(sharded.stdout.splitlines()) == 2 and sharded.stdout == single.stdout


def test_gradient_clipping_under_fsdp_clips_what_one_process_clips(tmp_path):
    """With a bound below every step's norm (so each step is clipped), 2 FSDP processes train the blocks and
    routers one process trains: the trainable parameters are whole on every process, so the local norm of the
    averaged gradients is the global norm (sapt.stage_trainer.StageTrainer.clip_gradients)."""
    opts = [*FSDP_OPTS, "--max-grad-norm", "1e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = sapt_run(one, 1, opts=opts)
    assert r1.returncode == 0, failed(r1)
    r2 = sapt_run(two, 2, fsdp=True, opts=opts)
    assert r2.returncode == 0, failed(r2)
    assert "FSDP over 2 processes" in r2.stderr
    assert_same_stages(one, two)
    norms = [[json.loads(x)["grad_norm"] for x in (d / "train_log.jsonl").read_text().splitlines()
              if "grad_norm" in json.loads(x)] for d in (one, two)]
    assert norms[0] and all(n > 1e-3 for n in norms[0])  # every step was clipped
    assert norms[1] == pytest.approx(norms[0], rel=1e-3)  # the same (global) norm, not a shard's


def test_fsdp_on_t5_trains_what_data_parallel_trains(tmp_path):
    """Encoder-decoder blocks (T5Block) sharded. Compared with 2-process data parallel, not with one
    process: T5 keeps dropout on in training, and two processes draw other masks than one does."""
    opts = ["--model", "tiny-t5", *FSDP_OPTS[2:]]
    dp, fsdp = tmp_path / "dp", tmp_path / "fsdp"
    r1 = sapt_run(dp, 2, opts=opts)
    assert r1.returncode == 0, failed(r1)
    r2 = sapt_run(fsdp, 2, fsdp=True, opts=opts)
    assert r2.returncode == 0, failed(r2)
    assert re.search(r"FSDP over 2 processes: \d+ T5Block blocks sharded", r2.stderr)
    assert_same_stages(dp, fsdp)


def test_lockstep_batches_give_every_process_as_many_batches():
    from sapt.distributed import Dist

    batches = [[0, 1], [2, 3], [4]]
    shares = {}
    for fsdp in (False, True):
        for rank in (0, 1):
            d = Dist.__new__(Dist)  # the arithmetic only; no process group
            d.rank, d.world, d.fsdp = rank, 2, fsdp
            shares[fsdp, rank] = d.lockstep_batches(batches)
    assert shares[False, 0] == [([0, 1], True), ([4], True)] and shares[False, 1] == [([2, 3], True)]
    assert shares[True, 0] == shares[False, 0]
    assert shares[True, 1] == [([2, 3], True), ([0, 1], False)]  # topped up, marked not real
    # every batch is answered exactly once across processes
    real = sorted(i for r in (0, 1) for b, ok in shares[True, r] if ok for i in b)
    assert real == [0, 1, 2, 3, 4]


def test_bf16_autocasts_the_forward_and_keeps_the_lora_weights_in_float32(tmp_path):
    tasks = builtin_suite(seed=0, n_train=16, n_val=4, n_eval=4)
    losses = {}
    for precision in ("no", "bf16"):
        cfg = resolve({"model": "tiny-llama", "output": str(tmp_path), "epochs": 1, "lr": 1e-2,
                       "mixed_precision": precision})
        torch.manual_seed(0)
        model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
        model.add_task(tasks[0].name)
        seen = []
        proj = model.base.model.layers[0].self_attn.q_proj
        handle = proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        log = tmp_path / f"{precision}.jsonl"
        train_stage(model, tasks[0], 0, stage_sections(cfg), log)
        handle.remove()
        assert seen[0] == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
        losses[precision] = [json.loads(x)["loss"] for x in log.read_text().splitlines()]
    # the same training, up to bf16 rounding: close, but not bit-identical (autocast did something)
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)
    assert losses["bf16"] != losses["no"]


def test_mixed_precision_is_checked():
    from sapt.config import ConfigError

    with pytest.raises(ConfigError, match="mixed_precision"):
        resolve({"mixed_precision": "fp8"})


def test_one_process_collectives_are_identities():
    dist = get_dist()
    assert dist.world == 1 and dist.is_main
    assert dist.shard([1, 2, 3]) == [1, 2, 3]
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    dist.average_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert dist.sum(1.5) == 1.5 and dist.broadcast({"a": 1}) == {"a": 1}


def test_trackers_get_the_losses_and_scores_that_the_run_logs(tmp_path):
    from sapt.train import run

    out = tmp_path / "run"
    cfg = tiny_config(out, epochs=2, max_train_per_task=16, max_eval_per_task=6, tasks=["topic", "sentiment"],
                      reflection_source="real", log_with=["jsonl", "tensorboard"])
    run(cfg)
    rows = [json.loads(x) for x in (out / "trackers" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["config"]["lr"] == cfg.lr
    train = [r for r in rows if "train/loss" in r]
    steps = [r["step"] for r in train]
    assert steps == list(range(1, len(steps) + 1))  # one optimiser-step counter across the stages
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in train] == [r["loss"] for r in log]  # batch size 8: one micro-batch a step
    metrics = json.loads((out / "metrics.json").read_text())
    evals = [r for r in rows if "eval/ap" in r]
    assert [r["eval/topic"] for r in evals] == [row[0] for row in metrics["matrix"]]
    assert evals[-1]["eval/ap"] == pytest.approx(metrics["ap"])
    assert evals[-1]["step"] == steps[-1]
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    stages = sorted((out / "stages").iterdir())
    assert val == [h["val_loss"] for s in stages for h in json.loads((s / "stage.json").read_text())["history"]]

    # tensorboard: the same train/loss scalars, read back from its event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = {p.parent for p in (out / "trackers").rglob("events.out.tfevents.*")}
    scalars = []
    for d in event_dirs:
        acc = EventAccumulator(str(d))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            scalars += [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in scalars] == steps
    assert [v for _, v in scalars] == pytest.approx([r["train/loss"] for r in train], rel=1e-6)


def test_an_unavailable_tracker_is_refused_before_the_run_directory_is_touched(tmp_path, monkeypatch):
    import importlib.util

    from sapt.config import ConfigError
    from sapt.train import run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="pip install wandb"):
        run(resolve({"model": "tiny-llama", "output": str(out), "tasks": ["topic"], "log_with": ["wandb"]}))
    assert not out.exists()


def test_deepspeed_is_refused_with_a_pointer_to_the_fsdp_config(monkeypatch):
    import accelerate
    from accelerate.utils import DistributedType

    from sapt.distributed import Dist, DistributedError

    class Launched:  # what accelerate builds under a DeepSpeed config
        def __init__(self, **kwargs):
            self.distributed_type = DistributedType.DEEPSPEED

    monkeypatch.setattr(accelerate, "Accelerator", Launched)
    with pytest.raises(DistributedError, match="fsdp.yaml"):
        Dist()
