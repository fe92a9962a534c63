"""What a training run is made of: the network (initialised, partly frozen), the data, the loader.

Initialisation (``init``): a ``deeplabv1 convert`` checkpoint, loaded by name and shape. The
classifier layers (fc8, MSc branches) may be absent or shaped differently (an ImageNet fc8, another
number of classes): those keep their fresh initialisation (fc8 N(0, 0.01)), as when Caffe copies
weights by layer name. Any other missing or mis-shaped weight is an error.
"""

from __future__ import annotations

import torch
from torch import nn

from deeplabv1.checkpoint import load_checkpoint
from deeplabv1.errors import DeepLabError
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.distributed import DistInfo
from deeplabv1.train.sampler import EpochDataset, MicroBatchSampler


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    module = name.rsplit(".", 1)[0]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def load_init_weights(model: nn.Module, path: str) -> list[str]:
    """Copy weights from checkpoint ``path`` into ``model``; return the names left fresh."""
    ckpt = load_checkpoint(path)
    source = ckpt["model"]
    renewable = tuple(model.classifier_names) + tuple(getattr(model, "msc_layer_names", ()))
    state = model.state_dict()
    fresh = []
    for name, tensor in state.items():
        src = source.get(name)
        if src is not None and src.shape == tensor.shape:
            tensor.copy_(src)
        elif _under(name, renewable):
            fresh.append(name)
        elif src is None:
            raise DeepLabError(f"{path}: lacks weight {name} of {model.arch} (width {model.width})")
        else:
            raise DeepLabError(f"{path}: weight {name} has shape {tuple(src.shape)}, "
                               f"{model.arch} (width {model.width}) needs {tuple(tensor.shape)}")
    return fresh


def freeze_for_msc(model: nn.Module, train_fc8: bool) -> None:
    """MSc: train only the new branches (and fc8 when ``train_fc8``); freeze the trunk (P)."""
    if not getattr(model, "msc_layer_names", ()):
        raise DeepLabError(f"{model.arch}: the network does not name its MSc branch layers")
    trainable = tuple(model.msc_layer_names) + (("fc8",) if train_fc8 else ())
    for name, param in model.named_parameters():
        param.requires_grad_(_under(name, trainable))


def build_training_model(cfg: TrainConfig) -> tuple[nn.Module, list[str]]:
    """The network of ``cfg`` (seeded with ``cfg.seed``); returns it and notes for the log."""
    from deeplabv1.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, num_classes=cfg.num_classes, width=cfg.width)
    notes = []
    if cfg.init:
        fresh = load_init_weights(model, cfg.init)
        notes.append(f"initialised from {cfg.init}"
                     + (f"; fresh: {', '.join(fresh)}" if fresh else ""))
    else:
        notes.append("random initialisation (no --init checkpoint)")
    if cfg.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d):
                module.p = cfg.dropout
    if getattr(model, "msc_branch_names", ()):
        train_fc8 = cfg.resolved_msc_train_fc8()
        freeze_for_msc(model, train_fc8)
        fc8 = "trained" if train_fc8 else "frozen"
        notes.append(f"MSc: trunk frozen, branches trained, fc8 {fc8}")
    return model, notes


def build_dataset(cfg: TrainConfig):
    """The training split of ``cfg.data_root`` through the Caffe training transform."""
    from deeplabv1.data.datasets import voc_dataset
    from deeplabv1.data.transforms import TrainTransform

    transform = TrainTransform(crop_size=cfg.resolved_crop_size(), mirror=cfg.mirror)
    dataset = voc_dataset(cfg.data_root, cfg.split, label_dir=cfg.label_dir, transform=transform,
                          num_classes=cfg.num_classes, seed=cfg.seed)
    if len(dataset) == 0:
        raise DeepLabError(f"{cfg.data_root}: split {cfg.split!r} lists no images")
    return dataset


def build_loader(dataset, cfg: TrainConfig, info: DistInfo, *, start_iter: int,
                 start_position: int) -> torch.utils.data.DataLoader:
    """A loader of this process's micro-batches from ``start_iter`` to ``cfg.max_iter``.

    The loader gets its own generator so that creating it never draws from the global torch RNG
    (which drives dropout and must continue exactly on resume).
    """
    sampler = MicroBatchSampler(
        len(dataset), batch_size=cfg.batch_size, iter_size=cfg.iter_size, seed=cfg.seed,
        start_iter=start_iter, start_position=start_position, max_iter=cfg.max_iter,
        rank=info.rank, world_size=info.world_size,
    )  # fmt: skip
    return torch.utils.data.DataLoader(
        EpochDataset(dataset),
        batch_sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers > 0 else None,
    )
