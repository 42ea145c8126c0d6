"""A linear layer plus a per-example weighted mixture of LoRA blocks.

    y = W x + b + sum_i w_i(x) * (alpha / r) * B_i A_i x

`w` is one weight per task block per *example* (not per layer), produced once per input by the shared
router and handed to every mixture layer through a `RoutingState`. PEFT has no such layer: its LoRA
layers mix adapters with weights that are fixed per call (`add_weighted_adapter`) or pick one adapter per
example (`adapter_names=`), but cannot scale each block by a differentiable, per-example weight, which
SAPT needs so that the gradient reaches the router through the frozen old blocks. So it is written here.

Speed (issue "Speed"). The T blocks are applied as one rank T*r update, whatever T:

    h = x A^T          A  = [A_1; ...; A_T]        (T*r, in)
    y = W x + b + (h * s) Bt     Bt = [B_1^T; ...; B_T^T]    (T*r, out),  s = per-example w_i * alpha/r

- No concatenation per call: the blocks *live* in two stacked tensors. Each `lora_A[i]` / `lora_B[i]` is
  still its own `nn.Parameter` (so block t trains while blocks < t stay frozen, and optimisers, state
  dicts and `requires_grad` work as before), but its storage is a view into the stack: an optimiser step
  or a `copy_` on a block writes straight into the stack, so there is nothing to keep in sync. If a
  block's storage is replaced (`add_block`, `.to()`, `load_state_dict(assign=True)`, deepcopy, `p.data =`)
  the data pointers no longer match the stack and it is rebuilt before the next use.
- One autograd node per layer (`_MixtureFn`) instead of cat/matmul/mul/matmul/add nodes: it saves only
  the input x (which plain LoRA saves as well) and h (T*r numbers per token), never the frozen blocks
  (the stack is persistent; it is referenced, not copied), and computes gradients only for the blocks
  that require them. The gradient still reaches the routing weights through every block, frozen or not.
- Without autograd (evaluation, generation) the update is added in place into the base output.
- The per-example scales `s` are computed once per routed batch and shared by all layers (no grad needed).
"""
from __future__ import annotations

import math
from itertools import chain

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from sapt.modules.blocks.routing import RoutingState

_data_ptr = torch.Tensor.data_ptr


class _MixtureFn(torch.autograd.Function):
    """out + (x A^T * s) Bt with gradients for out, x, s and the trainable blocks only.

    Saved for backward: x (only when an A block trains) and h = x A^T (only when s or a B block needs a
    gradient). The stacks are referenced, not saved as copies; frozen blocks get no gradient buffers.
    """

    @staticmethod
    def forward(ctx, out, x, s, A, Bt, r, train_a, train_b, *params):
        n_in, n_out, width = A.shape[1], Bt.shape[1], A.shape[0]
        x3 = x.reshape(s.shape[0], -1, n_in)
        h = torch.matmul(x3, A.t())  # (batch, positions, T*r)
        hs = h * s.unsqueeze(1)
        if out is None:
            y = torch.matmul(hs, Bt).view(*x.shape[:-1], n_out)
        else:
            y = torch.addmm(out.reshape(-1, n_out), hs.view(-1, width), Bt).view(out.shape)
        need_s = ctx.needs_input_grad[2]
        ctx.save_for_backward(x3 if train_a else None, h if (need_s or train_b) else None, s)
        ctx.A, ctx.Bt, ctx.r, ctx.train_a, ctx.train_b = A, Bt, r, train_a, train_b
        ctx.x_shape, ctx.has_out = x.shape, out is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x3, h, s = ctx.saved_tensors
        A, Bt, r, train_a, train_b = ctx.A, ctx.Bt, ctx.r, ctx.train_a, ctx.train_b
        need_out, need_x, need_s = ctx.needs_input_grad[:3]
        g = gy.reshape(s.shape[0], -1, Bt.shape[1])  # (batch, positions, out)
        grad_out = gy if (ctx.has_out and need_out) else None
        grad_x = grad_s = None
        grads_a, grads_b = [], []
        if need_x or need_s or train_a:
            ghs = torch.matmul(g, Bt.t())  # d loss / d (h*s): (batch, positions, T*r)
            if need_s:
                grad_s = (ghs * h).sum(dim=1)
            gh = ghs.mul_(s.unsqueeze(1))  # d loss / d h
            if need_x:
                grad_x = torch.matmul(gh, A).view(ctx.x_shape)
            if train_a:
                lo, hi = min(train_a) * r, (max(train_a) + 1) * r
                ga = gh[..., lo:hi].reshape(-1, hi - lo).t() @ x3.reshape(-1, A.shape[1])  # (span, in)
                grads_a = [ga[i * r - lo:i * r - lo + r] for i in train_a]
        if train_b:
            lo, hi = min(train_b) * r, (max(train_b) + 1) * r
            hs = h[..., lo:hi] * s[:, None, lo:hi]
            gbt = hs.reshape(-1, hi - lo).t() @ g.reshape(-1, Bt.shape[1])  # (span, out)
            grads_b = [gbt[i * r - lo:i * r - lo + r].t() for i in train_b]
        return (grad_out, grad_x, grad_s, None, None, None, None, None, *grads_a, *grads_b)


class MixtureLoRALinear(nn.Module):
    """Wraps a frozen `nn.Linear` with T LoRA blocks mixed by per-example weights."""

    def __init__(self, base: nn.Linear, state: RoutingState, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.state = state
        self.r = r
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        # Not buffers (they would duplicate every block in the state dict): the storage the blocks view.
        self._A_stack: torch.Tensor | None = None  # (T*r, in); lora_A[i] = rows i*r:(i+1)*r
        self._Bt_stack: torch.Tensor | None = None  # (T*r, out); lora_B[i] = those rows, transposed
        self._ptrs: tuple[int, ...] = ()

    @property
    def n_blocks(self) -> int:
        return len(self.lora_A)

    def add_block(self) -> None:
        """A new block initialised as PEFT does: A Kaiming-uniform, B zero (so it starts as a no-op)."""
        w = self.base.weight
        a = torch.empty(self.r, self.base.in_features, dtype=torch.float32, device=w.device)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(self.base.out_features, self.r, dtype=torch.float32, device=w.device)
        self.lora_A.append(nn.Parameter(a))
        self.lora_B.append(nn.Parameter(b))
        self._restack()

    # ---- the stacks ------------------------------------------------------------------------------
    def _blocks(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        # The ParameterLists' own dicts: indexing a ParameterList costs a getattr per block.
        return list(self.lora_A._parameters.values()), list(self.lora_B._parameters.values())

    @torch.no_grad()
    @torch.inference_mode(False)  # the blocks must stay ordinary tensors, even if first used in inference mode
    def _restack(self) -> None:
        """Copy the blocks into fresh stacks and make every block a view of its rows."""
        As, Bs = self._blocks()
        if not As:
            self._A_stack = self._Bt_stack = None
            self._ptrs = ()
            return
        if len(As) != len(Bs):
            raise RuntimeError(f"{len(As)} A blocks but {len(Bs)} B blocks")
        r = self.r
        A = torch.cat([p.detach() for p in As], dim=0)
        Bt = torch.cat([p.detach().t() for p in Bs], dim=0)
        for i, p in enumerate(As):
            p.data = A[i * r:(i + 1) * r]
        for i, p in enumerate(Bs):
            p.data = Bt[i * r:(i + 1) * r].t()
        self._A_stack, self._Bt_stack = A, Bt
        self._ptrs = tuple(p.data_ptr() for p in As + Bs)

    def stacks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks as (T*r, in) and (T*r, out) tensors, outside autograd. Rebuilt if any block's
        storage was replaced since the last call; in-place changes need nothing (they write the stack)."""
        ptrs = tuple(map(_data_ptr, chain(self.lora_A._parameters.values(), self.lora_B._parameters.values())))
        if ptrs != self._ptrs or self._A_stack is None:
            self._restack()
        return self._A_stack, self._Bt_stack

    # ---- the update ------------------------------------------------------------------------------
    def _mix(
        self, out: torch.Tensor | None, x: torch.Tensor, s: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor
    ) -> torch.Tensor:
        """out + delta (or delta alone if out is None) for per-example scales s (batch, T*r)."""
        x = self.dropout(x)
        if x.dtype != A.dtype:
            x = x.to(A.dtype)
        train_a = train_b = ()
        if torch.is_grad_enabled():
            As, Bs = self._blocks()
            train_a = tuple(i for i, p in enumerate(As) if p.requires_grad)
            train_b = tuple(i for i, p in enumerate(Bs) if p.requires_grad)
            if train_a or train_b or x.requires_grad or s.requires_grad or (out is not None and out.requires_grad):
                params = [As[i] for i in train_a] + [Bs[i] for i in train_b]
                return _MixtureFn.apply(out, x, s, A, Bt, self.r, train_a, train_b, *params)
        # No gradient anywhere: plain 2-D kernels, the update added in place into the base output.
        width = A.shape[0]
        h = torch.mm(x.reshape(-1, A.shape[1]), A.t())  # (batch * positions, T*r)
        h.view(s.shape[0], -1, width).mul_(s.unsqueeze(1))
        if out is None:
            return torch.mm(h, Bt).view(*x.shape[:-1], Bt.shape[1])
        if out.is_contiguous():
            out.view(-1, Bt.shape[1]).addmm_(h, Bt)
            return out
        return out + torch.mm(h, Bt).view(out.shape)

    def delta(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_i weights[:, i] * scaling * B_i A_i x, for x of shape (batch, ..., in_features)."""
        A, Bt = self.stacks()
        s = (weights.to(device=A.device, dtype=A.dtype) * self.scaling).repeat_interleave(self.r, dim=1)
        return self._mix(None, x, s, A, Bt)

    def mixture(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The routed batch's update sum_i w_i(x) * scaling * B_i A_i x alone, in `dtype` (None without
        blocks): what `forward` adds to the base output, for a caller that adds it itself (a fused
        projection adds it to its q or v rows: `sapt.modules.blocks.lora.fused`). Same math, same kernel."""
        if not self.lora_A._parameters:
            return None
        A, Bt = self.stacks()
        s = self.state.scales(x.shape[0], self.r, self.scaling, A.dtype, A.device)
        if dtype == A.dtype and x.dtype == A.dtype:
            return self._mix(None, x, s, A, Bt)
        with torch.autocast(device_type=x.device.type, enabled=False):  # as in `forward`
            delta = self._mix(None, x.to(A.dtype), s, A, Bt)
        return delta.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.merged:
            if x.shape[0] != 1:
                raise RuntimeError(f"the mixture is merged into the weights for one input, got a batch of {x.shape[0]}")
            return self.base(x)
        out = self.base(x)
        if not self.lora_A._parameters:
            return out
        A, Bt = self.stacks()
        s = state.scales(x.shape[0], self.r, self.scaling, A.dtype, A.device)
        if out.dtype == A.dtype and x.dtype == A.dtype:
            return self._mix(out, x, s, A, Bt)
        # Mixed precision (or a half-precision backbone): the LoRA path runs in the blocks' float32, outside
        # autocast, as PEFT does; only its result is cast to the backbone's dtype.
        with torch.autocast(device_type=x.device.type, enabled=False):
            delta = self._mix(None, x.to(A.dtype), s, A, Bt)
        return out + delta.to(out.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, blocks={self.n_blocks}"
