"""PASCAL VOC 2012 layout: finding the dataset root, its image lists and label folders.

Accepted roots: ``VOCdevkit/VOC2012`` itself, ``VOCdevkit``, or a folder holding
``VOCdevkit`` (as the VOC tar extracts). A root is recognised by its ``JPEGImages`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from deeplabv1.errors import DeepLabError

SEGMENTATION_LISTS = Path("ImageSets") / "Segmentation"
# split -> label folder used when the caller does not name one
AUG_LABEL_DIR = "SegmentationClassAug"
VOC_LABEL_DIR = "SegmentationClass"


def resolve_voc_root(root: str | os.PathLike) -> Path:
    """The folder holding JPEGImages/, given VOC2012 itself, VOCdevkit, or VOCdevkit's parent."""
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    if not root.exists():
        raise DeepLabError(f"{root}: dataset folder not found")
    raise DeepLabError(
        f"{root}: not a VOC2012-layout folder (no JPEGImages/ in it, in VOC2012/ or in "
        "VOCdevkit/VOC2012/)"
    )


def read_ids(list_file: str | os.PathLike) -> list[str]:
    """Image ids from a list file, in file order.

    Accepts the VOC format (one id per line) and the DeepLab release format
    (``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` per line: the id is the first
    column's file stem). Blank lines are skipped.
    """
    path = Path(list_file)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: image list not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DeepLabError(f"{path}: cannot read image list ({exc})") from exc
    ids = []
    for num, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        first = fields[0]
        sid = Path(first).stem if ("/" in first or "." in Path(first).name) else first
        if not sid:
            raise DeepLabError(f"{path}:{num}: cannot read an image id from {line!r}")
        ids.append(sid)
    return ids


def write_ids(list_file: str | os.PathLike, ids: list[str]) -> None:
    """Write ids one per line (VOC format), atomically."""
    from deeplabv1.io import atomic_write_text

    atomic_write_text(list_file, "".join(f"{i}\n" for i in ids))


def split_list_path(root: Path, split: str) -> Path:
    """The list file of ``split``: ImageSets/Segmentation/<split>.txt, or ``split`` as a path."""
    cand = root / SEGMENTATION_LISTS / f"{split}.txt"
    if cand.is_file():
        return cand
    as_path = Path(split)
    if as_path.suffix == ".txt" and as_path.is_file():
        return as_path
    known = sorted(p.stem for p in (root / SEGMENTATION_LISTS).glob("*.txt"))
    hint = f"; lists there: {', '.join(known)}" if known else ""
    if split.endswith("_aug"):
        hint += "; run `deeplabv1 data prepare` to build the *_aug lists"
    raise DeepLabError(f"{cand}: no list for split {split!r}{hint}")


def default_label_dir(split: str) -> str:
    """SegmentationClassAug for the merged ``*_aug`` splits, SegmentationClass otherwise."""
    return AUG_LABEL_DIR if Path(split).stem.endswith("_aug") else VOC_LABEL_DIR
