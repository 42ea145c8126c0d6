"""Habits of Hugging Face users (issue 26, item 8): --lr-scheduler / --warmup-ratio (transformers' schedules over
each stage's optimiser steps, kept through a kill-anywhere resume), --target-modules (the Linears that get LoRA
blocks, as PEFT's target_modules) and --tracker-project (the W&B project / TensorBoard folder)."""
import importlib.machinery
import json
import math
import signal
import sys
import types
from functools import partial

import pytest
import torch
import transformers
import yaml
from conftest import one_torch_thread, peft_matches_sapt_one_hot, tiny_config
from test_resume import assert_same_run, sapt_run

from sapt import io
from sapt.cli import main
from sapt.config import ConfigError, differences, resolve, to_dict
from sapt.rundir.recovery import CHECKPOINT, load_checkpoint
from sapt.evaluation.report import REFERENCE_KEYS, check_reference
from sapt.stage_trainer import StageTrainer, make_scheduler
from sapt.tracking import Trackers
from sapt.train import build_model, run

# two tasks (stage 2 trains the router with the reflection KL), 2 epochs of 2 optimiser steps: 4 steps a stage
cfg_of = partial(tiny_config, tasks=["topic", "sentiment"], epochs=2, batch_size=4, lr=1e-2,
                 reflection_source="real", max_new_tokens=2)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def log_rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line]


def trained_bytes(out):
    return {f"{s.name}/{name}": (s / name).read_bytes() for s in sorted((out / "stages").iterdir())
            for name in ("adapter.safetensors", "router.safetensors")}


def transformers_rates(name, warmup_ratio, total, lrs):
    """Each step's rates of an optimiser with groups at `lrs` under transformers' own schedule."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    sched = transformers.get_scheduler(name, opt, num_warmup_steps=math.ceil(warmup_ratio * total),
                                       num_training_steps=total)
    rates = []
    for _ in range(total):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return rates


def spy_rates(monkeypatch):
    """(stage, [blocks' rate, router's rate]) at every optimiser step, as the optimiser holds them."""
    seen = []
    step = StageTrainer.optimiser_step

    def spy(self, record):
        seen.append((self.t, [g["lr"] for g in self.optimizer.param_groups]))
        step(self, record)

    monkeypatch.setattr(StageTrainer, "optimiser_step", spy)
    return seen


# ---- --lr-scheduler, --warmup-ratio ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    out = tmp_path_factory.mktemp("sched") / "constant"
    with one_torch_thread():
        run(cfg_of(out))
    return out


def test_the_default_builds_no_scheduler_and_logs_no_rate(constant, monkeypatch, tmp_path):
    cfg = cfg_of(tmp_path / "x")
    assert (cfg.lr_scheduler, cfg.warmup_ratio) == ("constant", 0.0)
    assert make_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), cfg.optim, 10) is None
    assert not any("lr" in r for r in log_rows(constant))  # train_log.jsonl as before
    history = io.read_json(constant / "stages" / "01_sentiment" / "stage.json")["history"]
    assert [h["lr"] for h in history] == [1e-2, 1e-2]


def test_constant_with_no_warm_up_through_a_scheduler_changes_no_byte(constant, tmp_path):
    """constant_with_warmup at warmup_ratio 0 steps a LambdaLR of factor 1: the same blocks, routers and metrics
    as no scheduler, so the default's "no scheduler at all" is the same schedule."""
    out = tmp_path / "cww"
    run(cfg_of(out, lr_scheduler="constant_with_warmup"))
    assert [r["lr"] for r in log_rows(out)] == [1e-2] * 8  # 2 stages x 2 epochs x 2 optimiser steps
    assert trained_bytes(out) == trained_bytes(constant)
    assert (out / "metrics.json").read_bytes() == (constant / "metrics.json").read_bytes()


@pytest.mark.parametrize("name, ratio", [("linear", 0.5), ("cosine", 0.25)])
def test_every_step_uses_the_rates_of_transformers_schedule_over_its_stage(name, ratio, constant, monkeypatch, tmp_path):
    out = tmp_path / name
    seen = spy_rates(monkeypatch)
    run(cfg_of(out, lr_scheduler=name, warmup_ratio=ratio, router_lr=4e-3, log_with=["jsonl"]))
    for t, sdir in enumerate(sorted((out / "stages").iterdir())):
        steps = io.read_json(sdir / "stage.json")["steps"]
        want = transformers_rates(name, ratio, steps, [1e-2, 4e-3])  # every stage: the schedule from its start
        assert [rates for s, rates in seen if s == t] == want
        assert want[0] == [0.0, 0.0] and max(r[0] for r in want) == 1e-2  # warms up from 0 to the peak
        logged = [r["lr"] for r in log_rows(out) if r["stage"] == t]  # one micro-batch per optimiser step here
        assert logged == [r[0] for r in want]
    tracked = [r["train/lr"] for r in map(json.loads, (out / "trackers" / "metrics.jsonl").read_text().splitlines())
               if "train/lr" in r]
    assert tracked == [r["lr"] for r in log_rows(out)]
    assert trained_bytes(out)["00_topic/adapter.safetensors"] != trained_bytes(constant)["00_topic/adapter.safetensors"]


def test_a_stage_killed_mid_schedule_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL in stage 1 and twice in stage 2 (after its epoch-1 checkpoint, and in epoch 2): the resumed run
    steps on from the checkpoint's point of the schedule and ends byte-identical to an uninterrupted one."""
    opts = dict(tasks=["topic", "sentiment"], lr_scheduler="linear", warmup_ratio=0.3, batch_size=4)
    base = tmp_path / "base"
    p = sapt_run(base, **opts)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "run"
    for point in ("stage0:epoch2:mid", "stage1:epoch1", "stage1:epoch2:mid"):
        p = sapt_run(out, point, **opts)
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr[-2000:])
        if point == "stage1:epoch1":
            state = load_checkpoint(out / "stages" / "01_sentiment" / CHECKPOINT)
            assert state["scheduler"]["last_epoch"] == state["steps"] > 0
            assert 0 < state["scheduler"]["_last_lr"][0] < state["scheduler"]["base_lrs"][0]  # mid-schedule, decaying
    p = sapt_run(out, **opts)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumes after epoch 1/2 from its checkpoint" in p.stderr
    assert_same_run(base, out)
    rows = log_rows(out)
    assert rows == log_rows(base) and len({r["lr"] for r in rows}) > 2


def test_a_rate_changed_on_resume_is_rebased_at_the_schedules_step():
    """--allow-config-change lr mid-stage: the new base rate times the schedule's factor at the checkpoint's
    step, then the schedule goes on from there (StageTrainer.set_rates after the scheduler's state is loaded)."""
    cfg = resolve({"model": "tiny-llama", "lr_scheduler": "linear", "warmup_ratio": 0.2})
    p = torch.nn.Parameter(torch.zeros(1))

    def trainer(lrs):
        t = object.__new__(StageTrainer)
        t.lrs = lrs
        t.optimizer = torch.optim.AdamW([{"params": [p], "lr": lrs[0]}, {"params": [], "lr": lrs[1]}])
        t.scheduler = make_scheduler(t.optimizer, cfg.optim, 10)
        return t

    first = trainer((1e-2, 1e-2))
    for _ in range(4):
        first.optimizer.step()
        first.scheduler.step()
    state = first.scheduler.state_dict()
    second = trainer((1e-3, 5e-4))
    second.scheduler.load_state_dict(state)
    second.set_rates()
    factor = 1 - (4 - 2) / (10 - 2)  # linear after a 2-step warm-up, at step 4
    assert [g["lr"] for g in second.optimizer.param_groups] == pytest.approx([1e-3 * factor, 5e-4 * factor], rel=1e-12)
    second.optimizer.step()
    second.scheduler.step()
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 3 / 8), rel=1e-12)


def test_the_dry_run_shows_each_stages_warm_up(capsys):
    from test_dry_run import dry

    argv = ["--model", "tiny-llama", "--tasks", "topic,sentiment", "--max-train-per-task", "20", "--batch-size", "4"]
    config, rows = dry(capsys, argv)
    assert "lr warm-up" not in rows[0]  # the default plan reads as before
    config, rows = dry(capsys, [*argv, "--lr-scheduler", "cosine", "--warmup-ratio", "0.1"])
    assert config["lr_scheduler"] == "cosine" and config["warmup_ratio"] == 0.1
    assert [int(r["lr warm-up"]) for r in rows] == [math.ceil(0.1 * int(r["optimiser steps"])) for r in rows]


# ---- --target-modules --------------------------------------------------------------------------------------------
def adapted(model_name, target_modules=None):
    cfg = resolve({"model": model_name, **({"target_modules": target_modules} if target_modules else {})})
    return sorted(build_model(cfg).blocks.layers)


def test_target_modules_choose_the_linears_that_get_blocks():
    default = adapted("tiny-llama")
    assert default and {n.rsplit(".", 1)[1] for n in default} == {"q_proj", "v_proj"}
    names = adapted("tiny-llama", "k_proj, o_proj")
    assert {n.rsplit(".", 1)[1] for n in names} == {"k_proj", "o_proj"} and len(names) == len(default)
    regex = adapted("tiny-llama", r"model\.layers\.0\.mlp\..*")  # a regex: the whole name must match
    assert regex == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    t5 = adapted("tiny-t5", "q,o")  # T5's attention Linears are named q, k, v, o
    assert t5 and {n.rsplit(".", 1)[1] for n in t5} == {"q", "o"}
    fused = adapted("tiny-phi3", "qkv_proj,o_proj")  # a fused q/k/v projection: still its q and v rows only
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[1] for n in fused if "qkv_proj" in n} == {"qkv_proj.q",
                                                                                                  "qkv_proj.v"}
    assert any(n.endswith("o_proj") for n in fused)


def test_a_run_with_other_targets_trains_saves_and_exports_them(tmp_path):
    out = tmp_path / "run"
    run(cfg_of(out, target_modules="q_proj,o_proj"))
    keys = set(io.load_tensors(out / "stages" / "01_sentiment" / "adapter.safetensors"))
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "o_proj"}
    assert yaml.safe_load((out / "config.yaml").read_text())["target_modules"] == "q_proj,o_proj"
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "export")]) == 0
    assert sorted(io.read_json(tmp_path / "export" / "topic" / "adapter_config.json")["target_modules"]) == [
        "o_proj", "q_proj"]
    kw = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    peft_matches_sapt_one_hot(out, tmp_path / "export", kw)  # the exported adapters are the run's blocks


@pytest.mark.parametrize("argv, said", [
    (["--target-modules", "nothing_here"], "--target-modules 'nothing_here' matches no Linear module of the model "
                                           "(model type 'llama'); its Linear modules: q_proj, k_proj, v_proj, o_proj, "
                                           "gate_proj, up_proj, down_proj, lm_head"),
    (["--target-modules", "lm_head,q_proj"], "matches lm_head, the model's output layer (LM head)"),
    (["--target-modules", "q_proj", "--pet", "prompt"], "target_modules: pet prompt (soft prompts) adapts no module"),
    (["--target-modules", "q_proj", "--method", "progprompt"], "target_modules: pet prompt"),
    (["--target-modules", "(q|v"], "target_modules: '(q|v' is neither comma-separated module names nor a valid regular"),
    (["--target-modules", " "], "target_modules: names no module"),
    (["--warmup-ratio", "0.1"], "warmup_ratio 0.1: lr_scheduler constant has no warm-up"),
    (["--warmup-ratio", "1.5", "--lr-scheduler", "linear"], "warmup_ratio must be in [0, 1], got 1.5"),
    (["--warmup-ratio", "nan", "--lr-scheduler", "linear"], "warmup_ratio: must be a finite number"),
    (["--lr-scheduler", "cosin"], "argument --lr-scheduler: invalid choice: 'cosin'"),
    (["--tracker-project", "p"], "tracker_project 'p': log_with jsonl has no tracker with a project"),
    (["--tracker-project", "a/b", "--log-with", "tensorboard"], "tracker_project 'a/b' holds '/'"),
    (["--tracker-project", "..", "--log-with", "tensorboard"], "tracker_project '..' is not a folder name"),
])
def test_a_bad_value_is_one_line_and_exit_2_with_nothing_written(argv, said, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-llama", "--tasks", "topic", "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_yaml_takes_the_keys_and_a_list_of_target_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: tiny-llama\nlr_scheduler: cosine\nwarmup_ratio: 1e-1\ntarget_modules: [q_proj, o_proj]\n"
                    "tracker_project: sweep\nlog_with: tensorboard\n")
    cfg = resolve({}, str(path))
    assert (cfg.lr_scheduler, cfg.warmup_ratio, cfg.target_modules, cfg.tracker_project) == (
        "cosine", 0.1, "q_proj,o_proj", "sweep")
    path.write_text("target_modules: [q_proj, '.*']\n")
    with pytest.raises(ConfigError, match=r"c.yaml: target_modules: a list holds module names"):
        resolve({}, str(path))


def test_resume_and_reference_compatibility(tmp_path):
    """The schedule and the targets change what is computed: a resume with others is refused, and so is a
    --reference per-task run trained with others; the tracker project changes nothing and may change."""
    saved = to_dict(resolve({"model": "tiny-llama", "tracker_project": "a", "log_with": ["tensorboard"]}))
    now = resolve({"model": "tiny-llama", "tracker_project": "b", "log_with": ["tensorboard"], "lr_scheduler": "linear",
                   "target_modules": "q_proj"})
    assert differences(saved, now) == ["lr_scheduler", "target_modules"]
    assert differences({k: v for k, v in saved.items() if k not in ("lr_scheduler", "warmup_ratio", "target_modules",
                                                                      "tracker_project")},
                       resolve({"model": "tiny-llama"})) == []  # a config.yaml from before these keys: their defaults
    assert {"lr_scheduler", "warmup_ratio", "target_modules"} <= set(REFERENCE_KEYS)
    assert "tracker_project" not in REFERENCE_KEYS

    from sapt.train import load_run_tasks

    ref = tmp_path / "ref"
    ref.mkdir()
    tasks = load_run_tasks(resolve({"model": "tiny-llama", "tasks": ["topic"]}))
    io.write_json(ref / "metrics.json", {"tasks": ["topic"], "method": "per-task", "stages_done": 1, "matrix": [[50.0]]})
    (ref / "config.yaml").write_text(yaml.safe_dump(to_dict(resolve({"model": "tiny-llama", "method": "per-task",
                                                                      "tasks": ["topic"]}))))
    same = resolve({"model": "tiny-llama", "tasks": ["topic"], "reference": str(ref)})
    check_reference(same.reference, to_dict(same), tasks)
    other = resolve({"model": "tiny-llama", "tasks": ["topic"], "reference": str(ref), "lr_scheduler": "cosine",
                     "target_modules": "q_proj"})
    with pytest.raises(ConfigError, match=r"lr_scheduler 'constant' there, 'cosine' here.*target_modules None there"):
        check_reference(other.reference, to_dict(other), tasks)


# ---- --tracker-project -------------------------------------------------------------------------------------------
def test_tensorboard_writes_into_the_project_folder(tmp_path):
    run_dir = tmp_path / "my-run"
    for project, folder in ((None, "my-run"), ("sweep", "sweep")):
        trackers = Trackers(["tensorboard"], run_dir, {"tracker_project": project})
        trackers.log({"train/loss": 1.0}, step=1)
        trackers.finish()
        assert list((run_dir / "trackers" / folder).glob("events.out.tfevents.*")), folder


def test_wandb_gets_the_project_and_the_run_is_named_after_its_directory(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.config = types.SimpleNamespace(update=lambda *a, **k: None)
    fake.init = lambda **kw: calls.append(kw) or types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = tmp_path / "my-run"
    Trackers(["wandb"], run_dir, {"tracker_project": None}).finish()
    Trackers(["wandb"], run_dir, {"tracker_project": "sweep"}).finish()
    assert calls == [{"project": "my-run", "dir": str(run_dir / "trackers")},  # as before: named after the folder
                     {"project": "sweep", "dir": str(run_dir / "trackers"), "name": "my-run"}]
