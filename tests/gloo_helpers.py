"""Start N CPU processes (gloo) the way torchrun does: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT in the environment (``env://``), one torch thread each.

torch.multiprocessing is used instead of a torchrun subprocess where torchrun's standalone
rendezvous (several seconds) would only slow a test down; test_eval_distributed.py also runs
the real ``python -m torch.distributed.run`` once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_group_env(rank: int, world_size: int, port: int) -> None:
    """torchrun's environment for ``rank`` of ``world_size`` on this machine."""
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world_size,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": 1}  # fmt: skip
    os.environ.update({k: str(v) for k, v in env.items()})
    torch.set_num_threads(1)


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    join_group_env(rank, world_size, port)
    fn(rank, world_size, *args)


def spawn(fn: Callable, world_size: int, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; an exception or a
    non-zero exit in any of them fails the call (the others are stopped)."""
    torch.multiprocessing.spawn(_entry, args=(world_size, free_port(), fn, args),
                                nprocs=world_size, join=True)  # fmt: skip


def cli(rank: int, world_size: int, argv: list[str]) -> None:
    """``deeplabv1 <argv>`` in one rank; a non-zero status fails the rank."""
    from deeplabv1.cli import main

    status = main(argv)
    if status != 0:
        raise SystemExit(status)
