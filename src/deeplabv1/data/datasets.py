"""Segmentation datasets: image + palette-label pairs read by id, with per-item seeded augmentation.

Item ``i`` of epoch ``e`` draws its augmentation from ``np.random.default_rng([seed, e, i])``:
the same crop and mirror whatever the number of workers, the order of loading or a resume.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from deeplabv1.data.palette import IGNORE_INDEX, read_label_png
from deeplabv1.data.transforms import TestTransform
from deeplabv1.data.voc import default_label_dir, read_ids, resolve_voc_root, split_list_path
from deeplabv1.errors import DeepLabError
from deeplabv1.io import regular_file

__all__ = [
    "SegmentationDataset", "find_image", "find_label", "open_dataset", "read_ids", "read_image",
    "voc_dataset",
]  # fmt: skip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
LABEL_SUFFIXES = (".png", ".PNG")  # images pair in either case; so do their masks


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a JPEG/PNG image as RGB uint8 (H, W, 3); errors name the file."""
    path = Path(path)
    regular_file(path, "image file")  # a FIFO would be waited on forever
    try:
        with Image.open(path) as img:
            img.load()
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: image file not found") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DeepLabError(f"{path}: cannot read image ({exc})") from exc
    return rgb


@functools.lru_cache(maxsize=8)
def _names_by_stem(folder: Path, mtime_ns: int) -> dict[str, list[str]]:
    """The file names of ``folder`` by stem (cached while the folder's entries are unchanged:
    its modification time changes with them)."""
    names: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        names.setdefault(Path(name).stem, []).append(name)
    return names


def _find(folder: Path, sid: str, suffixes: tuple[str, ...]) -> Path | None:
    """``folder/<sid><suffix>`` for the first of ``suffixes`` that exists, else a file of that
    stem whose suffix is one of them in another case (``.Jpg``; the folder is listed only when
    nothing else matched, once while it is unchanged), else None."""
    for suffix in suffixes:
        cand = folder / f"{sid}{suffix}"
        if cand.is_file():
            return cand
    wanted = {s.lower() for s in suffixes}
    try:
        names = _names_by_stem(folder, folder.stat().st_mtime_ns).get(sid, [])
    except OSError:
        return None
    found = [folder / n for n in names if Path(n).suffix.lower() in wanted]
    return next((p for p in found if p.is_file()), None)


def find_image(image_dir: Path, sid: str) -> Path:
    """``image_dir/<sid>.jpg`` (VOC), or the first other image suffix that exists, in any case."""
    found = _find(image_dir, sid, IMAGE_SUFFIXES)
    # the VOC name when there is none: reading it gives the 'not found' error
    return image_dir / f"{sid}.jpg" if found is None else found


def find_label(label_dir: Path, sid: str) -> Path:
    """``label_dir/<sid>.png``, or ``<sid>.PNG`` (any case) when only that exists (as images,
    masks pair by stem in any case); the ``.png`` name when none does (for the 'not found'
    error)."""
    found = _find(label_dir, sid, LABEL_SUFFIXES)
    return label_dir / f"{sid}.png" if found is None else found


class SegmentationDataset:
    """(image, label) pairs ``image_dir/<id>.jpg`` + ``label_dir/<id>.png`` through ``transform``.

    ``transform(rgb, labels, rng)`` is a ``TrainTransform`` or ``TestTransform``. Items are dicts:
    the transform's output plus ``id``. ``label_dir=None`` (unlabelled images, e.g. the VOC test
    set) gives all-255 labels. Labels are checked against ``num_classes`` (values other than
    0..num_classes-1 and 255 are an error naming the file).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        label_dir: str | os.PathLike | None,
        ids: Sequence[str],
        transform: Callable | None = None,
        num_classes: int = 21,
        seed: int = 0,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.label_dir = None if label_dir is None else Path(label_dir)
        self.ids = list(ids)
        self.transform = transform if transform is not None else TestTransform(None)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"SegmentationDataset({len(self)} images, images={self.image_dir}, "
                f"labels={self.label_dir}, {self.transform!r})")

    def image_path(self, index: int) -> Path:
        return find_image(self.image_dir, self.ids[index])

    def label_path(self, index: int) -> Path | None:
        return None if self.label_dir is None else find_label(self.label_dir, self.ids[index])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw RGB image and uint8 label map of item ``index`` (no transform)."""
        img_path = self.image_path(index)
        rgb = read_image(img_path)
        lab_path = self.label_path(index)
        if lab_path is None:
            return rgb, np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        labels = read_label_png(lab_path, self.num_classes)
        if labels.shape != rgb.shape[:2]:
            raise DeepLabError(
                f"{lab_path}: label size {labels.shape[1]}x{labels.shape[0]} differs from image "
                f"{img_path} size {rgb.shape[1]}x{rgb.shape[0]}"
            )
        return rgb, labels

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.ids):
            raise IndexError(index)
        rgb, labels = self.load(index)
        item = dict(self.transform(rgb, labels, self.rng(index)))
        item["id"] = self.ids[index]
        return item


def voc_dataset(
    voc_root: str | os.PathLike,
    split: str,
    label_dir: str | None = None,
    transform: Callable | None = None,
    num_classes: int = 21,
    seed: int = 0,
) -> SegmentationDataset:
    """The ``split`` of a VOC2012-layout root (VOC2012, VOCdevkit or its parent).

    The list is ``ImageSets/Segmentation/<split>.txt`` (or ``split`` given as a .txt path).
    ``label_dir`` is a folder name under the root (or a path); by default SegmentationClassAug
    for the merged ``*_aug`` splits written by ``deeplabv1 data prepare``, else
    SegmentationClass. ``label_dir="none"`` reads no labels (all 255).
    """
    root = resolve_voc_root(voc_root)
    ids = read_ids(split_list_path(root, split))
    if label_dir is None:
        label_dir = default_label_dir(split)
    labels = None if str(label_dir).lower() == "none" else root / label_dir
    if labels is not None and not labels.is_dir():
        raise DeepLabError(f"{labels}: label folder not found")
    return SegmentationDataset(root / "JPEGImages", labels, ids, transform, num_classes, seed)


def open_dataset(
    root: str | os.PathLike,
    split: str,
    label_dir: str | None = None,
    transform: Callable | None = None,
    num_classes: int = 21,
    seed: int = 0,
    val_fraction: float | None = None,
) -> SegmentationDataset:
    """The ``split`` of a VOC2012-layout root or a plain ``images/`` + ``masks/`` folder.

    The layout is detected (``deeplabv1.data.layout``); ``label_dir`` and ``val_fraction`` are
    as in ``deeplabv1.data.layout.resolve_split``. In a plain folder every listed id must have
    its image and its mask (the error names the first missing ones).
    """
    from deeplabv1.data.folder import unpaired_ids
    from deeplabv1.data.layout import resolve_split

    found = resolve_split(root, split, label_dir, val_fraction)
    if found.layout == "folder":
        no_image, no_mask = unpaired_ids(found.image_dir, found.label_dir, found.ids)
        if no_image:
            raise DeepLabError(f"{found.image_dir}: {len(no_image)} id(s) listed in split "
                               f"{split!r} have no image ({_first(no_image, '')})")  # fmt: skip
        if no_mask:
            raise DeepLabError(f"{found.label_dir}: {len(no_mask)} image(s) of split {split!r} "
                               f"have no mask ({_first(no_mask, '.png')})")  # fmt: skip
    return SegmentationDataset(found.image_dir, found.label_dir, found.ids, transform,
                               num_classes, seed)  # fmt: skip


def _first(stems: list[str], suffix: str) -> str:
    return ", ".join(f"{i}{suffix}" for i in stems[:3]) + (", ..." if stems[3:] else "")
