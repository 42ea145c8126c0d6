"""Export a run's task blocks as standard PEFT LoRA adapters, and its router as plain tensors.

    OUT/<task>/adapter_config.json        a PEFT LoraConfig (r, lora_alpha, target_modules, base model)
    OUT/<task>/adapter_model.safetensors  block t of every adapted projection, under PEFT's key names
    OUT/router.safetensors                "keys" [T, d] (one per task, in training order), "centre" [d]
                                          and the query MLP ("query_mlp.0.weight" [hidden, d],
                                          "query_mlp.1.weight" [d, hidden], "query_mlp.3.weight"/".bias"
                                          [d]: the LayerNorm)
    OUT/router.json                       tasks, d_model, hidden, model, LoRA r/alpha, target modules,
                                          how the routing is computed, and each task's definition
    OUT/README.md                         a model card: Hub front matter (library_name peft, base_model,
                                          tags, the base's license when known, a model-index of the
                                          scores), the tasks in order with their data and definitions, the
                                          method and its settings (config.yaml), the score matrix and
                                          AP/F.Ra/BWT/FWT (metrics.json) and how to load it (`model_card`)
    OUT/config.yaml, OUT/tasks.json       the run's config and task definitions, as the run holds them
    OUT/metrics.json                      the run's scores (when it has evaluated a stage)
    OUT/<task>/sapt_prompt.safetensors    a reparameterised soft prompt's SAPT block, P and its MLP (PEFT
                                          ignores it; the adapter holds P + MLP(P))
    OUT/sapt_export.json                  marks the folder as an export (format, sapt version, tasks) with
                                          the sha256 of every file the loader reads

**An export is a model.** `sapt.load(OUT)` and `sapt predict --run OUT` answer from it exactly as from the
run (the same tensors, the same config): `read_export` turns the adapters and the router back into the
run's stage tensors (the inverse of what `_write_export` does; sapt.rundir.source), and
`sapt.train.load_trained` builds the model from them as it does from a run's stage files. Nothing in the
export points back to the run directory, so a copy of it anywhere, or a Hub repo of it
(`push_to_hub`, `sapt export --push-to-hub REPO`; `sapt.load("USER/REPO")` downloads it with
`huggingface_hub.snapshot_download`), loads on its own. The adapter configs name the real base model:
the embedded `smollm2` is HuggingFaceTB/SmolLM2-135M-Instruct (the model its GGUF file was quantised from),
a hub id or path stays as given, a random `tiny-*` model keeps its sapt name (it has no other).

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

The export reads the stage files of the run directory only (no base model weights are loaded): the blocks from
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
from typing import Any, Callable

import torch
from safetensors import SafetensorError

from sapt import io
from sapt.config import ConfigError
from sapt.manifest import sha256_file
from sapt.models import RESERVED
from sapt.modules.blocks.lora.fused import FUSED_QKV, SliceLayout, qkv_layouts
from sapt.model_card import base_model_id, model_card, run_metrics
from sapt.rundir import CONFIG, EXPORT_MARKER, METRICS, TASKS, load_run_config, task_definitions, trained_stages

EXPORT_FORMAT = "sapt-export/1"
# OUT/<task>/ of a reparameterised soft prompt (`prompt_mlp_hidden`): its SAPT block, P and the residual MLP
SAPT_PROMPT = "sapt_prompt.safetensors"

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


def peft_base_model(model: str) -> str:
    """adapter_config.json's `base_model_name_or_path`: the hub id of the embedded smollm2
    (HuggingFaceTB/SmolLM2-135M-Instruct, which its GGUF file was quantised from), so that PEFT's
    `AutoPeftModelFor*` finds a base model; a hub id or a local path as the run was given it; a random
    tiny-* model (no hub id) its sapt name."""
    return base_model_id(model) if model == "smollm2" else model  # base_model_id: sapt.model_card's


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
        "base_model_name_or_path": peft_base_model(cfg.model),
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
    if out.is_dir() and any(out.iterdir()) and not ((out / EXPORT_MARKER).exists() or (out / "router.json").exists()) \
            and not force:
        raise ConfigError(f"{out} is not empty and holds no sapt export; use another --out (or --force)")


# The files an export writes in OUT/<task>/: a re-export replaces them, and removes one it no longer writes
# (a SAPT_PROMPT left by an export of another run would be loaded in place of the new adapter's prompt).
TASK_FOLDER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors", SAPT_PROMPT})


def _install(work: Path, out: Path) -> None:
    """Move the finished export to `out` by renames. An absent or empty `out` is the folder itself; into a
    non-empty one (a previous export, or any folder with --force) each exported entry is moved, replacing
    only the entries of the same name (router.json, then EXPORT_MARKER last: they mark the folder as an
    export). A task folder OUT/<task>/ that exists is not replaced whole: only the files the export writes
    there (TASK_FOLDER_FILES) are, so a file the user put beside an adapter (notes, an evaluation, a
    tokenizer) stays; it was deleted with the folder before. Kept rather than refused: the user's file is
    no part of the export and stands in the way of nothing. Every renamed entry is put aside first and
    everything is put back if a rename fails."""
    if not out.exists() or (not out.is_symlink() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(work, out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
    entries = sorted(work.iterdir(), key=lambda p: (p.name == EXPORT_MARKER, p.name == "router.json", p.name))
    renames: list[tuple[Path, Path]] = []  # (from, to), undone in reverse order if one fails

    def rename(src: Path, dst: Path) -> None:
        os.replace(src, dst)
        renames.append((src, dst))

    try:
        for entry in entries:
            target = out / entry.name
            if entry.is_dir() and target.is_dir() and not target.is_symlink():  # a task folder: file by file
                (aside / entry.name).mkdir()
                ours = {p.name for p in target.iterdir()} & TASK_FOLDER_FILES
                for name in sorted(ours | {p.name for p in entry.iterdir()}):
                    if (target / name).exists() or (target / name).is_symlink():
                        rename(target / name, aside / entry.name / name)
                    if (entry / name).exists():
                        rename(entry / name, target / name)
                continue
            if target.exists() or target.is_symlink():
                rename(target, aside / entry.name)
            rename(entry, target)
    except BaseException:
        for src, dst in reversed(renames):
            os.replace(dst, src)
        for folder in aside.iterdir():  # empty now: everything was put back (rmdir never deletes a file)
            folder.rmdir()
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


# The export's own files beside the task folders: a task named like one cannot have its folder there.
EXPORT_FILES = ("README.md", "router.json", "router.safetensors", CONFIG, TASKS, METRICS, EXPORT_MARKER)


def _check_task_folders(tasks: list[str], out: Path) -> None:
    """Refuse, before anything is written, a task whose folder OUT/<task>/ would be one of the export's own
    files (a task folder named README.md or router.json trains well; its export failed half-way with a
    line naming a temporary file). Compared case-blind: macOS and Windows file systems are."""
    own = {name.casefold(): name for name in EXPORT_FILES}
    clash = [task for task in tasks if task.casefold() in own]
    if clash:
        raise ConfigError(f"{out}: task(s) {', '.join(map(repr, clash))} cannot be exported: the adapter folder "
                          f"{out}/<task> would be the export's own file of that name ({', '.join(EXPORT_FILES)}); "
                          "rename the task (its data folder) to export the run")


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the PEFT adapters and the router of a run; returns a summary (also router.json's content).

    The export is built in a temporary folder next to OUT and moved into place by renames only once it
    is complete, so a failure (a damaged stage, a full disk) leaves OUT as it was."""
    run_dir, out = Path(run_dir), Path(out).absolute()
    cfg = load_run_config(run_dir)
    stages = trained_stages(run_dir)
    _check_task_folders([task for task, _ in stages], out)
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


PROMPT_ROUTING_DESCRIPTION = ROUTING_DESCRIPTION.split(" The output of every adapted projection")[0] + (
    " The soft prompt P = sum_t weights[t] * P_t (P_t = prompt_embeddings of the PEFT prompt-tuning adapter "
    "of task t, [num_virtual_tokens, d_model]) is prepended to the input embeddings (T5: the encoder's) with "
    "attention mask 1. A one-hot weight vector gives exactly the single PEFT adapter of that task."
)


def model_family(cfg: Any) -> str:
    """"seq2seq" or "causal" for the run's base model, from its config only (no weights)."""
    if cfg.model in RESERVED:
        return "seq2seq" if cfg.model == "tiny-t5" else "causal"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model)
    except Exception as e:  # hub/network/path errors come in many types; one line is what users need
        raise ConfigError(f"cannot read the config of model {cfg.model!r}: {str(e).splitlines()[0]}") from None
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def prompt_adapter_config(cfg: Any, family: str, prompt: torch.Tensor) -> dict[str, Any]:
    """A PEFT PromptTuningConfig as a JSON dict: one soft prompt before the input (T5: the encoder's)."""
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": TASK_TYPE.get(family),
        "base_model_name_or_path": peft_base_model(cfg.model),
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
    }


def _write_prompt_adapters(cfg: Any, stages: list[tuple[str, Path]], out: Path) -> tuple[list, dict, str, torch.Tensor]:
    """One PEFT prompt-tuning adapter per task (`pet: prompt`): its `prompt_embeddings`, the prompt the
    backbone sees. A reparameterised prompt (`prompt_mlp_hidden`) is saved as P and its residual MLP; PEFT's
    prompt tuning has no MLP, so the adapter holds P + MLP(P), which is all the MLP is for once trained; the
    block itself (P and its MLP) is kept beside it as SAPT_PROMPT, from which `sapt.load` of the export
    computes the prompt exactly as the run does (P + MLP(P) computed again can differ in the last bit)."""
    from sapt.modules.blocks.prompt import KEY, PROMPT_ENCODER_KEYS, effective_prompt

    family = model_family(cfg)
    keys, adapters, prompt = [], {}, None
    for task, sdir in stages:
        block = _load(sdir / "adapter.safetensors")
        if set(block) not in ({KEY}, {KEY, *PROMPT_ENCODER_KEYS}):
            raise ConfigError(f"{sdir}/adapter.safetensors holds no soft prompt (tensors: {', '.join(sorted(block))})")
        prompt = effective_prompt(block).contiguous()
        io.save_tensors(out / task / "adapter_model.safetensors", {"prompt_embeddings": prompt}, {"format": "pt"})
        io.write_json(out / task / "adapter_config.json", prompt_adapter_config(cfg, family, prompt))
        if set(block) != {KEY}:
            io.save_tensors(out / task / SAPT_PROMPT, block, {"format": "pt"})
        keys.append(_load(sdir / "router.safetensors")["key"].float())
        adapters[task] = task
    return keys, adapters, family, prompt


def _write_export(run_dir: Path, cfg: Any, stages: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """Write the export into the (new, empty) folder `out`; returns router.json's content."""
    keys, adapters, all_modules, layouts = [], {}, None, None
    prompt_blocks = getattr(cfg, "pet", "lora") == "prompt"
    if prompt_blocks:
        keys, adapters, family, prompt = _write_prompt_adapters(cfg, stages, out)
        targets, all_modules, layouts = [], [], {}
    for t, (task, sdir) in enumerate(stages if not prompt_blocks else ()):
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
        "base_model": peft_base_model(cfg.model),
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
        # the router learned from prompts holding these: an input should come with its task's one
        "definitions": task_definitions(run_dir),
        "source_run": str(run_dir.resolve()),
    }
    if prompt_blocks:  # soft prompts, not LoRA: what the adapters are and how they mix
        for k in ("lora_r", "lora_alpha", "lora_scaling", "fused_qkv_modules"):
            del info[k]
        info.update(pet="prompt", num_virtual_tokens=int(prompt.shape[0]), routing=PROMPT_ROUTING_DESCRIPTION)
    if cfg.model in RESERVED:
        how = f"sapt.models.load_model({cfg.model!r}" + (f", seed={cfg.seed})" if cfg.model.startswith("tiny-") else ")")
        info["model_note"] = f"{cfg.model!r} is a name reserved by sapt: the base model is {how}.model"
    metrics, note = run_metrics(run_dir)
    io.atomic_write_text(out / "README.md", model_card(cfg, info, metrics, note))
    io.atomic_write_text(out / "router.json", json.dumps(info, indent=2) + "\n")
    # what makes it a model on its own: the run's config and definitions (and scores), and the marker
    io.atomic_write_bytes(out / CONFIG, (run_dir / CONFIG).read_bytes())
    io.write_json(out / TASKS, {"definitions": info["definitions"]})
    if metrics is not None:
        io.atomic_write_bytes(out / METRICS, (run_dir / METRICS).read_bytes())
    read = [CONFIG, TASKS, "router.json", "router.safetensors",
            *(f"{folder}/{name}" for folder in adapters.values() for name in ("adapter_model.safetensors", SAPT_PROMPT)
              if (out / folder / name).is_file())]
    io.write_json(out / EXPORT_MARKER, {
        "format": EXPORT_FORMAT,
        "sapt_version": _version(),
        "method": cfg.method,
        "model": cfg.model,
        "base_model": info["base_model"],
        "tasks": info["tasks"],
        # what sapt.load reads, checked before it is used (as a run's stages are against manifest.json)
        "sha256": {name: sha256_file(out / name) for name in read},
    })
    return info


def _version() -> str:
    from sapt.version import __version__

    return __version__



# ---- an export as a model: read back (sapt.load, sapt predict) and pushed to the Hub ----------------------
def read_export(path: str | Path) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(task, block, router) of every stage of an export, in training order, as the run's stage files
    hold them (sapt.rundir.stage_tensors): the inverse of `_write_export`. Every file it reads is first
    checked against its sha256 in EXPORT_MARKER (a damaged or edited export is refused, never loaded).

    The blocks: each PEFT adapter's tensors under SAPT's names (`sapt_block`; a fused projection's rank-2r
    LoRA split back into its q and v blocks). The routers: stage t gets key t of router.safetensors and
    the export's query MLP and centre, which are the last stage's; loading the stages in order leaves the
    run's final router, as loading the run's stage files does. A soft prompt is the adapter's
    prompt_embeddings, or, reparameterised (`prompt_mlp_hidden`), the block kept beside it (SAPT_PROMPT)."""
    path = Path(path)
    _check_marker(path)
    try:
        info = io.read_json(path / "router.json")
        tasks, folders = list(info["tasks"]), dict(info["adapters"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path / 'router.json'} cannot be read as a sapt export's ({e})") from None
    cfg = load_run_config(path)
    router = _load(path / "router.safetensors")
    keys = router.pop("keys", None)
    if keys is None or keys.shape[0] != len(tasks):
        raise ConfigError(f"{path / 'router.safetensors'}: expected keys for the {len(tasks)} tasks of router.json")
    fused = list(info.get("fused_qkv_modules") or [])
    layouts = model_layouts(cfg, fused) if fused else {}
    stages = []
    for t, task in enumerate(tasks):
        adapter = _load(path / folders[task] / "adapter_model.safetensors")
        block = _prompt_block(adapter, path / folders[task]) if info.get("pet") == "prompt" else sapt_block(adapter, layouts)
        stages.append((task, block, {"key": keys[t], **router}))
    return stages


def _check_marker(path: Path) -> dict[str, Any]:
    marker_path = path / EXPORT_MARKER
    try:
        marker = io.read_json(marker_path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{marker_path} cannot be read ({e}); export the run again") from None
    if not isinstance(marker, dict) or marker.get("format") != EXPORT_FORMAT or not isinstance(marker.get("sha256"), dict):
        found = marker.get("format") if isinstance(marker, dict) else None
        raise ConfigError(f"{marker_path}: not a sapt export this sapt reads (format {found!r}, expected "
                          f"{EXPORT_FORMAT!r}); export the run again with this sapt")
    for name, digest in marker["sha256"].items():
        file = path / name
        if not file.is_file():
            raise ConfigError(f"{path}: {name} is missing from the export; export the run again")
        if sha256_file(file) != digest:
            raise ConfigError(f"{path}: {name} does not match its sha256 in {EXPORT_MARKER} (damaged, or changed "
                              "after the export); export the run again")
    return marker


def sapt_block(state: dict[str, torch.Tensor], layouts: dict[str, dict[str, SliceLayout]] | None = None
               ) -> dict[str, torch.Tensor]:
    """The inverse of `peft_state`: a PEFT LoRA adapter's tensors under SAPT's block names
    ('<module>.lora_A.weight'). A fused q/k/v projection in `layouts` was exported as one rank-2r LoRA
    (`fused_lora`); its q and v blocks are A[:r], A[r:], B[L_q, :r] and B[L_v, r:]."""
    layouts = layouts or {}
    block = {}
    for key, tensor in state.items():
        m = _KEY.match(key.removeprefix(PEFT_PREFIX)) if key.startswith(PEFT_PREFIX) else None
        if not m:
            raise ConfigError(f"unexpected tensor {key!r} in an exported adapter")
        module, ab = m["module"], m["ab"]
        if module not in layouts:
            block[f"{module}.lora_{ab}.weight"] = tensor
            continue
        for i, part in enumerate(("q", "v")):
            if ab == "A":
                r = tensor.shape[0] // 2
                block[f"{module}.{part}.lora_A.weight"] = tensor[i * r:(i + 1) * r].contiguous()
            else:
                r = tensor.shape[1] // 2
                block[f"{module}.{part}.lora_B.weight"] = tensor[layouts[module][part].rows(), i * r:(i + 1) * r].contiguous()
    return block


def _prompt_block(adapter: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """A task's SAPT prompt block from its export folder: P and its residual MLP when the run
    reparameterised its prompts (SAPT_PROMPT), else the PEFT adapter's prompt_embeddings, which is P."""
    from sapt.modules.blocks.prompt import KEY

    if (folder / SAPT_PROMPT).is_file():
        return _load(folder / SAPT_PROMPT)
    if set(adapter) != {"prompt_embeddings"}:
        raise ConfigError(f"{folder}/adapter_model.safetensors holds {', '.join(sorted(adapter))}, not prompt_embeddings")
    return {KEY: adapter["prompt_embeddings"]}


def check_hub_repo(repo_id: str) -> None:
    """Refuse a malformed Hub repo id (before anything is exported), in one line."""
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise ConfigError("--push-to-hub needs the huggingface_hub package (pip install huggingface_hub)") from None
    try:
        validate_repo_id(repo_id)
    except Exception as e:  # HFValidationError: its message says what is wrong
        raise ConfigError(f"--push-to-hub {repo_id!r}: not a Hub repo id ({_first_line(e)})") from None


def push_to_hub(out: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                api_factory: Callable[..., Any] | None = None) -> str:
    """Upload the export folder `out` to the Hub model repo `repo_id`, created first if it does not exist
    (`HfApi.create_repo(exist_ok=True)`, then `HfApi.upload_folder`: one commit). Returns the repo's URL.
    `private`: create it private (an existing repo keeps its visibility). `api_factory`: what makes the
    HfApi (tests pass a recorder; default huggingface_hub.HfApi). Any Hub failure (no token, no network,
    no write access) is a one-line ConfigError."""
    out = Path(out)
    if not (out / EXPORT_MARKER).is_file():
        raise ConfigError(f"{out} is not a sapt export (no {EXPORT_MARKER}); nothing to push")
    check_hub_repo(repo_id)
    if api_factory is None:
        from huggingface_hub import HfApi as api_factory
    try:
        api = api_factory(token=token)
        url = api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(out),
                          commit_message=f"sapt export ({_version()}): {', '.join(io.read_json(out / 'router.json')['tasks'])}")
    except Exception as e:  # hub, HTTP and token errors come in many types; one line is what users need
        raise ConfigError(f"--push-to-hub {repo_id}: {_hub_failure(e)}") from None
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo_id}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _hub_failure(e: BaseException) -> str:
    """One line for a failed push, with what to do when it is about the token."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if type(e).__name__ == "LocalTokenNotFoundError" or status in (401, 403):
        return (f"{_first_line(e)} (a Hub token with write access is needed: `hf auth login`, or set HF_TOKEN)")
    return f"{type(e).__name__}: {_first_line(e)}"
