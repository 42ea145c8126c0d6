"""What every block type's PEFT export shares (`BlockType.export_adapters` / `read_adapters`, sapt.export):
the adapter config's common head, PEFT's key prefix, the base model's name and family, the router's part of
router.json's `routing` text, and reading a stage or adapter file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sapt.config import ConfigError
from sapt.models import RESERVED

PEFT_PREFIX = "base_model.model."
TASK_TYPE = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}

# How the router's weights are computed; each block type's `routing` goes on with what they weigh.
ROUTER_DESCRIPTION = (
    "SAPT shared attention routing. For an input, embed the prompt tokens with the base model's input "
    "embedding table, max-pool over the prompt positions (padding excluded) to a vector p of size d_model, "
    "compute query = LayerNorm(SiLU(W1 (W0 (p - centre)))) with W0 = query_mlp.0.weight [hidden, d_model], "
    "W1 = query_mlp.1.weight [d_model, hidden] and LayerNorm(weight = query_mlp.3.weight, bias = "
    "query_mlp.3.bias, eps = layer_norm_eps), then weights = softmax(keys @ query / sqrt(d_model)) over the "
    "tasks (keys [T, d_model], row t = task t)."
)


@dataclass(frozen=True)
class BaseModelRef:
    """The run's base model as an export names and finds it: `name`, the run config's `model` (a hub id, a
    local path or a reserved name), and the run's `seed`, under which a random tiny-* model is built again.
    What an export takes of the run config beside the block section, instead of the whole config."""

    name: str
    seed: int


def load(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a stage or adapter file; an unreadable one is a damaged run, not a crash (the run
    directory's reader, `sapt.rundir.stage_files.load_tensor_file`, says so)."""
    from sapt.rundir.stage_files import load_tensor_file

    return load_tensor_file(path)


def peft_base_model(model: str) -> str:
    """adapter_config.json's `base_model_name_or_path`: the hub id of the embedded smollm2
    (HuggingFaceTB/SmolLM2-135M-Instruct, which its GGUF file was quantised from), so that PEFT's
    `AutoPeftModelFor*` finds a base model; a hub id or a local path as the run was given it; a random
    tiny-* model (no hub id) its sapt name."""
    from sapt.model_card import base_model_id

    return base_model_id(model) if model == "smollm2" else model


def adapter_header(peft_type: str, base: BaseModelRef, family: str) -> dict[str, Any]:
    """The fields every PEFT adapter_config.json starts with; a type adds its own after them."""
    return {
        "peft_type": peft_type,
        "task_type": TASK_TYPE.get(family),
        "base_model_name_or_path": peft_base_model(base.name),
        "revision": None,
        "inference_mode": True,
    }


def model_family(base: BaseModelRef) -> str:
    """"seq2seq" or "causal" for the run's base model, from its config only (no weights)."""
    if base.name in RESERVED:
        return "seq2seq" if base.name == "tiny-t5" else "causal"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base.name)
    except Exception as e:  # hub/network/path errors come in many types; one line is what users need
        raise ConfigError(f"cannot read the config of model {base.name!r}: {str(e).splitlines()[0]}") from None
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
