"""A block type declares its own run-config keys in its folder (issue 25, item 2: "block, the selected type's own
config"), as PEFT has a config per tuner: `OPTIONS` in sapt/modules/blocks/<name>/config.py, named by the class
as `Options`. sapt.config adds them as flat keys (flags, YAML, config.yaml as before), with no torch, and
`RunConfig.block` holds the generic keys and the selected type's options."""
from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sapt import config
from sapt.cli import build_parser
from sapt.config import FIELDS, BlockSection, RunConfig, differences, flag_of, from_saved, resolve, to_dict
from sapt.modules.blocks.registry import block_options_type, block_type_names
from sapt.options import AT_LEAST_1, option

ROOT = Path(__file__).resolve().parents[2]
# Where each key lived in config.py before the types declared them: {key: (default, help)}, the same now.
BEFORE = {
    "lora_r": (4, "LoRA rank"),
    "lora_alpha": (32.0, "LoRA alpha"),
    "lora_dropout": (0.0, "LoRA dropout"),
    "target_modules": (None, "--pet lora: the Linear modules that get LoRA blocks, as PEFT's target_modules: "
                             "comma-separated names (q_proj,v_proj: a module named so or ending in .q_proj) or a "
                             "regular expression matched against the whole module name; a fused q/k/v projection "
                             "still gets blocks on q and v only"),
    "prompt_len": (20, "virtual tokens of each task's soft prompt (--pet prompt)"),
    "prompt_mlp_hidden": (0, "--pet prompt: train each task's prompt reparameterised as P + MLP(P), an MLP of this "
                             "hidden width (the release: 800); 0 = off"),
}


def test_each_types_keys_come_from_its_folder_as_config_keys_of_the_block_section():
    declared = {}
    for name in block_type_names():
        options = block_options_type(name)
        if options is None:
            continue
        assert Path(inspect.getfile(options)) == ROOT / "sapt/modules/blocks" / name / "config.py"
        for f in dataclasses.fields(options):
            assert f.name not in declared, f"{f.name} declared by {declared.get(f.name)} and {name}"
            declared[f.name] = name
            assert FIELDS[f.name].metadata["section"] == "block" and flag_of(f.name) == "--" + f.name.replace("_", "-")
            assert dict(FIELDS[f.name].metadata) == dict(f.metadata) and FIELDS[f.name].default == f.default
    assert declared == {"lora_r": "lora", "lora_alpha": "lora", "lora_dropout": "lora", "target_modules": "lora",
                        "prompt_len": "prompt", "prompt_mlp_hidden": "prompt"} == config.BLOCK_OPTION_KEYS
    assert block_options_type("ia3") is None  # IA3 declares none
    for key, (default, help_text) in BEFORE.items():  # same default and help as when config.py declared them
        assert (FIELDS[key].default, FIELDS[key].metadata["help"]) == (default, help_text)
    source = Path(config.__file__).read_text(encoding="utf-8")
    assert not any(f"{key}: " in source.split("class RunConfig")[1].split("def section")[0] for key in BEFORE)
    # in the block section, after the generic keys, in the registry's order (LoRA first)
    assert [f.name for f in config.section_fields("block")] == ["pet", "block_init", "lora_r", "lora_alpha",
                                                               "lora_dropout", "target_modules", "prompt_len",
                                                               "prompt_mlp_hidden"]


def test_the_block_section_holds_the_selected_types_options():
    from sapt.modules.blocks.lora.config import LoRAOptions
    from sapt.modules.blocks.prompt.config import PromptOptions

    assert RunConfig().block == BlockSection(pet="lora", block_init="zero", options=LoRAOptions())
    assert RunConfig().block_options == LoRAOptions(lora_r=4, lora_alpha=32.0, lora_dropout=0.0, target_modules=None)
    cfg = resolve({"model": "tiny-llama", "pet": "prompt", "prompt_len": 5, "block_init": "previous"})
    assert cfg.block == BlockSection(pet="prompt", block_init="previous",
                                     options=PromptOptions(prompt_len=5, prompt_mlp_hidden=0))
    assert resolve({"model": "tiny-llama", "pet": "ia3"}).block.options is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block.options.prompt_len = 6


def test_the_flat_flags_and_yaml_keys_set_a_types_options(tmp_path):
    args = build_parser().parse_args(["run", "--lora-r", "16", "--target-modules", "q_proj,o_proj",
                                      "--prompt-len", "7", "--prompt-mlp-hidden", "32"])
    assert (args.lora_r, args.target_modules, args.prompt_len, args.prompt_mlp_hidden) == (16, "q_proj,o_proj", 7, 32)
    path = tmp_path / "c.yaml"
    path.write_text("lora_r: 16\nlora_dropout: 0.1\ntarget_modules: [q_proj, v_proj]\n")
    options = resolve({"model": "tiny-llama"}, str(path)).block.options
    assert (options.lora_r, options.lora_dropout, options.target_modules) == (16, 0.1, "q_proj,v_proj")
    with pytest.raises(config.ConfigError, match="lora_r must be >= 1"):  # the range declared in lora/config.py
        resolve({"lora_r": 0})
    with pytest.raises(config.ConfigError, match="target_modules: pet prompt"):  # config.py's rule, its message
        resolve({"model": "tiny-llama", "pet": "prompt", "target_modules": "q_proj"})


def test_a_config_yaml_saved_before_loads_the_same_and_resumes(tmp_path):
    from test_method_options import SAVED_BEFORE

    from sapt.rundir.plan import plan_run_dir

    text = SAVED_BEFORE.replace("runs/old", str(tmp_path / "old")).replace("lora_r: 8", "lora_r: 6")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(text, encoding="utf-8")
    cfg = from_saved(tmp_path / "old" / "config.yaml")
    assert cfg.block.options.lora_r == 6 == cfg.lora_r
    assert yaml.safe_dump(to_dict(cfg), sort_keys=False) == text  # written again byte for byte
    assert differences(yaml.safe_load(text), cfg) == [] and plan_run_dir(cfg) == (tmp_path / "old", {})
    with pytest.raises(Exception, match="different config.*lora_r"):  # a type's key is fixed on resume as before
        plan_run_dir(dataclasses.replace(cfg, lora_r=4))


def test_a_key_declared_twice_or_in_another_section_is_refused(monkeypatch):
    @dataclass(frozen=True)
    class ScaleOptions:
        scale_init: float = option(1.0, section="block", help="--pet scale: a new block's scale")

    @dataclass(frozen=True)
    class RankOptions:
        lora_r: int = option(2, bounds=AT_LEAST_1, section="block", help="another rank")

    def toy() -> type:  # a fresh class each time: the insertion changes the class it is given
        class Toy:
            __annotations__ = {"pet": "str", "block_init": "str", "lr": "float"}
            pet = option("lora", section="block", help="h")
            block_init = option("zero", section="block", help="h")
            lr = option(1.0, section="optimisation", help="h")
        return Toy

    monkeypatch.setattr(config, "BLOCK_OPTIONS", {"lora": None, "scale": ScaleOptions})
    made = dataclass(config._with_block_options(toy()))
    assert [f.name for f in dataclasses.fields(made)] == ["pet", "block_init", "scale_init", "lr"]
    assert made().scale_init == 1.0
    monkeypatch.setattr(config, "BLOCK_OPTIONS", {"scale": ScaleOptions, "rank": RankOptions, "again": RankOptions})
    made = dataclass(config._with_block_options(toy()))  # one class named by two types: its keys once
    assert [f.name for f in dataclasses.fields(made)] == ["pet", "block_init", "scale_init", "lora_r", "lr"]

    @dataclass(frozen=True)
    class InitOptions:  # a key the config declares itself
        block_init: str = option("zero", section="block", help="h")

    monkeypatch.setattr(config, "BLOCK_OPTIONS", {"init": InitOptions})
    with pytest.raises(RuntimeError, match="InitOptions.block_init: a block type option must be a config key of its own"):
        config._with_block_options(toy())

    @dataclass(frozen=True)
    class ScaleAgain:  # another type's key of the same name: one flat key cannot be two types'
        scale_init: float = option(2.0, section="block", help="h")

    monkeypatch.setattr(config, "BLOCK_OPTIONS", {"scale": ScaleOptions, "other": ScaleAgain})
    with pytest.raises(RuntimeError, match="ScaleAgain.scale_init: a block type option must be a config key"):
        config._with_block_options(toy())

    @dataclass(frozen=True)
    class Misplaced:
        scale_lr: float = option(1.0, section="optimisation", help="h")

    monkeypatch.setattr(config, "BLOCK_OPTIONS", {"scale": Misplaced})
    with pytest.raises(RuntimeError, match="is declared in section block"):
        config._with_block_options(toy())


def test_the_config_and_the_types_options_load_no_torch():
    code = ("import sys, sapt.config\n"
            "from sapt.modules.blocks.registry import block_options_type\n"
            "from sapt.modules.blocks.lora import LoRAOptions\n"
            "import sapt.modules.blocks.prompt.config, sapt.modules.blocks.ia3\n"
            "sapt.config.resolve({'model': 'tiny-llama', 'target_modules': 'q_proj'}).block\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_folders_names_are_reachable_as_before():
    import sapt.modules.blocks as blocks
    from sapt.modules.blocks import lora, prompt
    from sapt.modules.blocks.ia3 import BLOCK_TYPE, IA3Blocks, IA3Config, MixtureIA3Linear  # noqa: F401
    from sapt.modules.blocks.lora import FusedQKVLoRA, MixtureLoRASlice, inject_mixture_lora  # noqa: F401
    from sapt.modules.blocks.prompt import KEY, PromptBank, effective_prompt  # noqa: F401

    assert BLOCK_TYPE is IA3Blocks and lora.BLOCK_TYPE is lora.LoRABlocks and prompt.BLOCK_TYPE is prompt.PromptBlocks
    assert blocks.LoRABlocks is lora.LoRABlocks and blocks.LoRAOptions is lora.LoRAOptions
    for package in (lora, prompt, blocks):
        assert all(getattr(package, name) is not None for name in package.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        lora.Nothing  # noqa: B018
