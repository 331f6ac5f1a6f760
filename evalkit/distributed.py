"""Data-parallel evaluation through torch.distributed: one model replica per rank, requests sharded.

``torchrun --nproc-per-node N -m evalkit run ...`` starts N copies of the same
command. Every rank builds the same requests (tasks are deterministic), rank 0
looks them up in the response cache and tells the others what is left, the
runner deals the remaining chunks out round-robin, and rank 0 gathers the
answers, scores them and writes the one results.json.

Why chunks and not single requests: each chunk is exactly the batch group a
one-process run would have sent to the model, so every response (down to the
last float) is the one a single process computes, and the results are
identical for any number of ranks. Why rank 0 alone reads the cache: ranks
that each read it while others are already writing could disagree about what
is left; one reader and a broadcast cannot.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``size`` (0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def launched_ranks() -> int:
    """How many ranks the launcher (torchrun, or anything that sets ``WORLD_SIZE``) started."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or the only process; usable before the process group exists (reads torchrun's ``RANK``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: str = "cpu") -> Ranks:
    """Join the job the environment describes, once per process; :data:`SINGLE` when there is none.

    An already-initialised process group (a DDP training script) is used as it
    is. Otherwise, when ``WORLD_SIZE`` > 1, the group is created from the
    ``env://`` variables torchrun sets: NCCL for CUDA devices, gloo for CPU.
    """
    if not dist.is_available():
        return SINGLE
    if not dist.is_initialized():
        if launched_ranks() <= 1:
            return SINGLE
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        atexit.register(_teardown)
    return Ranks(dist.get_rank(), dist.get_world_size())


def local_device(device: str, ranks: Ranks) -> str:
    """``cuda`` means this rank's own GPU (``LOCAL_RANK``) when several ranks share a machine."""
    if ranks.size > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextmanager
def main_first(ranks: Ranks) -> Iterator[None]:
    """Rank 0 runs the block before the others (it converts and caches a GGUF once; they then load the cache)."""
    if not ranks.is_main:
        dist.barrier()
    yield
    if ranks.is_main and ranks.size > 1:
        dist.barrier()


def broadcast(value: T, ranks: Ranks) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if ranks.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on rank 0; None on the other ranks."""
    if ranks.size == 1:
        return [value]
    out: list[Any] | None = [None] * ranks.size if ranks.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
