"""Which layout a dataset root has, and the image folder, label folder and ids of one split.

Every command that reads a labelled dataset (``train``, ``eval``, ``crf-search``, ``data check``)
accepts both layouts, recognised by their folders:

- VOC2012 (``deeplabv1.data.voc``): ``JPEGImages/`` in the root, in ``VOC2012/`` or in
  ``VOCdevkit/VOC2012/``; labels in ``SegmentationClass(Aug)/``; lists in
  ``ImageSets/Segmentation/<split>.txt``.
- a plain folder (``deeplabv1.data.folder``): ``images/`` + ``masks/`` with the same stems.

Either root may hold a classes file (``deeplabv1.data.classes``). A root holding both layouts
is an error (which one is meant cannot be told).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deeplabv1.data import folder, voc
from deeplabv1.errors import DeepLabError

Layout = Literal["voc", "folder"]


@dataclass(frozen=True)
class DatasetSplit:
    """One split of a dataset: where its images and labels are and which ids it lists."""

    layout: Layout
    root: Path
    split: str
    image_dir: Path
    label_dir: Path | None
    ids: list[str]


def detect_layout(root: str | os.PathLike) -> tuple[Layout, Path]:
    """``("voc", VOC2012 folder)`` or ``("folder", root)``; otherwise an error saying what a
    dataset folder needs."""
    root = Path(root)
    plain = (root / folder.IMAGES_DIR).is_dir()
    try:
        base = voc.resolve_voc_root(root)
    except DeepLabError:
        pass
    else:
        if plain:
            raise DeepLabError(
                f"{root}: holds both a plain dataset ({folder.IMAGES_DIR}/ + {folder.MASKS_DIR}/) "
                f"and a VOC2012 layout ({base / 'JPEGImages'}); keep one layout per dataset folder"
            )
        return "voc", base
    if plain:
        return "folder", root
    if not root.exists():
        raise DeepLabError(f"{root}: dataset folder not found")
    raise DeepLabError(
        f"{root}: not a dataset folder: expected images/ + masks/ (a plain dataset) or "
        "JPEGImages/ (VOC2012 layout; also looked in VOC2012/ and VOCdevkit/VOC2012/)"
    )


def input_folders(
    root: str | os.PathLike, label_dir: str | None = None, split: str | None = None
) -> list[Path]:
    """The dataset's folders that hold its inputs (images, labels, split lists) and the folders
    between the root and them, the root included: no command's outputs belong there. A root
    that is no dataset (yet) gives the root alone."""
    root = Path(root)
    try:
        layout, base = detect_layout(root)
    except DeepLabError:
        return [root]
    if layout == "voc":
        inside = [base / "JPEGImages", base / voc.VOC_LABEL_DIR, base / voc.AUG_LABEL_DIR,
                  base / voc.SEGMENTATION_LISTS]  # fmt: skip
    else:
        inside = [base / folder.IMAGES_DIR, base / folder.MASKS_DIR]
    if label_dir is not None and str(label_dir).lower() != "none":
        inside.append(base / label_dir)  # an absolute label_dir replaces base
    if split is not None and Path(split).suffix == ".txt":
        inside.append(Path(split).parent)  # a split list given as a path
    found = [root]
    for path in inside:
        found.append(path)
        found += [p for p in path.parents if root in p.parents]  # those between root and path
    return list(dict.fromkeys(found))


def dataset_of_image_folder(path: str | os.PathLike) -> Path | None:
    """The dataset root whose image folder (``images/`` of a plain dataset, ``JPEGImages/`` of
    a VOC2012 one) ``path`` is, or None."""
    path = Path(os.path.realpath(path))
    if path.name not in (folder.IMAGES_DIR, "JPEGImages"):
        return None
    try:
        layout, base = detect_layout(path.parent)
    except DeepLabError:
        return None
    image_dir = base / ("JPEGImages" if layout == "voc" else folder.IMAGES_DIR)
    return base if image_dir.resolve() == path else None


def default_train_split(root: str | os.PathLike) -> str:
    """``train_aug`` for a VOC2012 root (the paper's), ``train`` for a plain folder."""
    return "train_aug" if detect_layout(root)[0] == "voc" else "train"


def _label_folder(base: Path, name: str | None, default: str, layout: Layout) -> Path | None:
    if name is not None and str(name).lower() == "none":
        return None
    path = base / (name or default)  # an absolute `name` replaces base
    if not path.is_dir():
        what = "mask folder" if layout == "folder" else "label folder"
        hint = " (a plain dataset holds images/ and masks/ with the same stems)" if (
            layout == "folder" and name is None) else ""  # fmt: skip
        raise DeepLabError(f"{path}: {what} not found{hint}")
    return path


def resolve_split(
    root: str | os.PathLike,
    split: str,
    label_dir: str | None = None,
    val_fraction: float | None = None,
) -> DatasetSplit:
    """The folders and ids of ``split`` in ``root`` (either layout).

    ``label_dir``: a folder name under the root or a path; ``"none"`` reads no labels; by
    default ``masks`` (plain) or SegmentationClassAug / SegmentationClass by split (VOC).
    ``val_fraction``: cut ``train`` / ``val`` from a plain folder (``deeplabv1.data.folder``).
    """
    layout, base = detect_layout(root)
    if layout == "voc":
        if val_fraction is not None:
            raise DeepLabError(f"{base}: --val-fraction applies to a plain images/ + masks/ "
                               "folder; a VOC2012 root has its split lists")  # fmt: skip
        ids = voc.read_ids(voc.split_list_path(base, split))
        labels = _label_folder(base, label_dir, voc.default_label_dir(split), layout)
        return DatasetSplit(layout, base, split, base / "JPEGImages", labels, ids)
    labels = _label_folder(base, label_dir, folder.MASKS_DIR, layout)
    ids = folder.folder_split_ids(base, split, val_fraction)
    return DatasetSplit(layout, base, split, base / folder.IMAGES_DIR, labels, ids)
