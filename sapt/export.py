"""Export a run's task blocks as standard PEFT adapters, and its router as plain tensors.

    OUT/<task>/adapter_config.json        a PEFT adapter config of the run's block type (LoRA: a LoraConfig
                                          with r, lora_alpha, target_modules, base model)
    OUT/<task>/adapter_model.safetensors  block t, under PEFT's key names
    OUT/router.safetensors                "keys" [T, d] (one per task, in training order), "centre" [d]
                                          and the query MLP ("query_mlp.0.weight" [hidden, d],
                                          "query_mlp.1.weight" [d, hidden], "query_mlp.3.weight"/".bias"
                                          [d]: the LayerNorm)
    OUT/router.json                       tasks, d_model, hidden, model, the block type's fields (LoRA:
                                          r/alpha, target modules), how the routing is computed, and each
                                          task's definition
    OUT/README.md                         a model card: Hub front matter (library_name peft, base_model,
                                          tags, the base's license when known, a model-index of the
                                          scores), the tasks in order with their data and definitions, the
                                          method and its settings (config.yaml), the score matrix and
                                          AP/F.Ra/BWT/FWT (metrics.json) and how to load it (`model_card`)
    OUT/config.yaml, OUT/tasks.json       the run's config and task definitions, as the run holds them
    OUT/metrics.json                      the run's scores (when it has evaluated a stage)
    OUT/<task>/...                        what else the block type keeps there (`BlockType.export_files`:
                                          a reparameterised soft prompt's SAPT block, P and its MLP)
    OUT/sapt_export.json                  marks the folder as an export (format, sapt version, tasks) with
                                          the sha256 of every file the loader reads

**An export is a model.** `sapt.load(OUT)` and `sapt predict --run OUT` answer from it exactly as from the
run (the same tensors, the same config): `read_export` turns the adapters and the router back into the
run's stage tensors (the inverse of what `_write_export` does; `stage_tensors` reads either), and
`sapt.train.load_trained` builds the model from them as it does from a run's stage files. Nothing in the
export points back to the run directory, so a copy of it anywhere, or a Hub repo of it
(`push_to_hub`, `sapt export --push-to-hub REPO`; `sapt.load("USER/REPO")` downloads it with
`huggingface_hub.snapshot_download`), loads on its own. The adapter configs name the real base model:
the embedded `smollm2` is HuggingFaceTB/SmolLM2-135M-Instruct (the model its GGUF file was quantised from),
a hub id or path stays as given, a random `tiny-*` model keeps its sapt name (it has no other).

The block type writes and reads its adapters (`BlockType.export_adapters` / `read_adapters`, in its
folder: sapt/modules/blocks/lora/export.py maps LoRA to PEFT LoRA, fused q/k/v projections exactly
translated; prompt/export.py and ia3/export.py theirs); this module asks it, never which type it is. Each
task adapter loads with `peft.PeftModel.from_pretrained(base_model, OUT/<task>)` and then behaves exactly
as the SAPT model with all routing weight on that task's block. PEFT cannot reproduce the per-input mixture
itself; router.* holds what is needed to compute the weights.

The export reads the stage files of the run directory only (no base model weights are loaded): the blocks from
stages/NN_<task>/adapter.safetensors, the keys from each stage's router.safetensors (key t is frozen
after stage t) and the query MLP and centre from the last stage's. Every stage is first checked against
the run's manifest.json checksums (a damaged stage is refused, never exported), and the export is built
in a temporary folder next to OUT and renamed into place only when it is complete.

`export_run` is the recipe of `sapt export`: it reads the run's config.yaml and hands the writers what they
read of it (`card_sections`: the model card's sections, whose block section, model, seed and method name
the adapters, router.json and the marker take too), so no writer below it takes the whole config.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from sapt import io
from sapt.config import ConfigError, RunConfig
from sapt.methods import make_method
from sapt.rundir.manifest import sha256_file
from sapt.models import RESERVED
from sapt.model_card import CardSections, method_traits, model_card, run_metrics
from sapt.modules.blocks.peft_export import load as _load
from sapt.modules.blocks.peft_export import BaseModelRef, peft_base_model
from sapt.modules.blocks.registry import BLOCK_TYPES, block_type_of
from sapt.rundir import EXPORT_MARKER, is_export, load_run_config, run_stage_tensors, task_definitions, trained_stages
from sapt.rundir.source import EXPORT_COPIES, write_export_copies
from sapt.rundir.stage_files import read_stage_tensors

EXPORT_FORMAT = "sapt-export/1"

def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not ((out / EXPORT_MARKER).exists() or (out / "router.json").exists()) \
            and not force:
        raise ConfigError(f"{out} is not empty and holds no sapt export; use another --out (or --force)")


# The files an export writes in OUT/<task>/: a re-export replaces them, and removes one it no longer writes
# (a soft prompt's SAPT block left by an export of another run would be loaded in place of the new adapter's prompt).
TASK_FOLDER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors",
                               *(name for kind in BLOCK_TYPES.values() for name in kind.export_files)})


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
EXPORT_FILES = ("README.md", "router.json", "router.safetensors", *EXPORT_COPIES, EXPORT_MARKER)


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
    card = card_sections(load_run_config(run_dir))
    stages = trained_stages(run_dir)
    _check_task_folders([task for task, _ in stages], out)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export."))
    try:
        work = holder / "export"
        work.mkdir()  # inside the private temporary folder, with the usual permissions (umask) for OUT
        info = _write_export(run_dir, card, stages, work)
        _check_out(out, force)  # again: something may have appeared meanwhile
        _install(work, out)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return info


def card_sections(cfg: RunConfig) -> CardSections:
    """What the export reads of the run's config: the model card's sections (`sapt.model_card.CardSections`),
    which hold the few keys the adapters, router.json and the marker name too (the block section, the model,
    the seed, the method). Made here, once: `export_run` is the recipe of `sapt export`, the one place of the
    export that holds the whole config (tests/test_config_owner.py), and hands its components their part."""
    method = method_traits(make_method(cfg.method, cfg.method_options), cfg.pet, cfg.router, cfg.optim, cfg.arm)
    return CardSections(method=method, run=cfg.run, data=cfg.data, block=cfg.block, optim=cfg.optim,
                        decoding=cfg.decoding)


def _write_export(run_dir: Path, card: CardSections, stages: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """Write the export into the (new, empty) folder `out`; returns router.json's content. `card`: what it
    reads of the run's config (`card_sections`): the adapters take the block section, the model and the seed,
    router.json and the marker name the model and the method, the card reads all of it."""
    model, seed = card.run.model, card.optim.seed
    kind = block_type_of(card.block.pet)
    tensors = [read_stage_tensors(sdir) for _, sdir in stages]
    blocks = [(task, sdir, block) for (task, sdir), (block, _) in zip(stages, tensors)]
    exported = kind.export_adapters(card.block, BaseModelRef(model, seed), blocks, out)
    keys = [router["key"].float() for _, router in tensors]
    adapters = {task: task for task, _ in stages}

    last_router = tensors[-1][1]
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
        "model": model,
        "base_model": peft_base_model(model),
        "model_family": exported.family,
        "d_model": int(d_model),
        "hidden": int(hidden),
        "layer_norm_eps": 1e-5,
        **exported.fields,  # what the blocks are (LoRA: r, alpha, the adapted modules)
        "router_tensors": {k: list(v.shape) for k, v in {"keys": stacked, **mlp}.items()},
        "routing": exported.routing,
        # the router learned from prompts holding these: an input should come with its task's one
        "definitions": task_definitions(run_dir),
        "source_run": str(run_dir.resolve()),
        **exported.extra,
    }
    if model in RESERVED:
        how = f"sapt.models.load_model({model!r}" + (f", seed={seed})" if model.startswith("tiny-") else ")")
        info["model_note"] = f"{model!r} is a name reserved by sapt: the base model is {how}.model"
    metrics, note = run_metrics(run_dir)
    io.atomic_write_text(out / "README.md", model_card(card, info, metrics, note))
    io.atomic_write_text(out / "router.json", json.dumps(info, indent=2) + "\n")
    # what makes it a model on its own: the run's config and definitions (and scores), and the marker
    copied = write_export_copies(run_dir, out, info["definitions"], with_metrics=metrics is not None)
    read = [*copied, "router.json", "router.safetensors",
            *(f"{folder}/{name}" for folder in adapters.values()
              for name in ("adapter_model.safetensors", *kind.export_files) if (out / folder / name).is_file())]
    io.write_json(out / EXPORT_MARKER, {
        "format": EXPORT_FORMAT,
        "sapt_version": _version(),
        "method": card.method.name,
        "model": model,
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
def stage_tensors(path: str | Path) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(task, block tensors, router tensors) of every trained stage, in training order, under the names of
    a run's stage files, from a run directory (`sapt.rundir.run_stage_tensors`, each stage verified against
    the manifest) or from an export (`read_export`): what `sapt.train.load_trained` builds a model from.
    Raises ConfigError for a damaged stage or export, or a folder that is neither."""
    return read_export(path) if is_export(path) else run_stage_tensors(path)


def read_export(path: str | Path) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(task, block, router) of every stage of an export, in training order, as the run's stage files
    hold them (`stage_tensors`): the inverse of `_write_export`. Every file it reads is first
    checked against its sha256 in EXPORT_MARKER (a damaged or edited export is refused, never loaded).

    The blocks: each PEFT adapter read back by the run's block type (`BlockType.read_adapters`: LoRA's under
    SAPT's names, a fused projection's rank-2r LoRA split back into its q and v blocks; a soft prompt, or a
    reparameterised one's block kept beside it). The routers: stage t gets key t of router.safetensors and
    the export's query MLP and centre, which are the last stage's; loading the stages in order leaves the
    run's final router, as loading the run's stage files does."""
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
    blocks = block_type_of(cfg.pet).read_adapters(cfg.block, BaseModelRef(cfg.model, cfg.seed), info,
                                                  [path / folders[task] for task in tasks])
    return [(task, block, {"key": keys[t], **router}) for t, (task, block) in enumerate(zip(tasks, blocks))]


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
