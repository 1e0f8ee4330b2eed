"""Multi-process training under ``torchrun``: who am I, the process group, and small collectives.

``torchrun --nproc_per_node N -m apis.cli train CONFIG`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; a plain ``apis train`` is the single-process case
(rank 0 of 1) and needs no process group. NCCL is used on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and prints progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def context_from_env() -> DistributedContext:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (absent: a single process)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} are inconsistent")
    return DistributedContext(rank, world_size, local_rank)


def init_process_group(ctx: DistributedContext, device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns whether this call created it."""
    if not ctx.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ctx.rank,
                            world_size=ctx.world_size)
    return True


def shutdown_process_group(created: bool) -> None:
    """Leave the process group if :func:`init_process_group` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for a single process)."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(values: dict[str, float], ctx: DistributedContext) -> dict[str, float]:
    """Average each value over the ranks (a key missing on some rank is averaged where present)."""
    if not ctx.enabled:
        return dict(values)
    merged: dict[str, list[float]] = {}
    for rank_values in all_gather_objects(values, ctx):
        for key, value in rank_values.items():
            merged.setdefault(key, []).append(value)
    return {key: sum(vals) / len(vals) for key, vals in merged.items()}


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()
