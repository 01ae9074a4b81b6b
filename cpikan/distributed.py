"""Work split across processes launched by ``torchrun`` (one image's tiles, one grid's rows).

Under ``torchrun --nproc-per-node N`` every process calls :func:`init_from_env` once; it joins
the process group (NCCL when a GPU is there, gloo on the CPU) and gives each process its share
of the CPU cores, so N processes do not oversubscribe them. Outside ``torchrun`` everything
here is a no-op for a world of one, so callers need no second code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's part of the work: items ``rank``, ``rank + world``, … of an ordered list."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"shard: need 0 ≤ rank < world, got rank={self.rank}, world={self.world}")

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def take(self, items: list) -> list:
        return items[self.rank :: self.world]


def init_from_env() -> Shard:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); the current shard."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        _import_before_the_group()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return current()


def _import_before_the_group() -> None:
    """Import what ``torch.func`` pulls in lazily (dynamo, and through it FSDP and sharded
    tensors) before the group exists. Some of those modules take ``group.WORLD`` as a
    default argument when imported: imported after ``init_process_group`` they hold the group
    for good, so ``destroy_process_group`` no longer joins gloo's worker threads, and a worker
    that drops its last collective after the interpreter began to exit aborts the process
    ("terminate called without an active exception", SIGABRT; torch 2.13)."""
    import torch._dynamo  # noqa: F401


def current() -> Shard:
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def barrier() -> None:
    """Wait for every process (nothing to wait for in a world of one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_flag(ok: bool) -> bool:
    """Rank 0's ``ok`` on every process: followers stop when the leader failed."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    t = torch.tensor([1 if ok else 0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())


def reduce_sum(tensors: list[torch.Tensor], shard: Shard) -> list[torch.Tensor]:
    """Element-wise sums over every process of ``shard``'s world, packed into one all-reduce;
    returned unchanged in a world of one. Every process gets the same bits (gloo and NCCL
    reduce each element once and broadcast it), so decisions taken on them agree."""
    if shard.world == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def finish() -> None:
    """Leave the group together, and end its worker threads while the interpreter is alive
    (see :func:`_import_before_the_group`)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device() -> torch.device:
    """This process's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
