"""A frozen base model with one PET block per task (LoRA on q/v by default, or any type of
`sapt.modules.blocks.registry`), mixed per input by the shared attention router.

Training task t updates only block t, key t and the shared query MLP. The routing weights are computed
once per input from the prompt's token embeddings and reused by every layer and every decoding step.
Everything about the blocks themselves goes through the model's `BlockType` (`self.blocks`,
`sapt.modules.blocks`): attaching them, adding one, what trains, their saved state, an input prefix.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from sapt.models import LoadedModel
from sapt.modules.blocks.base import BlockType
from sapt.modules.blocks.lora import LoRABlocks
from sapt.modules.blocks.routing import RoutingState
from sapt.modules.router import SharedAttentionRouter, masked_max_pool
from sapt.modules.target_logits import causal_lm_loss, contiguous_head_input


class _StopAt(StoppingCriteria):
    """Done, per sequence, once its last token is one of `tokens` ((vocab,) bool). generate() keeps a
    finished sequence finished (it pads it from then on), so looking at the last token is enough."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        last, n = input_ids[:, -1].cpu(), len(self.tokens)
        hit = self.tokens[last.clamp(max=n - 1)] & (last < n)  # ids past the tokenizer's (padded vocab): no
        return hit.to(input_ids.device)


class SAPTModel(nn.Module):
    def __init__(
        self,
        loaded: LoadedModel,
        block_type: BlockType | None = None,
        router: SharedAttentionRouter | None = None,
        template: str | None = None,
    ):
        """`block_type`: the per-task blocks with their settings (`sapt.modules.blocks.registry.build_block_type`
        from a run config); None: LoRA with its defaults (r 4, alpha 32, q and v). `router`: the shared
        attention router over the backbone's embedding size; None: one with a query MLP of hidden width 100.
        `template`: the prompt template every encoding of this model uses (a key of sapt.data.PROMPT_TEMPLATES,
        `sapt.data.prompts.template_key`); None: the family's."""
        super().__init__()
        self.base = loaded.model
        self.family = loaded.family
        self.tokenizer = loaded.tokenizer
        self.template = template
        self.base.requires_grad_(False)
        contiguous_head_input(self.base)
        self.state = RoutingState()
        self.blocks = block_type if block_type is not None else LoRABlocks()
        pet = self.blocks.attach(self.base, self.family, self.state)
        if pet is not None:
            self.pet = pet  # parameters outside the backbone (a prompt type's embeddings)
        self.router = router if router is not None else SharedAttentionRouter(self.base.get_input_embeddings().embedding_dim)
        self.task_names: list[str] = []
        self._newline_tokens: torch.Tensor | None = None
        self.sharded = False  # backbone blocks under FSDP: every generate() must run in step (synced_gpus)

    # ---- tasks and what trains -------------------------------------------------------------------
    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def n_blocks(self) -> int:
        """Blocks per adapted projection; fewer than tasks for methods that share one block."""
        return self.router.n_tasks

    def add_task(self, name: str) -> None:
        self.blocks.add_block()
        self.router.add_key()
        self.task_names.append(name)
        self.set_trainable(self.n_tasks - 1)

    def set_trainable(self, t: int, router: bool = True) -> None:
        """Only block t, and with the router key t and the shared query MLP, receive gradient."""
        self.requires_grad_(False)
        self.blocks.set_trainable(t)
        if router:
            self.router.keys[t].requires_grad_(True)
            self.router.query_mlp.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- routing ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batches are built on the CPU; the model may live on an accelerator."""
        device = self.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def pooled_prompt(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the embedding table is frozen; no graph needed through it
            emb = self.base.get_input_embeddings()(input_ids.to(self.device))
        return masked_max_pool(emb.float(), prompt_mask.to(self.device))

    def routing_logits(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        return self.router.logits(self.pooled_prompt(input_ids, prompt_mask))

    def routing_weights(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.routing_logits(input_ids, prompt_mask), dim=-1)

    @contextmanager
    def routed(self, weights: torch.Tensor) -> Iterator[None]:
        self.state.weights = weights
        try:
            yield
        finally:
            self.state.weights = None

    # ---- training and generation -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean token cross-entropy of the batch's targets under the mixture (routed unless `weights`).
        A causal LM computes the logits of the answer positions only (`sapt.modules.target_logits`)."""
        batch = self.on_device(batch)
        if weights is None:
            weights = self.routing_weights(batch["input_ids"], batch["prompt_mask"])
        with self.routed(weights.to(self.device)):
            inputs = self.backbone_inputs(batch, labels=True)
            if self.family == "causal":
                return causal_lm_loss(self.base, **{"input_ids": None, **inputs})  # a prefix gives inputs_embeds
            out = self.base(**inputs)
        return out.loss

    def backbone_inputs(self, batch: dict[str, torch.Tensor], labels: bool = False) -> dict[str, torch.Tensor]:
        """The backbone's keyword inputs for a routed batch: input_ids, attention_mask (and labels), or
        what the block type's input prefix makes of them (`BlockType.prefix`: inputs_embeds instead)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if labels:
            inputs["labels"] = batch["labels"]
        return self.blocks.prefix(self.base, inputs)

    def newline_tokens(self) -> torch.Tensor:
        """(vocab,) bool: the tokens whose text holds a line break. Computed once per model."""
        if self._newline_tokens is None:
            tok = self.tokenizer
            texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
            self._newline_tokens = torch.tensor(["\n" in t for t in texts], dtype=torch.bool)
        return self._newline_tokens

    @torch.no_grad()
    def generate(
        self, batch: dict[str, torch.Tensor], max_new_tokens: int, weights: torch.Tensor | None = None,
        stop_at_newline: bool = False,
    ) -> tuple[list[str], torch.Tensor]:
        """Greedy answers for a batch of prompts and the mixing weights each one used (routed unless given).

        Each sequence stops at EOS; with `stop_at_newline` also at its first token holding a line break,
        and its answer is the text before that break (for tasks whose answers are one line: the batch
        stops as soon as every answer is complete, instead of running to `max_new_tokens`)."""
        batch = self.on_device(batch)
        if weights is None:
            weights = self.routing_weights(batch["input_ids"], batch["prompt_mask"])
        tok = self.tokenizer
        with self.routed(weights.to(self.device)):
            inputs = self.backbone_inputs(batch)
            out = self.base.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                synced_gpus=self.sharded,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                stopping_criteria=StoppingCriteriaList([_StopAt(self.newline_tokens())]) if stop_at_newline else None,
            )
        if self.family == "causal" and "input_ids" in inputs:  # from inputs_embeds only the new tokens come back
            out = out[:, inputs["input_ids"].shape[1]:]
        texts = tok.batch_decode(out, skip_special_tokens=True)
        if stop_at_newline:
            texts = [t.split("\n", 1)[0] for t in texts]
        return [t.strip() for t in texts], weights

    # ---- per-stage state -------------------------------------------------------------------------
    def block_state(self, t: int) -> dict[str, torch.Tensor]:
        """Block t, as CPU tensors under the block type's names (LoRA: PEFT-like, by module path)."""
        return self.blocks.block_state(t)

    def router_state(self, t: int) -> dict[str, torch.Tensor]:
        state = {f"query_mlp.{k}": v.detach().cpu().contiguous() for k, v in self.router.query_mlp.state_dict().items()}
        state["key"] = self.router.keys[t].detach().cpu().contiguous()
        state["centre"] = self.router.centre.detach().cpu().contiguous()
        return state

    def load_block(self, t: int, block: dict[str, torch.Tensor]) -> None:
        self.blocks.load_block(t, block)

    @torch.no_grad()
    def load_router(self, t: int, router: dict[str, torch.Tensor]) -> None:
        self.router.keys[t].copy_(router["key"])
        if "centre" in router:  # absent from runs written before the centre existed: zero, as they trained
            self.router.centre.copy_(router["centre"])
        mlp = {k.removeprefix("query_mlp."): v for k, v in router.items() if k.startswith("query_mlp.")}
        self.router.query_mlp.load_state_dict(mlp)
