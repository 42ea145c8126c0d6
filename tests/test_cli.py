"""The command line: config files and overrides, report, predict, eval, and one-line errors."""
import json

import pytest

from sapt.cli import main
from sapt.config import BUILTIN_PRESET, ConfigError, RunConfig, resolve


def test_config_resolution_defaults_preset_file_then_command_line(tmp_path):
    assert resolve({}).lr == BUILTIN_PRESET["lr"]  # no data: the built-in suite's preset
    assert resolve({}).backbone_dtype == "bfloat16"  # the demo's real model in bf16 ...
    assert resolve({"model": "tiny-llama"}).backbone_dtype == "float32"  # ... the random test models not
    assert resolve({"backbone_dtype": "float32"}).backbone_dtype == "float32"
    on_data = resolve({"data_dir": "x", "benchmark": "Long_Sequence"})
    assert on_data.lr == RunConfig.lr and on_data.lora_r == RunConfig.lora_r  # the paper's defaults on real data
    f = tmp_path / "run.yaml"
    f.write_text("lr: 1.0e-4\nepochs: 7\ntasks: [topic, addition]\nlora-r: 2\n")
    cfg = resolve({"epochs": 2}, str(f))
    assert (cfg.lr, cfg.epochs, cfg.tasks, cfg.lora_r) == (1e-4, 2, ["topic", "addition"], 2)
    f.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve({}, str(f))
    with pytest.raises(ConfigError, match="epochs"):
        resolve({"epochs": 0})


@pytest.mark.parametrize("argv, needle", [
    (["run", "--method", "nope"], "unknown method"),
    (["run", "--data-dir", "/nonexistent", "--benchmark", "Long_Sequence"], "/nonexistent"),
    (["run", "--tasks", "topic,nope"], "nope"),
    (["run", "--benchmark", "SuperNI"], "--data-dir"),
    (["report", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["predict", "--run", "/nonexistent/run", "hello"], "/nonexistent/run"),
])
def test_errors_are_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    code = main(argv + (["--output", str(tmp_path / "out")] if argv[0] == "run" else []))
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert needle in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["run", "--model", "tiny-llama", "--output", str(out), "--tasks", "topic,sentiment",
                 "--max-train-per-task", "8", "--max-eval-per-task", "4", "--epochs", "1", "--max-new-tokens", "3",
                 "--reflection-source", "real"])
    assert code == 0
    return out


def test_report_prints_the_matrix_of_metrics_json(tiny_run, capsys):
    assert main(["report", "--run", str(tiny_run), "--no-plots"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert f"AP {m['ap']:.1f}" in out and "routing accuracy" in out
    assert main(["report", "--run", str(tiny_run), "--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["matrix"] == m["matrix"]


def test_predict_answers_with_a_routing_distribution_over_the_tasks(tiny_run, capsys):
    assert main(["predict", "--run", str(tiny_run), "--json", "a first input", "another one"]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == ["a first input", "another one"]
    for r in rows:
        assert set(r["routing"]) == {"topic", "sentiment"}
        assert sum(r["routing"].values()) == pytest.approx(1.0, abs=1e-3)


def test_eval_rescoring_the_final_model_matches_the_last_row(tiny_run, capsys):
    assert main(["eval", "--run", str(tiny_run)]) == 0
    scores = json.loads((tiny_run / "eval" / "scores.json").read_text())["scores"]
    last = json.loads((tiny_run / "metrics.json").read_text())["matrix"][-1]
    assert [scores[t]["score"] for t in ("topic", "sentiment")] == pytest.approx(last)


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_example_configs_resolve(path):
    cfg = resolve({}, str(path))
    assert cfg.data_dir and cfg.benchmark in ("SuperNI", "Long_Sequence")


PAPER_CONFIGS = {"t5-large-superni.yaml": "task1572_samsum_summary", "t5-large-long-sequence.yaml": "yelp",
                 "llama2-long-sequence.yaml": "mnli"}


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_the_paper_configs_are_the_releases_setting(name):
    """The release's router, clipping, template, label cut, decoding and replay counts; each config's first task
    is the release script's (the T5 Long script runs O-LoRA's order 6, yelp first); the LLaMA lengths."""
    from pathlib import Path

    from sapt.data import TASK_ORDERS
    from sapt.reflection import replay_count

    cfg = resolve({}, str(Path(__file__).parents[1] / "configs" / name))
    assert (cfg.router_warmup, cfg.router_centre, cfg.router_key_init) == (0, False, "random")
    assert (cfg.max_grad_norm, cfg.template, cfg.max_target_length, cfg.max_new_tokens) == (1.0, "release", 50, 50)
    assert not cfg.stop_at_newline and cfg.mixed_precision == "bf16" and cfg.lr in (3e-4, 5e-5)
    assert cfg.batch_size * cfg.grad_accum == 32
    assert replay_count(14000, cfg.pseudo_ratio, cfg.pseudo_max) == 280  # dbpedia: 2%, no cap of 50
    assert TASK_ORDERS[cfg.benchmark][cfg.order][0] == PAPER_CONFIGS[name]
    if name.startswith("llama2"):
        assert (cfg.epochs, cfg.max_source_length, cfg.kl_ratio) == (20, 1024, 2.0)
    else:
        assert (cfg.prompt_len, cfg.prompt_mlp_hidden) == (10, 800)


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs" / "accelerate").glob("*.yaml")))
def test_accelerate_example_configs_are_data_parallel(path):
    import yaml

    conf = yaml.safe_load(path.read_text())
    # data parallel, or FSDP2 (sapt shards with fully_shard itself); DeepSpeed is refused (sapt/distributed.py)
    assert conf["distributed_type"] in ("MULTI_GPU", "FSDP")
    if conf["distributed_type"] == "FSDP":
        assert conf["fsdp_config"]["fsdp_version"] == 2
    assert conf["num_processes"] >= 2 and conf["mixed_precision"] == "no"  # precision is sapt's option
