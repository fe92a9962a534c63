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
    import os

    from deeplabv1.config import resolve_config
    from deeplabv1.train.config import TrainConfig
    from deeplabv1.train.loop import train

    cfg = resolve_config(TrainConfig, args)
    final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    return 0
