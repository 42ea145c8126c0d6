"""Data parallelism, FSDP and mixed precision through `accelerate`.

`sapt run` under `accelerate launch --num_processes N` trains with N data-parallel processes: every
process holds the whole model, draws the same shuffled global batch, and works on its own slice of it
(rank::N); the trainable gradients are averaged across processes before each optimiser step, so the
update is the one a single process would make on the whole global batch. Only the main process writes
files and prints; evaluation is split across processes and gathered on the main one.

Why the gradients are averaged here rather than by wrapping the model in DistributedDataParallel:
the trainable set changes at every stage (block t and key t join, the previous ones freeze), the
routing weights and the reflection KL use the router outside the model's forward, and the trainable
part is a few megabytes. DDP would have to be rebuilt each stage (re-broadcasting the frozen backbone)
and told about parameters used outside forward; one all-reduce of the flattened trainable gradients
per optimiser step is exact and has none of that.

FSDP (an accelerate config with `distributed_type: FSDP`, e.g. configs/accelerate/fsdp.yaml) shards the
*frozen backbone*, which is what does not fit on one GPU (LLaMA-2-13B): `shard_backbone` applies
PyTorch's FSDP2 `fully_shard` to every transformer block (the model's `_no_split_modules` classes), so
each process keeps 1/N of the blocks' weights and gathers one block at a time around its forward and
backward. The embedding table and the LM head stay whole (the router pools prompt embeddings outside the
forward). The LoRA blocks and the router are left out of FSDP (`ignored_params`, and blocks added at
later stages are unknown to it): they stay whole on every process and train exactly as in data parallel
above, so nothing is re-wrapped per stage and saving needs no gathering. The price of sharding is that
every process must run every backbone forward in step with the others; the loop keeps that promise
(`lockstep_batches`, a zero-weight forward for a process whose slice of a batch is empty, generation with
`synced_gpus`, pseudo samples drawn on every process and taken from the main one). Of accelerate's FSDP
settings, `reshard_after_forward` and `offload_params` are honoured; sapt chooses what to wrap itself.

DeepSpeed is refused with a message: ZeRO-2 shards optimiser state and gradients, a few MB here, and
ZeRO-3's parameter sharding is what FSDP above gives; DeepSpeed also needs CUDA, which this project's
test machines lack, so it could not be tested.

With `--batch-size B` the global micro-batch is B whatever the number of processes; the loss is the
token-level mean over the whole global micro-batch (each process divides its token sum by the global
token count), so N processes match one process to floating-point tolerance.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence, TypeVar

import torch
from torch import nn

T = TypeVar("T")


class DistributedError(RuntimeError):
    pass


class Dist:
    """The process's accelerate `Accelerator` and the few collective operations the loop needs.

    Mixed precision is applied here with torch's autocast (and a GradScaler for fp16) rather than
    through the Accelerator, whose settings are fixed once per process: a library user may train two
    runs of different precision in one Python session."""

    def __init__(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        # Launched as several processes (accelerate launch / torchrun) on a machine with no accelerator:
        # accelerate only picks the CPU (gloo) backend when told to use the CPU.
        launched = os.environ.get("LOCAL_RANK") is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(cpu=launched and not torch.accelerator.is_available())
        kind = self.accelerator.distributed_type
        if kind == DistributedType.DEEPSPEED:
            raise DistributedError(
                "the accelerate config asks for DeepSpeed, which sapt does not support: to shard the backbone "
                "use configs/accelerate/fsdp.yaml, else data parallel with configs/accelerate/multi-gpu.yaml")
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        # On a machine without GPUs accelerate falls back to MULTI_CPU and drops its FSDP plugin; the
        # launcher's environment still says what was asked for.
        asked = kind == DistributedType.FSDP or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        self.fsdp = asked and self.world > 1

    # ---- data ------------------------------------------------------------------------------------
    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's slice of a global batch (every process draws the same global batch)."""
        return list(items[self.rank::self.world])

    def lockstep_batches(self, batches: Sequence[list[int]]) -> list[tuple[list[int], bool]]:
        """This process's share of a list of batches, as (batch, real) pairs.

        Data parallel: batches rank::N. Under FSDP every process must make the same number of forward
        calls, so the shorter shares are topped up with a copy of the first batch marked not real (its
        result is computed, to keep the processes in step, and then dropped)."""
        mine = [(list(b), True) for b in batches[self.rank::self.world]]
        if self.fsdp and batches:
            mine += [(list(batches[0]), False)] * (-(-len(batches) // self.world) - len(mine))
        return mine

    def shard_backbone(self, model: nn.Module, keep_whole: set[nn.Parameter]) -> str | None:
        """FSDP2 `fully_shard` on every transformer block of `model` (see the module docstring); the
        parameters in `keep_whole` stay whole on every process. Returns a one-line summary, or None when
        not running under FSDP."""
        if not self.fsdp:
            return None
        import inspect

        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
        except ImportError:
            fully_shard = None
        if fully_shard is None or "ignored_params" not in inspect.signature(fully_shard).parameters:
            raise DistributedError(f"FSDP needs torch >= 2.7 (fully_shard with ignored_params); this is {torch.__version__}")
        kinds = set(getattr(model, "_no_split_modules", None) or ())
        blocks = [m for m in model.modules() if type(m).__name__ in kinds]
        if not blocks:
            raise DistributedError(f"FSDP: found no transformer blocks to shard in {type(model).__name__} "
                                   "(it names none in _no_split_modules)")
        reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").upper()
        offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true" and self.device.type != "cpu"
        mesh = init_device_mesh(self.device.type, (self.world,))
        kind = type(blocks[0]).__name__  # before fully_shard renames the classes (FSDP<name>)
        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard in ("TRUE", "FULL_SHARD", "HYBRID_SHARD"),
                        offload_policy=CPUOffloadPolicy() if offload else OffloadPolicy(),
                        ignored_params={p for p in block.parameters() if p in keep_whole})
        whole = sum(p.numel() for b in blocks for p in b.parameters() if p not in keep_whole)
        local = sum(p.to_local().numel() for b in blocks for p in b.parameters() if hasattr(p, "to_local"))
        return (f"FSDP over {self.world} processes: {len(blocks)} {kind} blocks sharded, "
                f"this process holds {local} of their {whole} backbone parameters")

    # ---- collectives -----------------------------------------------------------------------------
    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Mean of each parameter's gradient over processes, in one all-reduce. A gradient that is None
        on every process stays None (a parameter the step did not use)."""
        if self.world == 1:
            return
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [used])  # the flags ride along
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p, g, anywhere in zip(params, grads, (flat[-len(params):] > 0).tolist()):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype) if anywhere else None
            offset += n

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Copy the main process's values into every process's parameters."""
        if self.world == 1:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in params:
                p.copy_(broadcast(p.detach().clone(), from_process=0))

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        return float(self.accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=self.device), "sum"))

    def gather(self, objects: list[Any]) -> list[Any]:
        """Every process's list, concatenated in rank order (on every process)."""
        if self.world == 1:
            return objects
        from accelerate.utils import gather_object

        return gather_object(objects)

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj`, on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    # ---- precision -------------------------------------------------------------------------------
    def autocast(self, precision: str) -> contextlib.AbstractContextManager:
        if precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self, precision: str) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (bf16 has float32's range and does not)."""
        return torch.amp.GradScaler(self.device.type) if precision == "fp16" else None


_DIST: Dist | None = None


def finish() -> None:
    """End a successful command of several processes together: a last barrier, then the process group is
    destroyed, so that no process exits while another still talks to it (gloo aborts the survivor,
    SIGABRT, when its peer's sockets close under it). Nothing happens in a single process."""
    if _DIST is None or _DIST.world == 1:
        return
    import torch.distributed as torch_dist

    _DIST.barrier()
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def get_dist() -> Dist:
    """This process's Dist (one Accelerator per process, as accelerate requires)."""
    global _DIST
    if _DIST is None:
        _DIST = Dist()
    return _DIST
