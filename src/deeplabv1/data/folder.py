"""A plain dataset folder: ``images/`` + ``masks/`` holding files with the same stems.

    mydata/images/<stem>.jpg            (or .jpeg, .png)
    mydata/masks/<stem>.png             class indices (palette or 8-bit grey PNG), 255 = void
    mydata/classes.yaml | classes.txt   optional: class names and colours (data.classes)
    mydata/train.txt, mydata/val.txt    optional split lists, one stem per line

Splits: ``all`` (every image), a list ``<root>/<split>.txt`` (or a path to a .txt list), or,
with ``val_fraction``, ``train`` / ``val`` cut deterministically: the stems are ordered by their
SHA-1 digest and the first ``round(N * val_fraction)`` (at least one) are val. The cut depends
on the stems only, so ``train`` and ``eval`` given the same fraction agree on any machine, and
adding images to the folder moves few of the others.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from deeplabv1.data.voc import read_ids
from deeplabv1.errors import DeepLabError

IMAGES_DIR = "images"
MASKS_DIR = "masks"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FRACTION_SPLITS = ("train", "val")


def list_image_stems(image_dir: str | os.PathLike) -> list[str]:
    """Sorted stems of the JPEG/PNG files in ``image_dir``; two files with one stem are an error."""
    image_dir = Path(image_dir)
    seen: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in seen:
            raise DeepLabError(f"{path}: same stem as {seen[path.stem].name}; masks are matched "
                               "by stem, so keep one image per stem")  # fmt: skip
        seen[path.stem] = path
    return sorted(seen)


def fraction_split(stems: list[str], val_fraction: float) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``: the SHA-1-ordered first ``round(N * f)`` stems (at
    least one, at most N - 1) are val; each list keeps ``stems``' sorted order."""
    if not 0.0 < val_fraction < 1.0:
        raise DeepLabError(f"val_fraction (--val-fraction) must lie in (0, 1), got {val_fraction}")
    if len(stems) < 2:
        raise DeepLabError(f"--val-fraction needs at least 2 images to split, found {len(stems)}")
    ordered = sorted(stems, key=lambda s: (hashlib.sha1(os.fsencode(s)).hexdigest(), s))
    n_val = min(max(1, round(len(stems) * val_fraction)), len(stems) - 1)
    val = set(ordered[:n_val])
    return {"train": sorted(s for s in stems if s not in val), "val": sorted(val)}


def folder_split_ids(
    root: str | os.PathLike, split: str, val_fraction: float | None = None
) -> list[str]:
    """The stems of ``split`` in the plain dataset folder ``root`` (see the module docstring)."""
    root = Path(root)
    as_path = Path(split)
    if as_path.suffix == ".txt" and as_path.is_file():
        return read_ids(as_path)
    listed = root / f"{split}.txt"
    if listed.is_file():
        if val_fraction is not None:
            raise DeepLabError(f"{listed}: a split list exists and --val-fraction is set; "
                               "use one or the other")  # fmt: skip
        return read_ids(listed)
    stems = list_image_stems(root / IMAGES_DIR)
    if split == "all":
        return stems
    if val_fraction is not None and split in FRACTION_SPLITS:
        return fraction_split(stems, val_fraction)[split]
    if val_fraction is not None:
        raise DeepLabError(f"{root}: --val-fraction makes the splits train and val, not {split!r}")
    raise DeepLabError(
        f"{root}: no split list {split}.txt; write one (one image stem per line), pass "
        "--val-fraction F to cut train/val, or use --split all"
    )


def unpaired_ids(
    image_dir: Path, label_dir: Path | None, ids: list[str]
) -> tuple[list[str], list[str]]:
    """``(ids without an image, ids with an image but without a mask)``, in ``ids`` order (a
    split list may name stems that have neither: those count as missing images only)."""
    from deeplabv1.data.datasets import find_image, find_label

    no_image = [i for i in ids if not find_image(image_dir, i).is_file()]
    missing = set(no_image)
    no_mask = [] if label_dir is None else [
        i for i in ids if i not in missing and not find_label(label_dir, i).is_file()]  # fmt: skip
    return no_image, no_mask


def masks_without_images(label_dir: Path, stems: list[str]) -> list[Path]:
    """The masks (``<stem>.png``) of ``label_dir`` whose stem is not among the image ``stems``."""
    known = set(stems)
    return sorted(p for p in label_dir.iterdir()
                  if p.suffix.lower() == ".png" and not p.name.startswith(".")
                  and p.stem not in known)  # fmt: skip
