"""Several GPUs or machines through PyTorch DDP, launched by ``torchrun`` (``env://``).

The process group, devices and collectives are shared with evaluation
(``deeplabv1.distributed.context``, re-exported here); without torchrun's environment training
runs as a single process. This module adds the DDP wrapper.
"""

from __future__ import annotations

import torch

from deeplabv1.distributed.context import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    resolve_device,
)

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "gather_objects",
    "init_distributed",
    "resolve_device",
    "wrap_model",
]


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself.

    DDP broadcasts rank 0's weights at construction and averages gradients in ``backward``.
    """
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
