"""Prompt blocks as PEFT prompt-tuning adapters, and back (`PromptBlocks.export_adapters` / `read_adapters`).

    OUT/<task>/adapter_config.json        a PEFT PromptTuningConfig (num_virtual_tokens, token_dim, base model)
    OUT/<task>/adapter_model.safetensors  {"prompt_embeddings": the prompt the backbone sees}
    OUT/<task>/sapt_prompt.safetensors    a reparameterised prompt's SAPT block, P and its MLP (PEFT ignores it)

Each adapter loads with `peft.PeftModel.from_pretrained(base_model, OUT/<task>)` and equals SAPT with all
routing weight on that task's prompt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sapt import io
from sapt.config import BlockSection, ConfigError
from sapt.modules.blocks.base import Exported
from sapt.modules.blocks.peft_export import ROUTER_DESCRIPTION, BaseModelRef, adapter_header, load, model_family
from sapt.modules.blocks.prompt.blocks import SAPT_PROMPT
from sapt.modules.blocks.prompt.layer import KEY, PROMPT_ENCODER_KEYS, effective_prompt

PROMPT_ROUTING_DESCRIPTION = ROUTER_DESCRIPTION + (
    " The soft prompt P = sum_t weights[t] * P_t (P_t = prompt_embeddings of the PEFT prompt-tuning adapter "
    "of task t, [num_virtual_tokens, d_model]) is prepended to the input embeddings (T5: the encoder's) with "
    "attention mask 1. A one-hot weight vector gives exactly the single PEFT adapter of that task."
)


def prompt_adapter_config(base: BaseModelRef, family: str, prompt: torch.Tensor) -> dict[str, Any]:
    """A PEFT PromptTuningConfig as a JSON dict: one soft prompt before the input (T5: the encoder's)."""
    return {
        **adapter_header("PROMPT_TUNING", base, family),
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
    }


def export_adapters(block_config: BlockSection, base: BaseModelRef,
                    blocks: list[tuple[str, Path, dict[str, torch.Tensor]]], out: Path) -> Exported:
    """One PEFT prompt-tuning adapter per task: its `prompt_embeddings`, the prompt the backbone sees. A
    reparameterised prompt (`prompt_mlp_hidden`) is saved as P and its residual MLP; PEFT's prompt tuning has
    no MLP, so the adapter holds P + MLP(P), which is all the MLP is for once trained; the block itself (P and
    its MLP) is kept beside it as SAPT_PROMPT, from which `sapt.load` of the export computes the prompt
    exactly as the run does (P + MLP(P) computed again can differ in the last bit)."""
    family = model_family(base)
    prompt = None
    for task, sdir, block in blocks:
        if set(block) not in ({KEY}, {KEY, *PROMPT_ENCODER_KEYS}):
            raise ConfigError(f"{sdir}/adapter.safetensors holds no soft prompt (tensors: {', '.join(sorted(block))})")
        prompt = effective_prompt(block).contiguous()
        io.save_tensors(out / task / "adapter_model.safetensors", {"prompt_embeddings": prompt}, {"format": "pt"})
        io.write_json(out / task / "adapter_config.json", prompt_adapter_config(base, family, prompt))
        if set(block) != {KEY}:
            io.save_tensors(out / task / SAPT_PROMPT, block, {"format": "pt"})
    # soft prompts, not LoRA: what the adapters are and how they mix
    return Exported(family=family, routing=PROMPT_ROUTING_DESCRIPTION,
                    fields={"target_modules": [], "adapted_modules": []},
                    extra={"pet": "prompt", "num_virtual_tokens": int(prompt.shape[0])})


def read_adapters(block_config: BlockSection, base: BaseModelRef, info: dict[str, Any],
                  folders: list[Path]) -> list[dict[str, torch.Tensor]]:
    """Each task's SAPT prompt block from its export folder: P and its residual MLP when the run
    reparameterised its prompts (SAPT_PROMPT), else the PEFT adapter's prompt_embeddings, which is P."""
    blocks = []
    for folder in folders:
        adapter = load(folder / "adapter_model.safetensors")
        if (folder / SAPT_PROMPT).is_file():
            blocks.append(load(folder / SAPT_PROMPT))
            continue
        if set(adapter) != {"prompt_embeddings"}:
            raise ConfigError(f"{folder}/adapter_model.safetensors holds {', '.join(sorted(adapter))}, not prompt_embeddings")
        blocks.append({KEY: adapter["prompt_embeddings"]})
    return blocks
