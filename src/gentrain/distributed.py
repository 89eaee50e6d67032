"""Several processes under torchrun: the process group, which process writes, and reductions.

    torchrun --nproc_per_node=4 -m gentrain model=vae dataset=cifar10
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=host:29500 -m gentrain ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; gentrain then joins the process group (NCCL on GPUs, Gloo on
CPU), each process trains on its shard of every global batch through DistributedDataParallel, evaluation
metrics are summed over all processes, and only rank 0 writes logs, samples, metrics and checkpoints. A
single process is the special case world_size = 1, where nothing here does anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from gentrain import run_names

if TYPE_CHECKING:
    import torch

# torch is imported only when there are several processes: a single process (and `gentrain --help`) never pays
# for torch.distributed here.

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    restart: int = 0  # torchrun --max-restarts: how many times the workers have been restarted

    def describe(self) -> str:
        restarted = f", restart {self.restart} of the workers" if self.restart else ""
        return f"rank {self.rank} of {self.world_size} processes, {self.backend} backend{restarted}"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_context = Distributed()


def init_from_environment() -> Distributed:
    """Join the process group torchrun describes; a no-op for a single process. Idempotent."""
    global _context
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or _context.enabled:
        return _context
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        dist.init_process_group(backend)
    else:
        # torchrun --max-restarts keeps one store for every attempt, so restarted workers would read the dead
        # attempt's addresses and fail to connect (Gloo's connectFullMesh "Connection refused"): each attempt
        # gets keys of its own.
        store, rank, world_size = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"gentrain/attempt_{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    _context = Distributed(dist.get_rank(), dist.get_world_size(), local_rank, backend, int(attempt or 0))
    # Every process names the run directory after rank 0's start time, so they all write to the same one.
    shared = [run_names.current_launch_time()]
    dist.broadcast_object_list(shared, src=0)
    run_names.set_launch_time(shared[0])
    return _context


def context() -> Distributed:
    return _context


def shutdown() -> None:
    if _context.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over every process, in place (a copy of the value for one process)."""
    if _context.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag: is it true on any process? (one small all-reduce when distributed, so all agree)"""
    if not _context.enabled:
        return flags
    import torch
    import torch.distributed as dist

    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics, ...) on every process, in place. DDP sends them before each
    training forward, but that forward leaves each process's own update behind."""
    if _context.enabled:
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def gather_to_main(value: object) -> Optional[list]:
    """Every process's `value` (picklable) in rank order on rank 0, None on the others; [value]
    for a single process. A collective: every process must call it."""
    if not _context.enabled:
        return [value]
    import torch.distributed as dist

    gathered = [None] * _context.world_size if _context.is_main else None
    dist.gather_object(value, gathered, dst=0)  # NCCL: via the device set in init_from_environment
    return gathered


def barrier() -> None:
    if _context.enabled:
        import torch.distributed as dist

        dist.barrier()
