"""Mixture LoRA on the q and v parts of a fused q/k/v projection, exactly as on separate q and v Linears.

Some backbones compute q, k and v with one Linear: Phi-3's `qkv_proj`, GPT-NeoX's (Pythia's) and Falcon's
`query_key_value`. Its weight W (out, in) and bias b hold the rows of W_q, W_k, W_v (and
b_q, b_k, b_v) at output positions L_q, L_k, L_v that partition 0..out-1 (the layout, below):

    o = W x + b          o[L_q] = W_q x + b_q,   o[L_k] = W_k x + b_k,   o[L_v] = W_v x + b_v

and the attention reads q, k, v back from those positions. LoRA on separate q and v projections gives
q = W_q x + b_q + D_q(x), v = W_v x + b_v + D_v(x), k unchanged, where D_p is the mixture layer's update

    D_p(x) = sum_i w_i(x) * (alpha / r) * B^p_i A^p_i x        A^p_i (r, in), B^p_i (|L_p|, r)

(`MixtureLoRALinear`: one implementation of that math, the same kernel). So the fused layer is

    o = W x + b;   o[L_q] += D_q(x);   o[L_v] += D_v(x)                          (`FusedQKVLoRA`)

which equals separate q/v LoRA exactly: the attention splits o as before. Each part p in {q, v} is a
`MixtureLoRASlice`, a `MixtureLoRALinear` whose frozen "base" is the rows L_p of W and b (a view, not a
copy: `FusedRows`), with its own blocks of the shapes a separate q or v Linear's LoRA would have. Its
module path is `<fused>.q` / `<fused>.v`, so its saved tensors are `<fused>.q.lora_A.weight`,
`<fused>.q.lora_B.weight`, `<fused>.v.lora_A.weight`, `<fused>.v.lora_B.weight` (PEFT's scheme, one level
down); O-LoRA's losses and the router see q and v as two adapted layers, as with separate projections.
Merged (`merge.py`): W'[L_p] = W[L_p] + sum_i w_i (alpha / r) B^p_i A^p_i for p in {q, v}; k untouched.

Layouts. Each part is "split the output dimension into `groups` runs of `period` positions; the part is
positions [lo, hi) of every run", its rows taken run by run: the order in which the attention reads the
heads, so B^p_i is row for row the B of a separate projection (H heads, K key/value heads, head size d):

    Phi-3 qkv_proj                [q (H d); k (K d); v (K d)]          1 run:     q [0, Hd)   v [Hd+Kd, Hd+2Kd)
    GPT-NeoX,                     per head h: [q_h; k_h; v_h]          H runs of 3d: q [0, d)  v [2d, 3d)
      Falcon (neither flag)       (view(..., H, 3 * d).chunk(3) / view(..., H, 3, d))
    Falcon new_decoder_architecture  per kv head g: [q_gG..q_gG+G-1; k_g; v_g], G = H / K
                                                                       K runs of (G+2)d: q [0, Gd)  v [(G+1)d, (G+2)d)
    Falcon multi_query            [q (H d); k (d); v (d)]              1 run:     q [0, Hd)   v [Hd+d, Hd+2d)

Sizes come from the config (`qkv_layouts`) and are checked against the Linear's output size; another
model type's query_key_value (BLOOM's, ChatGLM's, ...) is refused with a ModelLoadError naming it.
tests/test_backbones.py reads each layout back from transformers' own attention code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sapt.modules.blocks.lora.layer import MixtureLoRALinear
from sapt.modules.blocks.routing import RoutingState

FUSED_QKV = ("qkv_proj", "query_key_value")  # module names of fused q/k/v projections
PER_HEAD_QKV = ("gpt_neox",)  # query_key_value laid out [q_h; k_h; v_h] head by head


@dataclass(frozen=True)
class SliceLayout:
    """Positions [lo, hi) of each of `groups` runs of `period` output positions, taken run by run."""

    groups: int
    period: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.groups * (self.hi - self.lo)

    def of_output(self, out: torch.Tensor) -> torch.Tensor:
        """The part's positions of a (..., groups * period) tensor, as a (..., groups, hi - lo) view."""
        return out.unflatten(-1, (self.groups, self.period))[..., self.lo:self.hi]

    def of_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The part's rows of a (groups * period, ...) tensor, as a (groups, hi - lo, ...) view."""
        return weight.unflatten(0, (self.groups, self.period))[:, self.lo:self.hi]

    def rows(self) -> torch.Tensor:
        """The part's output positions, in order (an index tensor)."""
        return (torch.arange(self.groups)[:, None] * self.period + torch.arange(self.lo, self.hi)).flatten()


def qkv_layouts(config, name: str, out_features: int) -> dict[str, SliceLayout]:
    """The q and v parts of a fused projection called `name` ("qkv_proj" or "query_key_value") in a
    model with this config (see the module docstring); a ModelLoadError for a layout not known here."""
    from sapt.models import ModelLoadError

    if config is None:
        raise ModelLoadError(f"a fused projection {name!r} needs the model's config to find its q/k/v layout")
    model_type = getattr(config, "model_type", None) or type(config).__name__
    heads, hidden = config.num_attention_heads, config.hidden_size
    if name == "qkv_proj":  # Phi-3: [q; k; v], sizes as Phi3Attention computes them
        d = getattr(config, "head_dim", None) or hidden // heads
        q, kv = heads * d, (getattr(config, "num_key_value_heads", None) or heads) * d
        layouts = {"q": SliceLayout(1, q + 2 * kv, 0, q), "v": SliceLayout(1, q + 2 * kv, q + kv, q + 2 * kv)}
    elif name == "query_key_value" and (model_type in PER_HEAD_QKV or (
            model_type == "falcon" and not config.new_decoder_architecture and not config.multi_query)):
        d = hidden // heads
        layouts = {"q": SliceLayout(heads, 3 * d, 0, d), "v": SliceLayout(heads, 3 * d, 2 * d, 3 * d)}
    elif name == "query_key_value" and model_type == "falcon" and config.new_decoder_architecture:
        d, kv = hidden // heads, config.num_kv_heads
        g = heads // kv
        layouts = {"q": SliceLayout(kv, (g + 2) * d, 0, g * d), "v": SliceLayout(kv, (g + 2) * d, (g + 1) * d, (g + 2) * d)}
    elif name == "query_key_value" and model_type == "falcon":  # multi_query
        d = hidden // heads
        n = heads * d + 2 * d
        layouts = {"q": SliceLayout(1, n, 0, heads * d), "v": SliceLayout(1, n, heads * d + d, n)}
    else:
        raise ModelLoadError(f"model type {model_type!r}: the fused projection {name!r} has no known q/k/v "
                             f"layout (known: qkv_proj as in Phi-3; query_key_value of {', '.join(PER_HEAD_QKV)}, falcon)")
    for part, layout in layouts.items():
        if layout.groups * layout.period != out_features:
            raise ModelLoadError(f"model type {model_type!r}: {name} has {out_features} outputs but the config's "
                                 f"heads give {layout.groups * layout.period}; cannot place its {part} part")
    return layouts


class FusedRows(nn.Module):
    """The rows of one part (q or v) of a fused Linear, as a Linear of its own: W_p x + b_p.

    Holds no parameter: the fused Linear is referenced, not registered (its weight is saved, placed and
    frozen once, under the fused module's path)."""

    def __init__(self, fused: nn.Linear, layout: SliceLayout):
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a submodule
        self.layout = layout
        self.in_features = fused.in_features
        self.out_features = layout.size

    @property
    def weight(self) -> torch.Tensor:
        """W_p (|L_p|, in): a view of the fused weight's rows when they are contiguous, else a copy."""
        return self.layout.of_rows(self.fused.weight).reshape(self.out_features, self.in_features)

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.fused.bias
        return None if b is None else self.layout.of_rows(b).reshape(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.layout}"


class MixtureLoRASlice(MixtureLoRALinear):
    """A mixture layer on one part of a fused projection. Called on its own it is exactly a separate
    q (or v) projection with its LoRA blocks; inside `FusedQKVLoRA` only its `mixture` is used."""

    def __init__(self, fused: nn.Linear, layout: SliceLayout, state: RoutingState, r: int, alpha: float,
                 dropout: float = 0.0):
        super().__init__(FusedRows(fused, layout), state, r, alpha, dropout)


class FusedQKVLoRA(nn.Module):
    """A fused q/k/v Linear (`base`, frozen) with mixture LoRA on its q part (`q`) and v part (`v`)."""

    def __init__(self, base: nn.Linear, layouts: dict[str, SliceLayout], state: RoutingState, r: int,
                 alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.state = state
        self.q = MixtureLoRASlice(base, layouts["q"], state, r, alpha, dropout)
        self.v = MixtureLoRASlice(base, layouts["v"], state, r, alpha, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.state.merged:
            if x.shape[0] != 1:
                raise RuntimeError(f"the mixture is merged into the weights for one input, got a batch of {x.shape[0]}")
            return out
        if not out.is_contiguous():
            out = out.contiguous()
        for part in (self.q, self.v):
            delta = part.mixture(x, out.dtype)  # (..., |L_p|)
            if delta is not None:
                layout = part.base.layout
                # In place into a view of the fresh base output: autograd tracks it (the Linear does not
                # save its output), and without autograd nothing is allocated.
                layout.of_output(out).add_(delta.unflatten(-1, (layout.groups, layout.hi - layout.lo)))
        return out

    def extra_repr(self) -> str:
        return f"q={self.q.base.layout}, v={self.v.base.layout}"
