"""A method declares its own options in its own file (issue 25, item 2): `Method.Options`, a frozen dataclass
of `option(...)` fields, which sapt.config adds to the run config as flat keys. The flags, YAML keys and
config.yaml files of before keep working, and a run saved before keeps resuming."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sapt import config
from sapt.cli import build_parser
from sapt.config import FIELDS, ConfigError, RunConfig, differences, from_saved, resolve, to_dict
from sapt.methods import METHODS, make_method
from sapt.methods.o_lora import OLoRAOptions
from sapt.methods.replay import ReplayOptions
from sapt.options import AT_LEAST_1, option
from sapt.rundir.plan import plan_run_dir

# RUN_DIR/config.yaml as sapt wrote it before the methods declared their options (main at 7bc95b1: `to_dict`
# of a replay run with replay_memory 3 and a non-default o-lora lambda), byte for byte.
SAVED_BEFORE = """\
output: runs/old
model: tiny-llama
method: replay
reference: null
olora_lambda1: 0.25
olora_lambda2: 0.0
replay_memory: 3
data_dir: null
benchmark: null
tasks:
- topic
- sentiment
extra_tasks: []
order: null
val_size: 0.1
max_train_per_task: null
max_eval_per_task: null
lora_r: 8
lora_alpha: 32.0
lora_dropout: 0.0
query_hidden: 100
lr: 0.002
router_lr: null
router_warmup: 0.25
router_centre: true
router_key_init: random
epochs: 3
batch_size: 8
grad_accum: 1
seed: 42
mixed_precision: 'no'
backbone_dtype: float32
log_with:
- jsonl
max_source_length: 512
max_target_length: 128
max_new_tokens: 50
eval_batch_size: 16
stop_at_newline: true
reflection: true
reflection_source: generated
kl_ratio: null
replay_every: 1
pseudo_ratio: 0.1
pseudo_max: 50
pseudo_epochs: null
pseudo_steps: null
pseudo_lr: 0.001
pseudo_r: 8
pseudo_top_k: 20
pseudo_repetition_penalty: 2.5
pseudo_max_new_tokens: 64
notes: {}
block_init: zero
input_field: input
output_field: output
unseen: []
pet: lora
prompt_len: 20
router_schedule: learn-then-route
router_fit_steps: 1000
router_ce: 0.0
router_fit_kl: 10.0
prompt_mlp_hidden: 0
max_grad_norm: 0.0
template: family
lr_scheduler: constant
warmup_ratio: 0.0
target_modules: null
tracker_project: null
eval_every: 1
route_without_definition: 0.0
quantize: none
pseudo_step_fraction: 0.25
"""


def test_each_method_option_is_declared_in_its_methods_file():
    declared = {f.name: m for m in METHODS.values() if m.Options for f in dataclasses.fields(m.Options)}
    assert declared == {"olora_lambda1": METHODS["o-lora"], "olora_lambda2": METHODS["o-lora"],
                        "replay_memory": METHODS["replay"]}
    for name, method in declared.items():
        assert FIELDS[name].metadata["section"] == "method"
        own = {f.name: f for f in dataclasses.fields(method.Options)}[name]
        assert dict(FIELDS[name].metadata) == dict(own.metadata) and FIELDS[name].default == own.default
        assert Path(inspect.getfile(method.Options)) == Path(inspect.getfile(method))  # one file
    source = Path(config.__file__).read_text(encoding="utf-8")
    assert "olora_lambda1: float" not in source and "replay_memory: int" not in source


def test_the_flat_flags_and_yaml_keys_set_a_methods_options(tmp_path):
    args = build_parser().parse_args(["run", "--olora-lambda1", "0.25", "--replay-memory", "3"])
    assert (args.olora_lambda1, args.replay_memory) == (0.25, 3)
    cfg = resolve({"method": "o-lora", "olora_lambda1": 0.25})
    assert cfg.method_options == OLoRAOptions(olora_lambda1=0.25, olora_lambda2=0.0)
    assert make_method(cfg.method, cfg.method_options).lambda_1 == 0.25
    path = tmp_path / "c.yaml"
    path.write_text("method: replay\nreplay_memory: 3\n")
    cfg = resolve({}, str(path))
    assert cfg.method_options == ReplayOptions(3) and make_method(cfg.method, cfg.method_options).memory_size == 3
    assert resolve({"method": "sapt"}).method_options is None  # a method with no options of its own
    with pytest.raises(ConfigError, match="replay_memory must be >= 1"):  # the range declared in replay.py
        resolve({"method": "replay", "replay_memory": 0})


def test_a_config_yaml_saved_before_loads_the_same_and_resumes(tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(SAVED_BEFORE.replace("runs/old", str(run_dir)), encoding="utf-8")
    cfg = from_saved(run_dir / "config.yaml")
    assert cfg.method_options == ReplayOptions(3) and cfg.olora_lambda1 == 0.25
    # written again, byte for byte the same file
    assert yaml.safe_dump(to_dict(cfg), sort_keys=False) == SAVED_BEFORE.replace("runs/old", str(run_dir))
    # the resume check finds no difference; a changed method option is refused as any fixed key is
    assert differences(yaml.safe_load(SAVED_BEFORE), cfg) == []
    assert plan_run_dir(cfg) == (run_dir, {})
    with pytest.raises(Exception, match="different config.*replay_memory"):
        plan_run_dir(dataclasses.replace(cfg, replay_memory=4))


def test_a_methods_options_become_config_keys_after_its_own_section(monkeypatch):
    @dataclass(frozen=True)
    class LastKOptions:
        last_k: int = option(1, bounds=AT_LEAST_1, section="method", help="last-k: blocks used")

    class LastK:
        Options = LastKOptions

    monkeypatch.setattr(config, "METHODS", {"last-k": LastK})

    class Toy:
        __annotations__ = {"output": "str", "method": "str", "lr": "float"}
        output = option("x", section="run", help="h")
        method = option("m", section="method", help="h")
        lr = option(1.0, section="optimisation", help="h")

    toy = dataclass(config._with_method_options(Toy))
    assert [f.name for f in dataclasses.fields(toy)] == ["output", "method", "last_k", "lr"]
    assert toy().last_k == 1 and dataclasses.fields(toy)[2].metadata["bounds"] is AT_LEAST_1

    class Clash:
        __annotations__ = {"method": "str", "last_k": "int"}
        method = option("m", section="method", help="h")
        last_k = option(2, section="method", help="h")

    with pytest.raises(RuntimeError, match="a config key of its own"):
        config._with_method_options(Clash)


def test_the_sections_are_frozen_views_of_the_flat_config():
    cfg = resolve({"tasks": ["topic"], "lr": 1e-3, "router_warmup": 0.5, "max_new_tokens": 7})
    assert (cfg.optim.lr, cfg.router.router_warmup, cfg.decoding.max_new_tokens) == (1e-3, 0.5, 7)
    assert cfg.arm.reflection is cfg.reflection and cfg.block.pet == cfg.pet and cfg.data.tasks == ["topic"]
    assert cfg.run.model == cfg.model
    views = {name: config.section_fields(name) for name in config.SECTIONS}
    for name, fields in views.items():
        names = [f.name for f in fields]
        if name in config.OWNED_OPTIONS:  # the generic keys, then the selected type's or method's own options
            names = [n for n in names if n not in config.OWNED_OPTIONS[name][0]] + ["options"]
        assert [f.name for f in dataclasses.fields(config.SECTION_TYPES[name])] == names
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0
    cfg.data.tasks.append("sentiment")  # a copy: the run's list is not changed through a view
    assert cfg.tasks == ["topic"]
    assert type(cfg.optim).__name__ == "OptimisationSection"


def test_the_method_section_holds_the_selected_methods_options_only():
    olora = resolve({"tasks": ["topic"], "method": "o-lora", "olora_lambda1": 0.25})
    view = olora.section("method")
    assert (view.method, view.options) == ("o-lora", olora.method_options)
    assert view.options.olora_lambda1 == 0.25 and not hasattr(view, "replay_memory")
    assert resolve({"tasks": ["topic"]}).section("method").options is None  # sapt declares none
