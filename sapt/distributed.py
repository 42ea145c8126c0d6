"""Data parallelism and mixed precision through `accelerate`.

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
per optimiser step is exact and has none of that. It is also why FSDP and DeepSpeed (which shard the
frozen backbone itself) are refused with a clear message instead of silently training something else.

With `--batch-size B` the global micro-batch is B whatever the number of processes; the loss is the
token-level mean over the whole global micro-batch (each process divides its token sum by the global
token count), so N processes match one process to floating-point tolerance.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence, TypeVar

import torch

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
        if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise DistributedError(
                f"the accelerate config asks for {kind.value}; sapt trains data-parallel only (the trainable "
                "part is the LoRA blocks and the router, a few MB): launch with a plain multi-GPU config "
                "(configs/accelerate/multi-gpu.yaml)")
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device

    # ---- data ------------------------------------------------------------------------------------
    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's slice of a global batch (every process draws the same global batch)."""
        return list(items[self.rank::self.world])

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


def get_dist() -> Dist:
    """This process's Dist (one Accelerator per process, as accelerate requires)."""
    global _DIST
    if _DIST is None:
        _DIST = Dist()
    return _DIST
