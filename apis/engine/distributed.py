"""Many processes under ``torchrun``: who am I, the process group, small collectives and image shards.

``torchrun --nproc_per_node N -m apis.cli train CONFIG`` (or ``run``) starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; a plain ``apis train`` is the single-process case
(rank 0 of 1) and needs no process group. NCCL is used on CUDA, gloo on the CPU.

The per-image stages (selection, inference) run on a shard of the images per rank
(:func:`shard_images`: strided over the images sorted by id, so the shards depend on nothing but the
ids and the world size); their outputs are gathered to rank 0 and put back in the dataset's order
(:func:`in_dataset_order`), so rank 0 sees what one process would have produced. Work only rank 0
does (writing files) goes through :func:`run_on_main`, which makes the others wait and re-raises a
failure of rank 0 on every rank, so no rank is left waiting at a collective.
"""

from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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


def init_process_group(ctx: DistributedContext, device: torch.device,
                       timeout: datetime.timedelta | None = None) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns whether this call created it.

    ``timeout``: how long a collective waits for the slowest rank (default: PyTorch's).
    """
    if not ctx.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ctx.rank,
                            world_size=ctx.world_size, timeout=timeout)
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


T = TypeVar("T")


class MainRankFailed(RuntimeError):
    """Raised on the other ranks when work only rank 0 does failed with an error that cannot be sent."""


def broadcast_from_main(obj: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself for a single process)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj: Any, ctx: DistributedContext) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, ``None`` on the others (``[obj]`` for one process).

    Large per-image outputs (COCO results) go to rank 0 only, not to every rank.
    """
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def run_on_main(fn: Callable[[], T], ctx: DistributedContext) -> T | None:
    """``fn()`` on rank 0 only (its result there, ``None`` elsewhere); the other ranks wait for it.

    An exception of rank 0 is raised on every rank (the same exception when it can be pickled, else
    :class:`MainRankFailed` naming it), so that no rank waits forever at the next collective.
    """
    if not ctx.enabled:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except BaseException as exc:  # sent to the other ranks, then raised here too
            error = exc
    sent = broadcast_from_main(_sendable(error) if ctx.is_main else None, ctx)
    if error is not None:
        raise error
    if sent is not None:
        raise sent
    return result


def _sendable(error: BaseException | None) -> BaseException | None:
    if error is None:
        return None
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # an exception type that does not pickle: send its text
        return MainRankFailed(f"rank 0 failed: {type(error).__name__}: {error}")


def shard_images(image_ids: Iterable[int], ctx: DistributedContext) -> set[int]:
    """The image ids this rank works on: every ``world_size``-th of the ids sorted, from position ``rank``.

    Depends only on the ids and the world size (not on the order of the json), and the shards of all
    ranks partition the ids, each within one image of the same size.
    """
    return set(sorted(image_ids)[ctx.rank::ctx.world_size])


def in_dataset_order(shards: Sequence[Sequence[T]], image_order: Sequence[int],
                     image_of: Callable[[T], int]) -> list[T]:
    """Items gathered from the ranks, ordered as one process over the whole dataset makes them.

    ``shards``: each rank's items, in its own order (which is the dataset's order restricted to its images);
    ``image_order``: the image ids in dataset order; ``image_of``: an item's image id. Items of one image
    keep the order their rank gave them (one image is never split across ranks).
    """
    position = {image_id: index for index, image_id in enumerate(image_order)}
    merged = [item for shard in shards for item in shard]
    return sorted(merged, key=lambda item: position[image_of(item)])  # stable: an image keeps its order
