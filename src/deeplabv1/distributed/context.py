"""Joining torchrun's process group, this process's device, and the collectives the commands use.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them (or with ``WORLD_SIZE=1``) a command runs as a single process and every collective
here returns its input. The backend is NCCL on CUDA and gloo on the CPU (the CPU path is what
the tests exercise). Each process uses ``cuda:LOCAL_RANK`` for ``auto`` / ``cuda`` on a GPU
machine.

torch is imported only where a collective or a device needs it, so that a single-process
command that does not use torch (``crf-search`` on score folders) runs without it.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplabv1.errors import DeepLabError

if TYPE_CHECKING:
    import torch

# How long a rank waits in a collective for the others: a command's ranks may finish their
# shares of images hours apart (torch's default, 10 minutes for NCCL, would abort them).
RANK_WAIT = timedelta(hours=24)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = "cpu"  # a torch.device once init_distributed resolved it

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes the run's shared outputs (checkpoints, results, summaries)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_JOINED = [False]  # whether this process has joined a torchrun group (see joined_group)


def joined_group() -> bool:
    """Whether this process has joined its torchrun group (up to then every rank runs the
    same checks of the same flags and files: an error there is every rank's)."""
    return _JOINED[0]


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _dist():
    import torch.distributed

    return torch.distributed


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` ->
    ``cuda:<local_rank>``; other names as torch devices (a bad name is a DeepLabError)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeepLabError(f"device: cannot use {name!r} ({exc})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeepLabError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise DeepLabError(f"device {device}: this machine has "
                               f"{torch.cuda.device_count()} GPU(s)")  # fmt: skip
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str = "auto", timeout: timedelta | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (or run alone).

    ``timeout``: how long a collective waits for the other ranks (None: torch's default, 10
    minutes for NCCL); commands whose ranks may finish their shares far apart give more.
    """
    dist = _dist()
    world_size = env_world_size()
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        dist.init_process_group(backend, init_method="env://", rank=rank,
                                world_size=world_size, **kwargs)  # fmt: skip
    if world_size > 1:
        _JOINED[0] = True
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        # DDP wrappers sit in reference cycles: collect them first, or their reducer may be
        # torn down after the group at exit ("terminate called without an active exception")
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(
    device_name: str = "auto", timeout: timedelta | None = None
) -> Iterator[DistInfo]:
    """``init_distributed`` for the length of a command; the group is left afterwards only
    if this call created it (a caller's own process group stays). After a normal end every
    rank waits for the others before leaving, so none tears down a collective in flight."""
    dist = _dist()
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device_name, timeout)
    try:
        yield info
    except BaseException:
        if owns_group:
            cleanup_distributed()
        raise
    if owns_group:
        barrier(info)
        cleanup_distributed()


def _collective_device(info: DistInfo) -> torch.device:
    """Where tensors must be for the group's backend (NCCL: the GPU; gloo: the CPU)."""
    import torch

    return info.device if _dist().get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (a no-op for one process)."""
    if info.distributed:
        _dist().all_reduce(tensor, op=_dist().ReduceOp.SUM)
    return tensor


def all_reduce_arrays(arrays: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """Element-wise sums over all processes of same-named, same-shaped arrays.

    Integer arrays are summed as int64, so counts (confusion matrices) are exact; float arrays
    as float64. One collective per dtype. Returns new arrays (the inputs for one process).
    """
    if not info.distributed:
        return dict(arrays)
    import torch

    dist = _dist()
    out: dict[str, np.ndarray] = {}
    groups: dict[np.dtype, list[str]] = {}
    for name in sorted(arrays):
        kind = np.dtype(np.int64 if np.issubdtype(arrays[name].dtype, np.integer) else np.float64)
        groups.setdefault(kind, []).append(name)
    device = _collective_device(info)
    for kind, names in groups.items():
        flat = np.concatenate([np.asarray(arrays[n], dtype=kind).ravel() for n in names])
        tensor = torch.from_numpy(flat).to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        summed = tensor.cpu().numpy()
        start = 0
        for n in names:
            size = arrays[n].size
            out[n] = summed[start : start + size].reshape(arrays[n].shape)
            start += size
    return out


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable), in rank order (``[obj]`` for one process)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    _dist().all_gather_object(out, obj)
    return out


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every process's ``obj`` (picklable) in rank order on rank 0, None on the others
    (``[obj]`` for one process): for results only rank 0 writes."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    _dist().gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every process (``obj`` itself for one process)."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every process."""
    if info.distributed:
        _dist().barrier()
