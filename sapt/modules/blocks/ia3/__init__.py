"""IA3 blocks (`--pet ia3`; Liu et al., 2022, "(IA)^3", as PEFT's `IA3Config`): per task, a learned scaling
vector on the outputs of k and v of every attention and on the input of the feed-forward down projection,
mixed per input by the router's weights.

    k, v:          y = (W x + b) * l(x)          l(x) = sum_t w_t(x) l_t + (1 - sum_t w_t(x))
    down / wo:     y = W (x * l(x)) + b

l_t starts at ones (PEFT's `init_ia3_weights`), so a new block changes nothing; with routing weights that sum
to 1 (the router's softmax) l(x) is the router's weighted sum of the tasks' vectors, and one-hot weights give
exactly task t's vector, i.e. PEFT's IA3 adapter of that task. Every weight zero (the blocks off: the
pseudo-sample generator's training, --unseen's base model) gives l = 1, the frozen backbone. Saved as
`<module>.ia3_l`, PEFT's name and shape ((out, 1) for k and v, (1, in) for the feed-forward module), which
`export.py` writes as a PEFT IA3 adapter. `merged` folds one input's l into W (rows, and the bias, for k and
v; columns for the feed-forward module), as PEFT's IA3 merge does. No run-config key of its own (no `OPTIONS`).

The names below are imported on first use (`registry.lazy_exports`): importing the folder loads no torch.
"""
from sapt.modules.blocks.registry import lazy_exports

_LAZY = {
    "BLOCK_TYPE": "blocks:IA3Blocks",  # the registry's entry (sapt.modules.blocks.registry)
    "IA3Blocks": "blocks", "IA3Config": "config", "MixtureIA3Linear": "layer",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
