"""Prompt tuning as a SAPT block type (Lester et al., 2021): one soft prompt per task, mixed per input.

Block t is a (n_virtual, d_model) matrix P_t. For a routed batch with weights w (batch, T) the backbone
gets the mixture P = sum_t w_t P_t (batch, n_virtual, d) before the embeddings of its input:

    inputs_embeds = [P; E(input_ids)]     attention_mask = [1...1; mask]     (T5: the encoder's input)
    labels        = [-100...-100; labels]                                   (causal LMs only)

which is what PEFT's prompt tuning does with one prompt (`PromptTuningConfig`, `num_transformer_submodules`
1: T5's decoder gets no prompt). Positions: a causal LM numbers the virtual tokens 0..n-1 and the input
after them (from the attention mask when generating), as under PEFT. Nothing in the backbone is wrapped;
the prompts live in a `PromptBank` that SAPTModel registers as its child `pet`. A new prompt is initialised
from the embeddings of `n_virtual` vocabulary tokens sampled with a seeded generator (PEFT's
`SAMPLE_VOCAB`); unlike a LoRA block it is not a no-op before it trains. Saved as
{"prompt_embeddings": P_t} (PEFT's name for a prompt-tuning adapter's tensor). The router still reads the
real prompt tokens (`SAPTModel.pooled_prompt`), never the virtual ones.

Residual reparameterisation (`config.PromptConfig.mlp_hidden` > 0, config `prompt_mlp_hidden`; the release's
SAPT-Prompt, hidden 800): each task's prompt is used as P_t + MLP_t(P_t), MLP_t = Linear(d, hidden) -> ReLU ->
Linear(hidden, d), one MLP per task, trained with its prompt (block t's parameters are P_t and MLP_t) and
saved beside it under PROMPT_ENCODER_KEYS. The raw P_t and its MLP are what train, so Adam steps through the
MLP's coordinates, which is the point of it (a better-conditioned prompt, Razdaibiedina et al. 2023); what the
backbone sees is only the resulting (n_virtual, d) prompt, so that prompt is what `sapt export` writes
(`effective_prompt`), and the exported PEFT prompt-tuning adapter still equals SAPT with all weight on the
task. The activation is ReLU, that of Progressive Prompts' residual MLP and of PEFT's prompt-encoder MLP
(P-tuning), the two published modules this one follows. Each MLP starts from its own seeded generator, so a run's numbers do not depend on the global
RNG; with it, a new prompt is no longer exactly its vocabulary sample (P + MLP(P) from the first step).

The run config's prompt keys are declared in `config.py` (`PromptOptions`). The names below are imported on
first use (`registry.lazy_exports`), so that the run config reads them with no torch.
"""
from sapt.modules.blocks.registry import lazy_exports

_LAZY = {
    "BLOCK_TYPE": "blocks:PromptBlocks",  # the registry's entry (sapt.modules.blocks.registry)
    "SAPT_PROMPT": "blocks", "PromptBlocks": "blocks", "PromptConfig": "config", "PromptOptions": "config",
    "ENCODER_SEED_STRIDE": "layer", "KEY": "layer", "PROMPT_ENCODER_KEYS": "layer", "PromptBank": "layer",
    "ResidualPromptEncoder": "layer", "effective_prompt": "layer", "residual_prompt": "layer",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
