"""An export is a model (issue 26, item 2): `sapt.load(EXPORT)` and `sapt predict --run EXPORT` answer
exactly as the run does, from the export alone (moved, the run deleted, or fetched as a Hub repo), and
`sapt export --push-to-hub` sends the export folder to the Hub (checked here without any network)."""
import json
import shutil
import warnings

import pytest
import torch
import yaml

import sapt
import sapt.export
from sapt.api import MissingDefinitionWarning
from sapt.cli import main
from sapt.config import ConfigError
from sapt.modules.blocks.prompt import SAPT_PROMPT
from sapt.export import stage_tensors
from sapt.rundir import EXPORT_MARKER

TINY = {"model": "tiny-llama", "tasks": ["topic", "sentiment"], "epochs": 1, "max_train_per_task": 8,
        "max_eval_per_task": 4, "max_new_tokens": 3, "reflection_source": "real"}
TEXTS = ["Review: the kettle is flimsy and noisy. I want my money back.",
         "Grandpa still remembers the new telescope.", "Review: the headset is well made and excellent."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("as-model")
    sapt.run(**TINY, output=str(root / "run"))
    assert main(["export", "--run", str(root / "run"), "--out", str(root / "export")]) == 0
    return root / "run", root / "export"


def answers(trained, texts=TEXTS, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingDefinitionWarning)
        return [(a.input, a.text, a.routing) for a in trained.predict(texts, **kw)]


def same_model(a, b):
    """Every parameter and buffer of the two loaded models is equal, bit for bit."""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_an_export_answers_exactly_as_its_run(exported):
    run_dir, out = exported
    run, exp = sapt.load(run_dir), sapt.load(out)
    assert exp.from_export and not run.from_export
    assert exp.tasks == run.tasks == TINY["tasks"]
    assert exp.definitions == run.definitions and all(run.definitions.values())
    assert exp.metrics == run.metrics and exp.config == run.config
    same_model(run, exp)
    for definition in ("", *run.definitions.values()):
        got, want = answers(exp, definition=definition), answers(run, definition=definition)
        assert got == want  # answer for answer, routing weight for routing weight (floats, exactly)
        assert exp.routing(TEXTS, definition=definition) == run.routing(TEXTS, definition=definition)
    fixed = {"sentiment": 1.0}
    assert [(a.text, a.routing) for a in exp.generate(TEXTS, routing=fixed)] == \
        [(a.text, a.routing) for a in run.generate(TEXTS, routing=fixed)]


def test_the_missing_definition_warning_points_into_the_export(exported):
    _, out = exported
    with pytest.warns(MissingDefinitionWarning, match="README.md"):
        sapt.load(out).predict(TEXTS[:1])


def test_sapt_predict_prints_the_same_for_the_export(exported, capsys):
    run_dir, out = exported
    definition = sapt.load(out).definitions["topic"]
    printed = {}
    for source in (run_dir, out):
        for extra in ([], ["--json"], ["--definition", definition]):
            assert main(["predict", "--run", str(source), *extra, *TEXTS]) == 0
            captured = capsys.readouterr()
            printed.setdefault(tuple(extra), []).append(captured.out)
            assert captured.out.strip()
    for extra, (from_run, from_export) in printed.items():
        assert from_export == from_run, extra
    rows = [json.loads(line) for line in printed[("--json",)][1].splitlines()]
    assert [r["input"] for r in rows] == TEXTS and all(set(r["routing"]) == set(TINY["tasks"]) for r in rows)


def test_a_moved_copy_of_the_export_loads_without_its_run(exported, tmp_path):
    run_dir, _ = exported
    want = answers(sapt.load(run_dir))
    run_copy = tmp_path / "run-copy"
    shutil.copytree(run_dir, run_copy)
    assert main(["export", "--run", str(run_copy), "--out", str(tmp_path / "export")]) == 0
    shutil.rmtree(run_copy)  # the run is gone
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "export"), moved)
    assert not json.loads((moved / "router.json").read_text())["source_run"].startswith(str(moved))
    trained = sapt.load(moved)
    assert answers(trained) == want and trained.run_dir == moved.absolute()
    assert main(["predict", "--run", str(moved), "--json", TEXTS[0]]) == 0


def test_the_export_holds_config_definitions_and_a_marker(exported):
    run_dir, out = exported
    assert (out / "config.yaml").read_bytes() == (run_dir / "config.yaml").read_bytes()
    assert json.loads((out / "tasks.json").read_text()) == json.loads((run_dir / "tasks.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == json.loads((run_dir / "metrics.json").read_text())
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["format"] == "sapt-export/1" and marker["tasks"] == TINY["tasks"]
    assert {"config.yaml", "tasks.json", "router.safetensors", "topic/adapter_model.safetensors",
            "sentiment/adapter_model.safetensors"} <= set(marker["sha256"])
    # the run's stage tensors come back from the export exactly (the router: the final one, stage by stage)
    from_run, from_export = stage_tensors(run_dir), stage_tensors(out)
    assert [t for t, _, _ in from_export] == [t for t, _, _ in from_run]
    for (_, block_r, router_r), (_, block_e, router_e) in zip(from_run, from_export):
        assert block_e.keys() == block_r.keys() and all(torch.equal(block_e[k], block_r[k]) for k in block_r)
        assert torch.equal(router_e["key"], router_r["key"])
    last = from_run[-1][2]
    for _, _, router_e in from_export:
        assert all(torch.equal(router_e[k], last[k]) for k in last if k != "key")


def test_a_damaged_or_old_export_is_refused_in_one_line(exported, tmp_path, capsys):
    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / "topic" / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="topic/adapter_model.safetensors does not match its sha256"):
        sapt.load(copy)
    assert main(["predict", "--run", str(copy), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err
    (copy / EXPORT_MARKER).unlink()  # an export of an older sapt: no marker, no config.yaml
    (copy / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="older sapt"):
        sapt.load(copy)


def test_a_run_will_not_write_into_an_export(exported):
    from sapt.rundir import check_run_dir
    from sapt.train import load_run_config

    _, out = exported
    cfg = load_run_config(out)  # the export's config.yaml is the run's: resuming "it" would look plausible
    cfg.output = str(out)
    with pytest.raises(ConfigError, match="holds a sapt export, not a run"):
        check_run_dir(cfg)


# ---- the base model id ------------------------------------------------------------------------------
@pytest.mark.parametrize("model, expected", [("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                                             ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
                                             ("LOCAL", "LOCAL")])
def test_adapter_configs_name_the_real_base_model(exported, tmp_path, model, expected):
    """The run's tensors under another config.yaml `model` (the export reads no base weights for LoRA):
    what PEFT and the Hub are told the base is."""
    peft = pytest.importorskip("peft")
    run_dir, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    local = model == "LOCAL"
    if local:
        model = expected = str(tmp_path / "my-llama")
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**saved, "model": model}, sort_keys=False))
    out = tmp_path / "export"
    sapt.export.export_run(copy, out)
    for task in TINY["tasks"]:
        conf = json.loads((out / task / "adapter_config.json").read_text())
        assert conf["base_model_name_or_path"] == expected
        assert peft.PeftConfig.from_pretrained(str(out / task)).base_model_name_or_path == expected
    assert json.loads((out / "router.json").read_text())["base_model"] == expected
    front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    if local:
        assert "base_model" not in front  # a local folder is no hub id
    else:
        assert front["base_model"] == expected


# ---- the Hub: sapt.load("USER/REPO") and --push-to-hub, without a network -----------------------------------
def test_load_of_a_hub_id_downloads_the_export(exported, monkeypatch, tmp_path):
    import huggingface_hub

    run_dir, out = exported
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw.get("repo_type", "model")))
        return str(out)

    monkeypatch.chdir(tmp_path)  # "someone/sapt-demo" is no local folder here
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    trained = sapt.load("someone/sapt-demo")
    assert calls == [("someone/sapt-demo", "model")]
    assert answers(trained) == answers(sapt.load(run_dir))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(run_dir))
    with pytest.raises(ConfigError, match="holds no sapt export"):
        sapt.load("someone/a-plain-repo")

    def offline(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConfigError, match="cannot be fetched as a Hugging Face Hub repo") as e:
        sapt.load("someone/missing")
    assert "\n" not in str(e.value)
    (tmp_path / "someone" / "local").mkdir(parents=True)  # a local folder of that form wins over the Hub
    with pytest.raises(ConfigError, match="not a sapt run directory"):
        sapt.load("someone/local")


class RecordingHfApi:
    """Stands for huggingface_hub.HfApi: records what would be sent (nothing is)."""
    calls: list = []
    fail: BaseException | None = None

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        if RecordingHfApi.fail is not None:
            raise RecordingHfApi.fail
        RecordingHfApi.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        from pathlib import Path

        files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        marker = json.loads((Path(folder_path) / EXPORT_MARKER).read_text())
        RecordingHfApi.calls.append(("upload_folder", repo_id, files, marker, kw))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    RecordingHfApi.calls, RecordingHfApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    return RecordingHfApi


def test_push_to_hub_sends_the_export_folder(exported, hub, tmp_path, capsys):
    run_dir, out = exported
    assert main(["export", "--run", str(run_dir), "--push-to-hub", "someone/sapt-demo", "--private"]) == 0
    (create, repo, kw), (upload, repo2, files, marker, up_kw) = hub.calls
    assert (create, repo, upload, repo2) == ("create_repo", "someone/sapt-demo", "upload_folder", "someone/sapt-demo")
    assert kw["private"] is True and kw["exist_ok"] is True and kw.get("repo_type", "model") == "model"
    assert up_kw.get("repo_type", "model") == "model"
    expected = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == expected  # the whole export, as `--out` writes it
    assert {EXPORT_MARKER, "config.yaml", "tasks.json", "README.md", "router.json", "router.safetensors",
            "topic/adapter_model.safetensors", "topic/adapter_config.json", "sentiment/adapter_config.json"} <= set(files)
    assert marker["tasks"] == TINY["tasks"]
    stdout = capsys.readouterr().out
    assert "https://huggingface.co/someone/sapt-demo" in stdout and "sapt.load('someone/sapt-demo')" in stdout

    hub.calls.clear()  # with --out too: the folder written is the one sent
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "o"), "--push-to-hub", "someone/x"]) == 0
    assert hub.calls[0][2] == {"repo_type": "model", "private": None, "exist_ok": True}
    assert hub.calls[1][2] == sorted(p.relative_to(tmp_path / "o").as_posix()
                                     for p in (tmp_path / "o").rglob("*") if p.is_file())


@pytest.mark.parametrize("failure, needle", [
    ("token", "hf auth login"),
    (OSError("Connection refused"), "Connection refused"),
])
def test_a_push_without_token_or_network_is_one_line_and_exit_2(exported, hub, capsys, failure, needle):
    import huggingface_hub

    run_dir, _ = exported
    hub.fail = huggingface_hub.errors.LocalTokenNotFoundError("Token is required (`token=True`), but no token found.") \
        if failure == "token" else failure
    assert main(["export", "--run", str(run_dir), "--push-to-hub", "someone/sapt-demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sapt: error: --push-to-hub someone/sapt-demo: ") and needle in err


def test_push_refuses_a_bad_repo_id_before_exporting(exported, hub, tmp_path, capsys):
    run_dir, _ = exported
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "o"), "--push-to-hub", "bad repo!"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err and hub.calls == []
    assert not (tmp_path / "o").exists()
    assert main(["export", "--run", str(run_dir)]) == 2
    assert "--out DIR, --push-to-hub REPO" in capsys.readouterr().err


# ---- other block layouts: fused q/k/v projections, reparameterised soft prompts ----------------------------
@pytest.mark.parametrize("settings", [{"model": "tiny-phi3"}, {"pet": "prompt", "prompt_len": 4, "prompt_mlp_hidden": 8}],
                         ids=["fused-qkv", "prompt-mlp"])
def test_other_block_layouts_load_from_the_export_as_from_the_run(settings, tmp_path):
    sapt.run(**{**TINY, **settings}, output=str(tmp_path / "run"))
    sapt.export.export_run(tmp_path / "run", tmp_path / "export")
    if "model" in settings:
        assert json.loads((tmp_path / "export" / "router.json").read_text())["fused_qkv_modules"]
    else:
        assert (tmp_path / "export" / "topic" / SAPT_PROMPT).is_file()
    run, exp = sapt.load(tmp_path / "run"), sapt.load(tmp_path / "export")
    assert answers(exp) == answers(run)
    same_model(run, exp)  # fused: the rank-2r LoRA splits back into the q and v blocks; prompts: P and its MLP
