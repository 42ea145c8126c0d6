"""bench/quality.py: sapt-hard evaluated on a copy of sapt's training equals sapt-hard trained itself."""
import json
from pathlib import Path

import yaml
from conftest import bench_script
from sapt import io

ROOT = Path(__file__).resolve().parents[1]


def quality():
    return bench_script("quality")


SMALL = ["--protocol", "builtin", "--model", "tiny-llama", "--epochs", "1", "--max-train-per-task", "8",
         "--max-eval-per-task", "4"]


def test_sapt_hard_on_sapts_training_equals_sapt_hard_trained_alone(tmp_path, capsys):
    q = quality()
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    assert q.main([*SMALL, "--methods", "sapt,sapt-hard", "--out", str(shared)]) == 0
    table = capsys.readouterr().out
    assert q.main([*SMALL, "--methods", "sapt-hard", "--out", str(alone)]) == 0
    a, b = shared / "builtin" / "sapt-hard", alone / "builtin" / "sapt-hard"
    assert json.loads((a / "trained_as.json").read_text())["method"] == "sapt"
    assert not (b / "trained_as.json").exists()
    assert "(eval only)" in [line for line in table.splitlines() if line.startswith("sapt-hard")][0]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["matrix"] == mb["matrix"] and ma["routing_accuracy"] == mb["routing_accuracy"]
    for stage in sorted((b / "stages").iterdir()):
        for name in ("adapter.safetensors", "router.safetensors"):
            ta, tb = io.load_tensors(a / "stages" / stage.name / name), io.load_tensors(stage / name)
            assert all(ta[k].equal(tb[k]) for k in tb)
        assert (a / "stages" / stage.name / "predictions").is_dir()  # evaluated anew, as sapt-hard
        sa = json.loads((a / "stages" / stage.name / "stage.json").read_text())
        so = json.loads((shared / "builtin" / "sapt" / "stages" / stage.name / "stage.json").read_text())
        assert sa["method"] == "sapt-hard" and sa["seconds"] == so["seconds"]  # not trained again
    # sapt's own run is untouched by the copy
    assert json.loads((shared / "builtin" / "sapt" / "stages" / "00_topic" / "stage.json").read_text())["method"] == "sapt"


def test_the_protocols_are_the_config_files_and_the_cpu_long_mini_config_is_long_mini():
    q = quality()
    assert q.PROTOCOLS["long-mini"] == ROOT / "configs" / "cpu-long-mini.yaml"
    for name, path in q.PROTOCOLS.items():
        protocol = q.load_protocol(name)
        assert path.is_file() and "data_dir" not in protocol  # the data folder is the bench's --data-dir
        assert q.resolve({**protocol, "data_dir": "data"} if "benchmark" in protocol else protocol)


def test_seeds_give_one_run_directory_per_seed_and_a_paired_summary(tmp_path, capsys):
    q = quality()
    assert q.main([*SMALL, "--methods", "seq-lora,sapt", "--seeds", "1,2", "--out", str(tmp_path),
                   "--set", "tasks=[topic, sentiment]", "--set", "reflection_source=real"]) == 0
    out = capsys.readouterr().out
    aps = {}
    for seed in (1, 2):
        for method in ("seq-lora", "sapt"):
            run_dir = tmp_path / "builtin" / f"seed{seed}" / method
            m = json.loads((run_dir / "metrics.json").read_text())
            assert m["tasks"] == ["topic", "sentiment"]
            assert yaml_seed(run_dir) == seed
            aps[seed, method] = m["ap"]
    summary = out[out.index("seeds 1, 2"):]
    mean = (aps[1, "sapt"] + aps[2, "sapt"]) / 2
    assert f"{mean:.1f} +- " in [line for line in summary.splitlines() if line.startswith("sapt ")][0]
    paired = (aps[1, "sapt"] - aps[1, "seq-lora"] + aps[2, "sapt"] - aps[2, "seq-lora"]) / 2
    row = [line for line in summary.splitlines()[summary.splitlines().index("sapt minus each method, paired by seed"):]
           if line.startswith("seq-lora")][0]
    assert row.split()[1] == f"{paired:.1f}"


def yaml_seed(run_dir: Path) -> int:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]


def test_the_default_methods_are_those_made_for_the_protocols_block_kind():
    from sapt.methods import METHODS

    q = quality()
    lora, prompt = q.default_methods("lora"), q.default_methods("prompt")
    assert {"sapt", "seq-lora", "o-lora", "per-task"} <= set(lora)
    assert not {"seq-prompt", "progprompt"} & set(lora)  # they would bring prompt blocks at a LoRA lr
    assert {"sapt", "seq-prompt", "progprompt"} <= set(prompt) and "o-lora" not in prompt
    assert set(lora) | set(prompt) == set(METHODS)  # every method is benchmarked under one kind or the other


def test_re_tabling_a_finished_run_adds_no_wall_time(tmp_path, capsys):
    q = quality()
    args = [*SMALL, "--methods", "seq-lora", "--out", str(tmp_path), "--set", "tasks=[topic, sentiment]"]
    assert q.main(args) == 0
    time_file = tmp_path / "builtin" / "seq-lora" / "bench_time.json"
    first = json.loads(time_file.read_text())["seconds"]
    assert first > 0
    assert q.main(args) == 0  # finished: the model loads, nothing is trained or scored
    assert json.loads(time_file.read_text())["seconds"] == first


def test_a_variant_is_its_own_row_and_routed_rows_carry_the_routing_loss(tmp_path, capsys):
    q = quality()
    assert q.parse_variant("ltr: router_schedule=learn-then-route, router_fit_steps=50") == (
        "ltr", {"method": "sapt", "router_schedule": "learn-then-route", "router_fit_steps": 50})
    assert q.main([*SMALL, "--methods", "seq-lora", "--variant", "ltr:router_schedule=learn-then-route",
                   "--out", str(tmp_path), "--set", "tasks=[topic, sentiment]", "--set", "reflection_source=real",
                   "--json"]) == 0
    out = capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads(out[out.index("["):])}
    assert set(rows) == {"seq-lora", "ltr"}
    ltr = yaml.safe_load((tmp_path / "builtin" / "ltr" / "config.yaml").read_text())
    assert ltr["method"] == "sapt" and ltr["router_schedule"] == "learn-then-route"
    metrics = json.loads((tmp_path / "builtin" / "ltr" / "metrics.json").read_text())
    assert rows["ltr"]["routing_loss"] == metrics["oracle_routed"]["routing_loss"]
    assert rows["ltr"]["new_routing_min"] == min(metrics["routing_accuracy"][j][j] for j in range(2))
    assert rows["seq-lora"]["routing_loss"] is None  # no router, no routing loss
    try:
        q.main([*SMALL, "--variant", "no-colon"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a malformed --variant was accepted")
