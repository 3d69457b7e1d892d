"""Multi-process helpers: torchrun initialisation, rank queries, gathers and a resumable sampler.

Every helper works unchanged in a single process (no process group): ranks are 0, the world
size is 1 and gathers return ``[obj]``. So library code calls them unconditionally.

``torchrun --nproc_per_node N -m meddet ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from meddet.device import resolve_device
from meddet.errors import MedDetError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the torchrun job if there is one; otherwise describe a single process.

    NCCL is used on CUDA (each process takes GPU ``LOCAL_RANK``), gloo on CPU. Calling it twice
    is harmless.

    Args:
        device: the requested device type (``cpu``/``cuda``/``cuda:N``).
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=dev)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise MedDetError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs; "
                              "lower --nproc_per_node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that logs and writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all processes (no-op in a single process)."""
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects; used for predictions)."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum of a list of floats over all ranks."""
    if get_world_size() == 1:
        return list(values)
    # NCCL only reduces CUDA tensors; gloo reduces CPU ones.
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True if ``flag`` is true on any rank; all ranks get the same answer.

    Used so that all ranks skip a step together when one of them sees a non-finite loss:
    a rank that skipped ``backward`` alone would leave the others waiting in DDP's all-reduce.
    """
    if get_world_size() == 1:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded indices that depend only on ``(seed, epoch)``, with a start offset.

    The permutation of epoch ``e`` comes from a generator seeded with ``seed + e`` (so every rank
    computes the same permutation without communicating), rank ``r`` takes positions
    ``r, r + world, ...``, and :meth:`set_epoch` can skip the batches a resumed run already saw.
    When ``even`` is set (training) the dataset is truncated to a multiple of ``world_size`` so
    every rank runs the same number of steps (a rank with one more step would wait forever in
    DDP's all-reduce); otherwise (evaluation) ranks may get one sample fewer, nothing is padded
    and nothing is seen twice.

    Args:
        length: dataset size.
        shuffle: shuffle each epoch (training) or keep order (evaluation).
        seed: base seed; the same on every rank.
        rank: this process's rank.
        world_size: number of processes.
        even: give every rank the same number of samples (defaults to ``shuffle``).
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, even: bool | None = None) -> None:
        self.length = int(length)
        self.shuffle = shuffle
        self.even = shuffle if even is None else even
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of ``epoch`` and skip its first ``start`` samples (this rank's)."""
        self.epoch = int(epoch)
        self.start = int(start)

    def indices(self) -> list[int]:
        """This rank's full index list for the current epoch (ignoring the start offset)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        return order[self.rank:self._usable():self.world_size]

    def _usable(self) -> int:
        return self.length - self.length % self.world_size if self.even else self.length

    def num_samples(self) -> int:
        """Samples this rank sees in one full epoch."""
        return len(range(self.rank, self._usable(), self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples() - self.start, 0)
