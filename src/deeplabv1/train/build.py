"""What a training run is made of: the classes, the network (initialised, partly frozen), the
data, the loader.

Classes (``train_classes``): ``--class-names``, else the dataset's classes file, else VOC's names
for 21 classes; they and their colours are attached to the network (``model.class_names``,
``model.palette``) and stored in every checkpoint.

Initialisation (``init``): a ``deeplabv1 convert`` or ``train`` checkpoint, loaded by name and
shape. The classifier layers (fc8, MSc branches) may be absent or shaped differently (an ImageNet
fc8, another number of classes): those keep their fresh initialisation as released (fc8
N(0, 0.01)), as when Caffe copies weights by layer name. A checkpoint that names other classes
than the run's, even as many, gets a fresh classifier too. Any other missing or mis-shaped weight
is an error.

Freezing (``freeze_for_msc``, MSc only): the recipe trains the new branches (and fc8 per
``msc_train_fc8``) on a frozen trunk. A layer left at its fresh initialisation is trained all
the same: a frozen random classifier would never learn.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from deeplabv1.checkpoint import load_checkpoint, weight_misfit
from deeplabv1.data.classes import ClassInfo
from deeplabv1.errors import DeepLabError
from deeplabv1.train.config import TrainConfig, replace
from deeplabv1.train.distributed import DistInfo
from deeplabv1.train.sampler import EpochDataset, MicroBatchSampler

MASK_SCAN_LIMIT = 500  # masks read at the start of a run for the label sanity warnings


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    module = name.rsplit(".", 1)[0]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def train_classes(cfg: TrainConfig) -> ClassInfo:
    """The run's class names and colours: ``--class-names``, else the classes file of
    ``cfg.data_root``, else the defaults for ``num_classes`` (21 when unset)."""
    from deeplabv1.data.classes import dataset_classes, resolve_classes
    from deeplabv1.data.layout import detect_layout

    found = dataset_classes(detect_layout(cfg.data_root)[1]) if cfg.data_root else None
    return resolve_classes(found, cfg.num_classes, cfg.class_names)


def resolve_train_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the settings left to the dataset filled in (``split``, ``num_classes``), as
    the run's ``config.yaml`` records them."""
    from deeplabv1.data.layout import default_train_split

    split = cfg.split
    if split is None:
        split = default_train_split(cfg.data_root) if cfg.data_root else "train_aug"
    return replace(cfg, split=split, num_classes=train_classes(cfg).num_classes)


def load_init_weights(
    model: nn.Module, init: str | dict, class_names: list[str] | tuple[str, ...] | None = None
) -> list[str]:
    """Copy weights from checkpoint ``init`` (a path or a loaded checkpoint) into ``model``;
    return the names left fresh. With ``class_names`` given, a checkpoint that stores other
    names keeps none of its classifier layers."""
    ckpt = load_checkpoint(init) if not isinstance(init, dict) else init
    path = ckpt.get("file", init if not isinstance(init, dict) else "checkpoint")
    source = ckpt["model"]
    stored = ckpt.get("class_names")
    other_classes = (class_names is not None and stored is not None
                     and list(stored) != list(class_names))  # fmt: skip
    classifiers = tuple(model.classifier_names)
    renewable = classifiers + tuple(getattr(model, "msc_layer_names", ()))
    state = model.state_dict()
    fresh = []
    for name, tensor in state.items():
        src = source.get(name)
        if other_classes and _under(name, classifiers):
            fresh.append(name)
        elif src is not None and src.shape == tensor.shape:
            tensor.copy_(src)
        elif _under(name, renewable):
            fresh.append(name)
        else:
            raise weight_misfit(path, model, name, src, tensor)
    return fresh


def init_note(model: nn.Module, path: str, ckpt: dict, fresh: list[str]) -> str:
    """The log line saying what ``load_init_weights`` kept and what it re-initialised."""
    modules = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in fresh))
    heads = [m for m in modules if m in model.classifier_names]
    others = [m for m in modules if m not in heads]
    note = f"initialised from {path}"
    if not heads:
        return note + (f"; fresh: {', '.join(others)}" if others else "")
    theirs, ours = int(ckpt["num_classes"]), model.num_classes
    if theirs != ours:
        why = f"the checkpoint has {theirs} classes, this run {ours}"
    elif ckpt.get("class_names") is not None and list(ckpt["class_names"]) != list(
        getattr(model, "class_names", ckpt["class_names"])
    ):
        why = f"the checkpoint's classes are {', '.join(ckpt['class_names'])}"
    else:
        why = "the checkpoint lacks it"
    note += (f": trunk copied; classifier re-initialised as released for {ours} classes "
             f"({', '.join(heads)}; {why})")  # fmt: skip
    return note + (f"; fresh: {', '.join(others)}" if others else "")


def freeze_for_msc(model: nn.Module, train_fc8: bool, fresh: Iterable[str] = ()) -> str:
    """MSc: train only the new branches (and fc8 when ``train_fc8``); freeze the trunk (P).

    The recipe freezes weights a trained network learnt; a layer named in ``fresh`` (parameter
    or module names left at their fresh initialisation, as ``load_init_weights`` returns them)
    holds random weights and is trained whatever the recipe says: a re-initialised fc8 at the
    release's MSc classifier multipliers (x1, biases x2), and with a random trunk (no
    checkpoint) every layer. Returns the log line saying what is trained.
    """
    if not getattr(model, "msc_layer_names", ()):
        raise DeepLabError(f"{model.arch}: the network does not name its MSc branch layers")
    renewed = {name.rsplit(".", 1)[0] for name in fresh}
    random_trunk = any(m in renewed for m in _trunk(model))
    trainable = tuple(model.msc_layer_names) + (("fc8",) if train_fc8 else ()) + tuple(renewed)
    for name, param in model.named_parameters():
        param.requires_grad_(random_trunk or _under(name, trainable))
    note = f"MSc: {msc_training(model)}"
    if random_trunk:
        return note + (" (the trunk is not from a checkpoint; the recipe freezes a trained "
                       "network's trunk and trains only the branches)")  # fmt: skip
    if "fc8" in renewed and not train_fc8:
        note += (
            " at x1 like the branch classifiers because it was re-initialised "
            "(msc_train_fc8 false freezes only an fc8 copied from the checkpoint)"
        )
    return note


def _trunk(model: nn.Module) -> list[str]:
    return [m for m in model.path_names if m != "fc8" and list(getattr(model, m).parameters())]


def msc_training(model: nn.Module) -> str:
    """What an MSc ``model`` trains, by ``requires_grad``: ``trunk frozen, branches trained,
    fc8 frozen``, ``every layer trained``, ..."""
    params = dict(model.named_parameters())

    def state(modules) -> str:
        flags = {p.requires_grad for n, p in params.items() if _under(n, tuple(modules))}
        return "trained" if flags == {True} else "frozen" if flags == {False} else "partly frozen"

    parts = {"trunk": state(_trunk(model)), "branches": state(model.msc_layer_names),
             "fc8": state(["fc8"])}  # fmt: skip
    if set(parts.values()) == {"trained"}:
        return "every layer trained"
    return ", ".join(f"{part} {how}" for part, how in parts.items())


def build_training_model(cfg: TrainConfig) -> tuple[nn.Module, list[str]]:
    """The network of ``cfg`` (seeded with ``cfg.seed``) with its classes attached; returns it
    and notes for the log."""
    from deeplabv1.models import build_model

    classes = train_classes(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, num_classes=classes.num_classes, width=cfg.width)
    model.class_names, model.palette = list(classes.names), classes.palette()
    notes = [f"{classes.num_classes} classes ({classes.source}): {', '.join(classes.names)}"]
    if cfg.init:
        ckpt = load_checkpoint(cfg.init)
        fresh = load_init_weights(model, ckpt, classes.names)
        notes.append(init_note(model, cfg.init, ckpt, fresh))
    else:
        fresh = [name for name, _ in model.named_parameters()]
        notes.append("random initialisation (no --init checkpoint)")
    if cfg.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d):
                module.p = cfg.dropout
    if getattr(model, "msc_branch_names", ()):
        notes.append(freeze_for_msc(model, cfg.resolved_msc_train_fc8(), fresh))
    return model, notes


def build_dataset(cfg: TrainConfig):
    """The training split of ``cfg.data_root`` (either layout) through the Caffe training
    transform."""
    from deeplabv1.data.datasets import open_dataset
    from deeplabv1.data.transforms import TrainTransform

    cfg = resolve_train_config(cfg)
    transform = TrainTransform(crop_size=cfg.resolved_crop_size(), mirror=cfg.mirror)
    dataset = open_dataset(cfg.data_root, cfg.split, label_dir=cfg.label_dir,
                           transform=transform, num_classes=cfg.num_classes, seed=cfg.seed,
                           val_fraction=cfg.val_fraction)  # fmt: skip
    if len(dataset) == 0:
        raise DeepLabError(f"{cfg.data_root}: split {cfg.split!r} lists no images")
    return dataset


def mask_warnings(dataset, cfg: TrainConfig) -> list[str]:
    """Label sanity warnings (``deeplabv1.data.check.label_warnings``) from up to
    ``MASK_SCAN_LIMIT`` masks of ``dataset``, evenly spread; a value outside the classes and
    void, or a mask whose size differs from its image's, is an error naming the file."""
    import numpy as np

    from deeplabv1.data.check import label_warnings, scan_labels

    if dataset.label_dir is None or len(dataset) == 0:
        return []
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), MASK_SCAN_LIMIT))
                      .round().astype(int))  # fmt: skip
    counts = scan_labels([dataset.label_path(int(i)) for i in picks], dataset.num_classes,
                         workers=max(1, cfg.workers),
                         images=[dataset.image_path(int(i)) for i in picks])  # fmt: skip
    where = f"the {len(dataset):,} training masks"
    if len(picks) < len(dataset):
        where = f"{len(picks):,} of {where} (evenly spread)"
    return [f"warning: {w}" for w in label_warnings(counts, train_classes(cfg).names, where)]


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
