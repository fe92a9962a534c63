"""``deeplabv1 train``: train a DeepLab V1 network with the paper's recipe (docs/training.md).

    deeplabv1 train --config configs/voc_largefov_stage1.yaml --data-root VOCdevkit/VOC2012 \\
        --init vgg16_20M.pt --out-dir runs/largefov
    torchrun --standalone --nproc-per-node 8 -m deeplabv1 train --config ...   # 8 GPUs

Settings: the dataclass defaults of ``deeplabv1.train.config.TrainConfig`` < ``--config`` YAML <
flags. The resolved config is written to ``<out-dir>/config.yaml``; prints the final checkpoint.
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """Register ``deeplabv1 train``."""
    from deeplabv1.config import add_config_args
    from deeplabv1.train.config import TrainConfig

    p = subparsers.add_parser(
        "train",
        help="train a network (SGD, step policy, resumable checkpoints, DDP via torchrun)",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
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
