"""``deeplabv1 train``: train a DeepLab V1 network with the paper's recipe.

    deeplabv1 train --list-configs
    deeplabv1 train --config voc-largefov-stage1 --data-root VOCdevkit/VOC2012 --init init.pt
    torchrun --standalone --nproc-per-node 8 -m deeplabv1 train --config ...   # 8 GPUs

Settings: the defaults below (the paper's recipe) < ``--config`` (a packaged config's name or a
YAML file) < flags. The resolved config is written to ``<out-dir>/config.yaml``; the command
prints the final checkpoint's path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator


def add_parser(subparsers) -> None:
    """Register ``deeplabv1 train``."""
    from deeplabv1.config import ListConfigsAction, add_config_args
    from deeplabv1.train.config import TrainConfig

    p = subparsers.add_parser(
        "train",
        help="train a network (SGD, step policy, resumable checkpoints, DDP via torchrun)",
        description=__doc__.split(": ", 1)[1].replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--list-configs", action=ListConfigsAction)
    add_config_args(p, TrainConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    """Resolve the config, train, print the final checkpoint's path."""
    from deeplabv1.config import resolve_config
    from deeplabv1.train.config import TrainConfig
    from deeplabv1.train.loop import train

    cfg = resolve_config(TrainConfig, args)
    with terminate_as_interrupt():
        final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    return 0


TERMINATING = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While training, SIGTERM and SIGHUP (``kill``, a closed terminal, ``timeout``, a preempted
    job) raise ``Terminated`` (a KeyboardInterrupt) in the main thread, so that what Ctrl-C
    runs runs too (an earlier run set aside by ``--overwrite`` is put back, the folder's lock is
    released); the previous handlers come back afterwards. Only in the main thread of torchrun's
    rank 0 (or a run without torchrun), which holds the run folder: the other ranks, and child
    processes that inherit the handler (loader workers), end on the signal as before."""
    from deeplabv1.errors import Terminated

    if (threading.current_thread() is not threading.main_thread()
            or int(os.environ.get("RANK", "0")) != 0):  # fmt: skip
        yield
        return
    owner = os.getpid()
    raised = False

    def handler(signum: int, frame) -> None:
        nonlocal raised
        if os.getpid() != owner:  # a forked child (a loader worker): end on it as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if raised:  # once: the cleanup it started runs to its end
            return
        raised = True
        raise Terminated(signum)

    previous = {}
    try:
        for signum in TERMINATING:
            previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
