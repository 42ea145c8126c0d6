"""--quantize: a 4/8-bit backbone through transformers' BitsAndBytesConfig where bitsandbytes and CUDA exist,
refused in one line (exit 2, nothing written) where they do not.

This machine has neither, so each refusal is tested by faking the other condition (`importlib.util.find_spec`,
`torch.cuda.is_available`), and the loader's call is checked by capturing the keywords `from_pretrained` gets
and stopping there with a sentinel: nothing is downloaded and no quantised model is built here.
"""
import dataclasses
import importlib.util

import pytest
import torch
import yaml
from torch import nn

from sapt.cli import main
from sapt.config import ConfigError, RunConfig, resolve, to_dict
from sapt.models import ModelLoadError, load_model, quantization_config, quantize_backend_problem

HUB_ID = "some-owner/some-llama"  # a plausible hub id: never fetched (the loader is stopped before)
SMALL = ["--max-train-per-task", "4", "--max-eval-per-task", "2", "--tasks", "topic,sentiment"]
_real_find_spec = importlib.util.find_spec


def _bitsandbytes(monkeypatch, present: bool) -> None:
    def find_spec(name, *args, **kwargs):
        if name == "bitsandbytes":
            return object() if present else None
        return _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _cuda(monkeypatch, available: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


def _refused_run(argv, tmp_path, capsys) -> str:
    """`sapt run` with argv: exit 2, one error line, no traceback, no run directory; returns the line."""
    out = tmp_path / "run"
    code = main(["run", *SMALL, *argv, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1, err
    assert not out.exists()  # refused before the run directory was made
    return errors[0]


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_without_bitsandbytes_the_run_is_refused_naming_the_package(bits, monkeypatch, tmp_path, capsys):
    _bitsandbytes(monkeypatch, present=False)
    _cuda(monkeypatch, available=True)
    line = _refused_run(["--model", HUB_ID, "--quantize", bits], tmp_path, capsys)
    assert f"quantize {bits}" in line and "pip install bitsandbytes" in line


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_without_cuda_the_run_is_refused_saying_the_kernels_need_it(bits, monkeypatch, tmp_path, capsys):
    _bitsandbytes(monkeypatch, present=True)
    _cuda(monkeypatch, available=False)
    line = _refused_run(["--model", HUB_ID, "--quantize", bits], tmp_path, capsys)
    assert "CUDA GPU" in line and "bitsandbytes" in line


def test_under_fsdp_it_is_refused():
    with pytest.MonkeyPatch.context() as mp:
        _bitsandbytes(mp, present=True)
        _cuda(mp, available=True)
        assert quantize_backend_problem("8bit") is None
        assert "FSDP" in quantize_backend_problem("8bit", fsdp=True)
        assert quantize_backend_problem("none", fsdp=True) is None


@pytest.mark.parametrize("model, needle", [
    ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("tiny-llama", "random test model"),
    ("tiny-t5", "random test model"),
])
def test_the_reserved_models_are_refused_by_the_config(model, needle, monkeypatch, tmp_path, capsys):
    _bitsandbytes(monkeypatch, present=True)
    _cuda(monkeypatch, available=True)
    with pytest.raises(ConfigError, match=needle):
        resolve({"model": model, "quantize": "4bit"})
    line = _refused_run(["--model", model, "--quantize", "8bit"], tmp_path, capsys)
    assert needle in line
    with pytest.raises(ModelLoadError, match="reserved model"):  # the Python loader, called directly
        load_model(model, quantize="4bit")


def test_none_is_the_default_and_round_trips_through_config_yaml(tmp_path):
    cfg = resolve({"model": "tiny-llama"})
    assert cfg.quantize == "none" and RunConfig().quantize == "none"
    saved = to_dict(cfg)
    assert list(saved)[-2:] == ["quantize", "pseudo_step_fraction"] and saved["quantize"] == "none"  # newest keys last
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert dataclasses.asdict(resolve({}, str(path))) == dataclasses.asdict(cfg)
    assert quantization_config("none", torch.float32) is None and quantize_backend_problem("none") is None
    with pytest.raises(ConfigError, match="quantize must be one of none, 8bit, 4bit"):
        resolve({"model": HUB_ID, "quantize": "2bit"})


def test_a_quantised_config_round_trips_and_may_not_change_on_resume(tmp_path):
    from sapt.config import RESUMABLE_KEYS, differences

    cfg = resolve({"model": HUB_ID, "quantize": "4bit", "backbone_dtype": "bfloat16"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert resolve({}, str(path)).quantize == "4bit"
    assert "quantize" not in RESUMABLE_KEYS
    assert differences(to_dict(cfg), dataclasses.replace(cfg, quantize="8bit")) == ["quantize"]
    # a config.yaml written before the key existed was a full-precision run
    older = {k: v for k, v in to_dict(dataclasses.replace(cfg, quantize="none")).items() if k != "quantize"}
    assert differences(older, dataclasses.replace(cfg, quantize="none")) == []


class _Stop(Exception):
    pass


@pytest.mark.parametrize("bits, dtype", [("8bit", torch.float32), ("4bit", torch.bfloat16), ("4bit", None)])
def test_the_loader_passes_the_bitsandbytes_config_to_from_pretrained(bits, dtype, monkeypatch):
    import transformers

    _bitsandbytes(monkeypatch, present=True)
    _cuda(monkeypatch, available=True)
    tiny = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(lambda cls, name, **kw: tiny))
    seen = {}

    def capture(cls, name, **kwargs):
        seen.update(name=name, **kwargs)
        raise _Stop("stopped before any download")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(capture))
    with pytest.raises(ModelLoadError, match="stopped before any download"):
        load_model(HUB_ID, dtype=dtype, quantize=bits)
    q = seen["quantization_config"]
    assert seen["name"] == HUB_ID and seen["dtype"] == (dtype or torch.float32)
    assert isinstance(q, transformers.BitsAndBytesConfig)
    if bits == "8bit":
        assert q.load_in_8bit and not q.load_in_4bit
    else:
        assert q.load_in_4bit and not q.load_in_8bit and q.bnb_4bit_quant_type == "nf4"
        assert q.bnb_4bit_compute_dtype == (dtype or torch.bfloat16)
    # none: the call of before, without the keyword
    seen.clear()
    with pytest.raises(ModelLoadError):
        load_model(HUB_ID, dtype=dtype)
    assert "quantization_config" not in seen


def test_the_loader_itself_refuses_a_missing_backend_before_any_network(monkeypatch):
    _bitsandbytes(monkeypatch, present=False)
    import transformers

    def no_network(*args, **kwargs):
        raise AssertionError("the backend check comes before any hub call")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_network)
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        load_model(HUB_ID, quantize="8bit")


def _packed(linear: nn.Linear) -> None:
    """Stand-in for a bitsandbytes layer: the weight is packed integers, not a float matrix."""
    linear.weight = nn.Parameter(torch.zeros(linear.weight.shape, dtype=torch.uint8), requires_grad=False)


def test_a_fused_qkv_projection_with_packed_weights_is_refused():
    from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
    from sapt.modules.sapt_model import SAPTModel

    loaded = load_model("tiny-phi3")
    _packed(loaded.model.model.layers[0].self_attn.qkv_proj)
    with pytest.raises(ModelLoadError, match="fused q/k/v projection .*quantised"):
        SAPTModel(loaded, LoRABlocks(LoRAConfig(r=2, alpha=4)))


def test_merging_into_packed_weights_is_refused_and_leaves_them_as_they_were():
    from sapt.modules.merge import merged
    from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
    from sapt.modules.sapt_model import SAPTModel

    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2, alpha=4)))
    model.add_task("a")
    q = model.base.model.layers[1].self_attn.q_proj.base
    _packed(q)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="quantised"):
        with merged(model, torch.ones(1, 1)):
            pass
    assert not model.state.merged
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_dry_run_says_what_the_run_would_refuse(monkeypatch):
    from sapt.dry_run import quantize_note

    _bitsandbytes(monkeypatch, present=False)
    assert "would refuse it" in quantize_note("4bit") and "pip install bitsandbytes" in quantize_note("4bit")
    _bitsandbytes(monkeypatch, present=True)
    _cuda(monkeypatch, available=True)
    assert quantize_note("8bit").endswith("this machine can load it")


def test_the_card_names_a_quantised_base():
    from sapt.export import card_sections
    from sapt.model_card import _base_loading, _base_model_line, _settings

    def _settings_rows(c):
        return _settings(card_sections(c), {"target_modules": ["q_proj", "v_proj"]})

    cfg = resolve({"model": HUB_ID, "quantize": "4bit", "backbone_dtype": "bfloat16"})
    assert "4-bit NF4" in _base_model_line(cfg.run, cfg.seed, HUB_ID, "causal")
    code = _base_loading(cfg.run, cfg.seed, "causal")
    assert "load_in_4bit=True" in code and "torch.bfloat16" in code
    compile(code, "card", "exec")
    plain = dataclasses.replace(cfg, quantize="none")
    assert "bits" not in _base_model_line(plain.run, plain.seed, HUB_ID, "causal")
    assert "quantization_config" not in _base_loading(plain.run, plain.seed, "causal")
    assert ("backbone loaded in", "4bit (bitsandbytes)") in _settings_rows(cfg)
    assert not any(k == "backbone loaded in" for k, _ in _settings_rows(plain))
