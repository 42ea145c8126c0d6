"""`sapt export`: each task block as a PEFT adapter that reproduces SAPT routed one-hot to that task."""
import json
import math
import shutil

import pytest
import torch

import sapt.export
from sapt import io
from sapt.cli import main
from sapt.config import FIELDS, resolve
from conftest import peft_matches_sapt_one_hot
from sapt.train import load_trained, run

peft = pytest.importorskip("peft")


def make_run(out, model):
    cfg = {"model": model, "output": str(out), "epochs": 1, "max_train_per_task": 12, "max_eval_per_task": 2,
           "max_new_tokens": 2, "tasks": ["topic", "sentiment"]}
    if "reflection" in FIELDS:
        cfg["reflection"] = False
    run(resolve(cfg))
    return out


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-t5"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    run_dir = make_run(root / "run", request.param)
    out = root / "peft"
    assert main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    return run_dir, out


def inputs(family):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 200, (2, 10), generator=gen)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "seq2seq":
        kw["decoder_input_ids"] = torch.randint(4, 200, (2, 5), generator=gen)
    return kw


def test_export_writes_peft_adapters_and_the_router(exported):
    run_dir, out = exported
    cfg, model, names = load_trained(run_dir)
    info = json.loads((out / "router.json").read_text())
    assert info["tasks"] == names and info["model"] == cfg.model
    assert info["lora_r"] == cfg.lora_r and info["lora_alpha"] == cfg.lora_alpha
    assert info["d_model"] == model.router.d_model and info["hidden"] == cfg.query_hidden
    expected_targets = sorted({n.rsplit(".", 1)[1] for n in model.blocks.layers})
    assert info["target_modules"] == expected_targets
    for t, task in enumerate(names):
        conf = json.loads((out / task / "adapter_config.json").read_text())
        assert conf["peft_type"] == "LORA" and conf["r"] == cfg.lora_r and conf["lora_alpha"] == cfg.lora_alpha
        assert conf["base_model_name_or_path"] == cfg.model and sorted(conf["target_modules"]) == expected_targets
        tensors = io.load_tensors(out / task / "adapter_model.safetensors")
        assert set(tensors) == {f"base_model.model.{n}.lora_{x}.weight" for n in model.blocks.layers for x in "AB"}
        for name in model.blocks.layers:
            assert torch.equal(tensors[f"base_model.model.{name}.lora_B.weight"], model.blocks.layers[name].lora_B[t])


def test_peft_adapter_logits_equal_sapt_routed_one_hot(exported):
    run_dir, out = exported
    cfg, model, names = load_trained(run_dir)
    peft_matches_sapt_one_hot(run_dir, out, inputs(model.family))


def test_router_tensors_reproduce_the_routing_weights(exported):
    run_dir, out = exported
    _, model, names = load_trained(run_dir)
    router = io.load_tensors(out / "router.safetensors")
    info = json.loads((out / "router.json").read_text())
    assert router["keys"].shape == (len(names), info["d_model"])
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 200, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    pooled = model.pooled_prompt(ids, mask)
    assert router["centre"].abs().sum() > 0  # set by training: the test below would miss a dropped centre otherwise
    h = (pooled - router["centre"]) @ router["query_mlp.0.weight"].t() @ router["query_mlp.1.weight"].t()
    query = torch.nn.functional.layer_norm(torch.nn.functional.silu(h), (info["d_model"],),
                                           router["query_mlp.3.weight"], router["query_mlp.3.bias"],
                                           eps=info["layer_norm_eps"])
    weights = torch.softmax(query @ router["keys"].t() / math.sqrt(info["d_model"]), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(weights, model.routing_weights(ids, mask), rtol=0, atol=1e-6)


def test_export_refuses_a_foreign_non_empty_directory(exported, tmp_path, capsys):
    run_dir, _ = exported
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def tree(root):
    """Every file under root with its bytes: to show that a folder was left exactly as it was."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01  # inside the tensor data: still a valid safetensors file
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_export_refuses_a_damaged_stage_and_leaves_out_untouched(exported, tmp_path, capsys, how):
    run_dir, good = exported
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    stage = sorted((run_copy / "stages").iterdir())[-1]
    damage(stage / "adapter.safetensors", how)
    previous = tmp_path / "previous"
    shutil.copytree(good, previous)
    before = tree(previous)
    for out in (tmp_path / "new", previous):
        assert main(["export", "--run", str(run_copy), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"stage {stage.name}: adapter.safetensors fails its checksum" in err[0]
        assert "sapt run" in err[0]
    assert not (tmp_path / "new").exists() and tree(previous) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous", "run"]  # no temporary folder left


def test_export_without_a_readable_manifest(exported, tmp_path, capsys):
    run_dir, good = exported
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    (run_copy / "manifest.json").write_text("{not json")
    assert main(["export", "--run", str(run_copy), "--out", str(tmp_path / "a")]) == 2
    assert "manifest.json cannot be read" in capsys.readouterr().err and not (tmp_path / "a").exists()
    (run_copy / "manifest.json").unlink()  # a run written before manifests existed: exported as before
    assert main(["export", "--run", str(run_copy), "--out", str(tmp_path / "a")]) == 0
    got, expected = tree(tmp_path / "a"), tree(good)
    assert got.keys() == expected.keys() and got["sentiment/adapter_model.safetensors"] == \
        expected["sentiment/adapter_model.safetensors"]  # router.json differs: it names the source run


def test_a_failed_export_leaves_out_as_it_was(exported, tmp_path, monkeypatch):
    run_dir, good = exported
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before = tree(out)
    calls = []

    def failing_save(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        io.atomic_write_bytes(path, b"x")

    monkeypatch.setattr(sapt.export.io, "save_tensors", failing_save)
    with pytest.raises(OSError, match="No space"):
        sapt.export.export_run(run_dir, out)
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_replaces_its_entries_and_keeps_other_files_with_force(exported, tmp_path, capsys):
    run_dir, good = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "router.json").write_text("{}")  # an older export: its entries are replaced
    assert main(["export", "--run", str(run_dir), "--out", str(out), "--force"]) == 0
    assert tree(out) == {**tree(good), "notes.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
