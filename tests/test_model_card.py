"""`sapt export`'s model card (OUT/README.md): Hub front matter, the tasks in order, the numbers of
metrics.json, and loading code that works."""
import json
import re
import shutil

import pytest
import yaml

import sapt.export
from sapt.cli import main
from sapt.config import resolve
from sapt.export import card_sections
from sapt.model_card import base_license, base_model_id, model_card

TINY = {"model": "tiny-llama", "tasks": ["sentiment", "topic"], "epochs": 1, "max_train_per_task": 8,
        "max_eval_per_task": 4, "max_new_tokens": 3, "reflection_source": "real"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sapt.api import run

    root = tmp_path_factory.mktemp("card")
    run(**TINY, output=str(root / "run"))
    assert main(["export", "--run", str(root / "run"), "--out", str(root / "out")]) == 0
    return root / "run", root / "out"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]


def test_the_card_has_hub_front_matter_tasks_in_order_and_the_run_s_numbers(exported):
    run_dir, out = exported
    card = (out / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    front = front_matter(card)
    assert front["library_name"] == "peft" and front["tags"] == ["continual-learning", "sapt", "lora"]
    assert "base_model" not in front and "license" not in front  # a random tiny model: no hub id, no license
    tasks = table_rows(section(card, "Tasks, in training order"))[1:]
    assert [row[1] for row in tasks] == ["`sentiment`", "`topic`"] == [f"`{t}`" for t in metrics["tasks"]]
    assert [row[2] for row in tasks] == ["`sentiment/`", "`topic/`"]
    results = section(card, "Results")
    matrix = table_rows(results)[1:3]
    for i, row in enumerate(metrics["matrix"]):
        assert matrix[i][1:] == ["-" if x is None else f"{x:.1f}" for x in row]
    values = {row[0].split(" (")[0]: row[1] for row in table_rows(results) if row[0].split(" (")[0] in
              ("AP", "F.Ra", "BWT", "FWT")}
    assert values["AP"] == f"{metrics['ap']:.1f}" and values["BWT"] == f"{metrics['bwt']:.1f}"
    assert values["F.Ra"] == f"{metrics['fra']:.1f}" and values["FWT"].startswith("n/a")
    assert "Routing accuracy" in results
    assert table_rows(results)[-1] == [f"{x:.1f}" for x in metrics["routing_accuracy"][-1]]
    settings = dict(table_rows(section(card, "Method and settings"))[1:])
    assert settings["method"] == "`sapt`" and settings["LoRA rank r / alpha / dropout"] == "8 / 32 / 0"
    assert "attentive reflection" in settings and settings["seed"] == "42"


def test_the_card_s_router_code_gives_sapt_s_routing_weights(exported):
    import torch

    from sapt.train import load_trained

    run_dir, out = exported
    card = (out / "README.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", card, flags=re.S) if "def routing_weights" in b]
    namespace = {"ADAPTERS": str(out)}
    exec(code, namespace)
    _, model, _ = load_trained(run_dir)
    ids = torch.randint(4, 200, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        expected = model.routing_weights(ids, mask)
        got = namespace["routing_weights"](model.base, ids, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_run_without_metrics_gets_a_card_that_says_so(exported, tmp_path):
    run_dir, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "metrics.json").unlink()
    sapt.export.export_run(copy, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "No scores: the run has no metrics.json" in section(card, "Results")
    assert [r[1] for r in table_rows(section(card, "Tasks, in training order"))[1:]] == ["`sentiment`", "`topic`"]
    (copy / "metrics.json").write_text("{not json")
    sapt.export.export_run(copy, tmp_path / "out")  # replaces the previous export
    assert "cannot be read" in section((tmp_path / "out" / "README.md").read_text(encoding="utf-8"), "Results")


def card_for(model, tmp_path, **settings):
    cfg = resolve({"model": model, "output": str(tmp_path / "r"), **settings})
    info = {"tasks": ["a", "b"], "model_family": "causal", "target_modules": ["q_proj", "v_proj"],
            "source_run": str(tmp_path / "r")}
    return model_card(card_sections(cfg), info, None, "no metrics")


def test_front_matter_names_the_base_and_its_license_when_known(tmp_path, monkeypatch):
    front = front_matter(card_for("smollm2", tmp_path))
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"

    local = tmp_path / "my-model"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# my model\n")
    front = front_matter(card_for(str(local), tmp_path))
    assert "base_model" not in front and front["license"] == "mit"  # a local path is no hub id

    import huggingface_hub

    cached = tmp_path / "cached-README.md"
    cached.write_text("---\nlicense: llama2\n---\n")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: str(cached) if repo == "meta-llama/Llama-2-7b-hf" else None)
    front = front_matter(card_for("meta-llama/Llama-2-7b-hf", tmp_path))
    assert front["base_model"] == "meta-llama/Llama-2-7b-hf" and front["license"] == "llama2"
    front = front_matter(card_for("google-t5/t5-large", tmp_path, method="seq-lora"))
    assert front["base_model"] == "google-t5/t5-large" and "license" not in front  # not in the cache: left out
    assert base_model_id("tiny-t5") is None and base_license("tiny-t5") is None


def test_the_card_explains_a_shared_block_method(tmp_path):
    card = card_for("tiny-llama", tmp_path, method="seq-lora")
    assert "one block shared by every task" in card and "`b/` is the final model" in card
    assert "def routing_weights" not in card  # no router to speak of


def test_the_readme_cites_the_current_deepspeed_refusal():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "sapt" / "distributed.py").read_text(encoding="utf-8"))
    [message] = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and "asks for DeepSpeed" in n.value]
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert f'"{message}"' in readme


def test_the_card_records_gradient_clipping_and_the_release_template(tmp_path):
    """The settings table says whether and where gradients were clipped (config key max_grad_norm), and the
    prompt the adapters were trained on is the run's template, the release's when the run used it."""
    def settings(card):
        return {row[0]: row[1] for row in table_rows(section(card, "Method and settings"))[1:]}

    assert settings(card_for("tiny-llama", tmp_path))["gradient clipping (max total norm)"] == "0 (off)"
    card = card_for("tiny-llama", tmp_path, max_grad_norm=1.0, data_dir=str(tmp_path), benchmark="Long_Sequence",
                    template="release")
    assert settings(card)["gradient clipping (max total norm)"] == "1"
    assert "public release's Long_Sequence template" in card and "{definition}\n{input}\nOutput: {answer}" in card
    assert "{definition}\n\nInput: {input}" in card_for("tiny-llama", tmp_path)  # the family's otherwise


# ---- task and run names that are Markdown, HTML or Python syntax (issue 27) ----------------------------------
NAMES = {  # a name: what must not appear in the card's title unescaped
    "html": ("<script>alert(1)</script>", "<script>"),
    "a link": ("[click](http://x.example)", "[click](http"),
    "a pipe": ("yes|no", None),
    "a backtick": ("back`tick", None),
    "a newline": ("two\nlines", "two\nlines"),
    "quotes": ("it's \"quoted\"", None),
}


@pytest.mark.parametrize("case", NAMES)
def test_a_task_name_cannot_break_the_card(case, tmp_path):
    """Task names went unescaped into the title (HTML, links), `|` broke the task table, and a quote or a
    newline broke the Python snippets."""
    import ast

    name, raw = NAMES[case]
    tasks = [name, "plain"]
    cfg = resolve({**TINY, "output": str(tmp_path / "run")})
    info = {"tasks": tasks, "model_family": "causal", "source_run": str(tmp_path / f"run {name}"),
            "target_modules": ["q_proj", "v_proj"]}
    metrics = {"tasks": tasks, "matrix": [[50.0, None], [40.0, 60.0]], "routing_accuracy": [[100.0, None], [90.0, 80.0]],
               "ap": 50.0, "fra": 10.0, "bwt": -10.0, "fwt": None, "stages_done": 2, "metric": {name: "rougeL"}}
    card = model_card(card_sections(cfg), info, metrics)
    title = next(line for line in card.splitlines() if line.startswith("# "))
    # the Markdown before the first section (the front matter is YAML data, its strings quoted by yaml)
    assert raw is None or raw not in card.split("\n---\n", 1)[1].split("\n## ", 1)[0]
    assert front_matter(card)["model-index"][0]["results"][0]["task"]["name"] == name  # YAML keeps it as it is
    assert "plain" in title and title.count("→") == 1
    rows = table_rows(section(card, "Tasks, in training order"))
    assert all(len(re.split(r"(?<!\\)\|", line.strip().strip("|"))) == 5
               for line in section(card, "Tasks, in training order").splitlines() if line.startswith("|"))
    assert len(rows) == 3 and rows[2][1] == "`plain`"
    for line in section(card, "Results").splitlines():  # every row of each table has its header's cells
        if line.startswith("| after training") or line.startswith("| 1.") or line.startswith("| 2."):
            assert len(re.split(r"(?<!\\)\|", line.strip().strip("|"))) == 3, line
    for code in re.findall(r"```python\n(.*?)```", card, flags=re.S):
        ast.parse(code)
    assert front_matter(card)["library_name"] == "peft"


# ---- issue 26: the card names the data and carries a model-index of the scores ---------------------------
def test_the_card_has_a_model_index_of_the_scores_and_the_data(exported):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run_dir, out = exported
    card = (out / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    index = front_matter(card)["model-index"]
    name, results = model_index_to_eval_results(index)  # the Hub's own reader accepts it
    assert name == run_dir.name
    per_task = [r for r in results if r.task_name != "continual learning"]
    assert [r.task_name for r in per_task] == [r.dataset_name for r in per_task] == metrics["tasks"]
    assert [r.metric_value for r in per_task] == [round(x, 2) for x in metrics["matrix"][-1]]
    assert {(r.task_type, r.dataset_type, r.metric_type, r.dataset_split) for r in per_task} == \
        {("text-generation", "sapt-builtin", "exact_match", "test")}
    sequence = {r.metric_type: r.metric_value for r in results if r.task_name == "continual learning"}
    assert sequence == {k: round(metrics[k], 2) for k in ("ap", "fra", "bwt")}  # FWT: not defined here
    assert ModelCard(card).data.eval_results  # the whole card parses as a Hub model card
    tasks = table_rows(section(card, "Tasks, in training order"))
    assert tasks[0][-1] == "data" and [row[-1] for row in tasks[1:]] == ["built-in generated suite"] * 2
    definitions = json.loads((out / "tasks.json").read_text())["definitions"]
    listed = section(card, "Task definitions")
    assert all(text and text in listed for text in definitions.values())
    how = section(card, "How to load it")
    assert 'sapt.load("path/to/this/folder")' in how and "trained.definitions[" in how
    assert "needs the run directory" not in card


def test_the_model_index_of_a_benchmark_run_names_its_benchmark(tmp_path):
    from huggingface_hub.repocard_data import model_index_to_eval_results

    cfg = resolve({**TINY, "output": str(tmp_path / "r"), "data_dir": str(tmp_path), "benchmark": "SuperNI",
                   "tasks": ["task1", "task2"]})
    info = {"tasks": ["task1", "task2"], "model_family": "seq2seq", "target_modules": ["q", "v"],
            "source_run": str(tmp_path / "r")}
    metrics = {"tasks": ["task1", "task2"], "matrix": [[40.0, None], [35.5, 61.25]], "ap": 48.375, "fra": 4.5,
               "bwt": -4.5, "fwt": None, "eval_split": "test", "metric": {"task1": "rougeL", "task2": "rougeL"},
               "stages_done": 2}
    front = front_matter(model_card(card_sections(cfg), info, metrics))
    _, results = model_index_to_eval_results(front["model-index"])
    assert [(r.task_type, r.dataset_type, r.dataset_config, r.metric_type, r.metric_value) for r in results[:2]] == [
        ("text2text-generation", "CL_Benchmark", "SuperNI", "rouge", 35.5),
        ("text2text-generation", "CL_Benchmark", "SuperNI", "rouge", 61.25)]
    assert "model-index" not in front_matter(model_card(card_sections(cfg), info, None, "no metrics"))


def test_a_one_task_run_whose_task_is_named_all_is_not_described_as_mtl(tmp_path):
    """The card read "one stage over every task" from a stage named "all", mtl's; a run's own task may have
    that name (issue 27)."""
    cfg = resolve({**TINY, "output": str(tmp_path / "run")})
    info = {"tasks": ["all"], "model_family": "causal", "source_run": str(tmp_path / "run"),
            "target_modules": ["q_proj", "v_proj"]}
    metrics = {"tasks": ["all"], "matrix": [[50.0]], "routing_accuracy": [[100.0]], "ap": 50.0, "fra": None,
               "bwt": None, "fwt": None, "stages_done": 1, "metric": {"all": "em"}}
    card = model_card(card_sections(cfg), info, metrics)
    assert "one stage over all tasks" not in card and "all tasks" not in section(card, "Results")
    assert table_rows(section(card, "Tasks, in training order"))[1][1] == "`all`"
