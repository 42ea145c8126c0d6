"""The baselines behind one interface: each runs end to end, freezes (or not) what it should, and the
O-LoRA loss and FWT are right."""
import json
from functools import partial

import pytest
import torch
from conftest import tiny_config

from sapt import io
from sapt.config import ConfigError
from sapt.methods import METHODS, make_method, orthogonality_loss
from sapt.models import load_model
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig
from sapt.modules.sapt_model import SAPTModel
from sapt.train import run

TWO_TASKS = ["topic", "sentiment"]


cfg2 = partial(tiny_config, max_new_tokens=2, lr=1e-2, tasks=TWO_TASKS, reflection_source="real", replay_memory=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return {m: (root / m, run(cfg2(root / m, method=m)).metrics) for m in METHODS}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_runs_end_to_end_over_two_tasks(runs, method):
    out, m = runs[method]
    assert m["method"] == method and m["tasks"] == TWO_TASKS
    if method == "mtl":
        assert len(m["matrix"]) == 1 and all(x is not None for x in m["matrix"][0])
        assert m["ap"] == pytest.approx(sum(m["matrix"][0]) / 2)
    else:
        assert len(m["matrix"]) == 2 and m["matrix"][0][1] is None and m["matrix"][1][1] is not None
    routed = METHODS[method].routed
    assert (m["routing_accuracy"] is not None and m["routing_accuracy"][-1][0] is not None) == routed


def adapters(out, stage):
    sdir = sorted((out / "stages").iterdir())[stage]
    return io.load_tensors(sdir / "adapter.safetensors")


def test_seq_lora_and_replay_train_the_same_block_in_both_stages(runs):
    for method in ("seq-lora", "replay"):
        out, _ = runs[method]
        a, b = adapters(out, 0), adapters(out, 1)
        assert a.keys() == b.keys()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{method}: stage 2 did not move the shared block"


@pytest.mark.parametrize("method", ["inc-lora", "o-lora", "sapt", "per-task"])
def test_block_methods_leave_stage_one_bit_identical(runs, method):
    out, _ = runs[method]
    cfg, model, names = __import__("sapt.train", fromlist=["load_trained"]).load_trained(out)
    first = adapters(out, 0)
    now = model.block_state(0)
    assert first.keys() == now.keys()
    assert all(torch.equal(first[k], now[k]) for k in first)
    second = adapters(out, 1)
    assert any(v.abs().sum() > 0 for k, v in second.items() if "lora_B" in k)  # block 2 trained


def test_replay_stores_real_examples_of_old_tasks(runs):
    out, _ = runs["replay"]
    rows = [json.loads(l) for l in (sorted((out / "stages").iterdir())[0] / "memory.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all({"input", "outputs"} <= set(r) for r in rows)


def test_orthogonality_loss_is_zero_for_orthogonal_a_and_positive_otherwise():
    torch.manual_seed(0)
    model = SAPTModel(load_model("tiny-llama"), LoRABlocks(LoRAConfig(r=2)))
    model.add_task("a")
    model.add_task("b")
    eye = torch.eye(64)
    with torch.no_grad():
        for layer in model.blocks.layers.values():
            layer.lora_A[0].copy_(eye[:2])
            layer.lora_A[1].copy_(eye[2:4])
    assert orthogonality_loss(model, 1).item() == 0.0
    with torch.no_grad():
        for layer in model.blocks.layers.values():
            layer.lora_A[1].copy_(eye[1:3])  # shares direction 1 with block 0
    # each layer: |A_0 A_1^T| has exactly one entry equal to 1
    assert orthogonality_loss(model, 1).item() == pytest.approx(len(model.blocks.layers))
    method = make_method("o-lora", lambda_1=2.0, lambda_2=0.0)
    assert method.extra_loss(model, 1).item() == pytest.approx(2.0 * len(model.blocks.layers))


def test_fwt_is_filled_from_a_per_task_reference_run(runs, tmp_path):
    ref_out, ref = runs["per-task"]
    out = tmp_path / "sapt_with_ref"
    m = run(cfg2(out, method="sapt", reference=str(ref_out))).metrics
    s = [ref["matrix"][j][j] for j in range(2)]
    expected = ((m["matrix"][0][0] - s[0]) + (m["matrix"][1][1] - s[1])) / 2
    assert m["fwt"] == pytest.approx(expected)
    assert m["fwt_reference"] == str(ref_out)


@pytest.mark.parametrize("change", [{"lr": 5e-3}, {"seed": 7}, {"max_train_per_task": 6}, {"epochs": 2},
                                    {"tasks": list(reversed(TWO_TASKS))}, {"model": "tiny-t5"}, {"pet": "prompt"},
                                    {"lora_dropout": 0.1}, {"mixed_precision": "bf16"}, {"max_grad_norm": 1.0}])
def test_a_reference_run_with_other_settings_is_refused_before_training(runs, tmp_path, capsys, change):
    from sapt.cli import main

    ref_out, _ = runs["per-task"]
    out = tmp_path / "sapt_with_ref"
    with pytest.raises(ConfigError, match="--reference"):
        run(cfg2(out, method="sapt", reference=str(ref_out), **change))
    assert not out.exists()  # refused before the run directory was touched
    args = ["run", "--output", str(out), "--model", "tiny-llama", "--epochs", "1", "--max-train-per-task", "8",
            "--max-eval-per-task", "4", "--max-new-tokens", "2", "--lr", "0.05", "--tasks", ",".join(TWO_TASKS),
            "--reference", str(ref_out)]
    if change == {"lr": 5e-3}:  # the same through the command line: one line, exit 2
        assert main(args) == 2
        assert "lr 0.01 there, 0.05 here" in capsys.readouterr().err
        assert not out.exists()


def test_a_prompt_run_refuses_a_lora_per_task_run_as_its_reference(runs, tmp_path, capsys):
    """FWT's single-task scores must come from the same kind of block: a soft-prompt run's reference cannot be a
    LoRA per-task run, whatever else they share. One line, exit 2, nothing written."""
    from sapt.cli import main

    ref_out, _ = runs["per-task"]
    out = tmp_path / "prompt_with_lora_ref"
    args = ["run", "--output", str(out), "--model", "tiny-llama", "--epochs", "1", "--max-train-per-task", "8",
            "--max-eval-per-task", "4", "--max-new-tokens", "2", "--lr", "0.01", "--tasks", ",".join(TWO_TASKS),
            "--reflection-source", "real", "--replay-memory", "3", "--pet", "prompt", "--reference", str(ref_out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference" in err[0] and "pet 'lora' there, 'prompt' here" in err[0]
    assert "prompt_len" not in err[0]  # the LoRA run's prompt_len is its default too: only what differs is named
    assert not out.exists()


def test_a_reference_is_checked_on_the_settings_of_the_run_s_own_block_kind(runs, tmp_path):
    """A LoRA run's prompt settings change nothing a LoRA per-task run computes, so they do not refuse it."""
    from sapt.config import to_dict
    from sapt.train import check_reference, load_run_tasks

    ref_out, _ = runs["per-task"]
    cfg = cfg2(tmp_path / "x", method="sapt", reference=str(ref_out), prompt_len=10, prompt_mlp_hidden=800)
    check_reference(cfg.reference, to_dict(cfg), load_run_tasks(cfg))  # accepted
    with pytest.raises(ConfigError, match="lora_r 8 there, 2 here"):
        cfg = cfg2(tmp_path / "y", method="sapt", reference=str(ref_out), lora_r=2)
        check_reference(cfg.reference, to_dict(cfg), load_run_tasks(cfg))


def test_predict_follows_the_method(runs, capsys):
    from sapt.cli import main

    assert main(["predict", "--run", str(runs["seq-lora"][0]), "--json", "some input"]) == 0
    assert json.loads(capsys.readouterr().out)["routing"] is None  # fixed mixing, nothing routed
    assert main(["predict", "--run", str(runs["sapt-hard"][0]), "--json", "some input"]) == 0
    routing = json.loads(capsys.readouterr().out)["routing"]
    assert sorted(routing.values()) == [0.0, 1.0]  # top-1 block at test time
    assert main(["predict", "--run", str(runs["per-task"][0]), "some input"]) == 2
    assert "task id" in capsys.readouterr().err
