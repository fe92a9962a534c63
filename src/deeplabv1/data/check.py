"""``deeplabv1 data check``: validate one split of a VOC-layout dataset and name every problem.

Checks, for each id of the split: the image exists and its header is readable, the label PNG
exists, is a palette/grayscale PNG of the image's size and holds only 0..num_classes-1 and 255.
Reading is done by a thread pool (PIL releases the GIL while decoding).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from deeplabv1.data.datasets import find_image
from deeplabv1.data.palette import read_label_png
from deeplabv1.data.voc import default_label_dir, read_ids, resolve_voc_root, split_list_path
from deeplabv1.errors import DeepLabError


@dataclasses.dataclass
class CheckResult:
    """Outcome of ``check_dataset``: problems by kind (messages naming files) and class counts."""

    root: Path
    split: str
    num_images: int
    problems: dict[str, list[str]]
    pixel_counts: Counter

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.root} {self.split}: {self.num_images:,} images"]
        for kind, msgs in self.problems.items():
            if msgs:
                lines.append(f"  {len(msgs):,} {kind}:")
                lines += [f"    {m}" for m in msgs[:limit]]
                if len(msgs) > limit:
                    lines.append(f"    ... and {len(msgs) - limit:,} more")
        if self.ok:
            classes = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.pixel_counts.items()))
            lines.append(f"  OK; label pixels per value: {classes}")
        return "\n".join(lines)


def _check_one(image_dir: Path, label_dir: Path, sid: str, num_classes: int):
    image = find_image(image_dir, sid)
    if not image.is_file():
        return "missing images", str(image), None
    try:
        with Image.open(image) as img:
            size = img.size
    except OSError as exc:
        return "unreadable images", f"{image}: {exc}", None
    label = label_dir / f"{sid}.png"
    if not label.is_file():
        return "missing labels", str(label), None
    try:
        labels = read_label_png(label, num_classes)
    except DeepLabError as exc:
        return "bad labels", str(exc), None
    if (labels.shape[1], labels.shape[0]) != size:
        msg = f"{label}: size {labels.shape[1]}x{labels.shape[0]}, image {size[0]}x{size[1]}"
        return "size mismatches", msg, None
    values, counts = np.unique(labels, return_counts=True)
    return None, None, Counter(dict(zip(values.tolist(), counts.tolist())))


def check_dataset(
    root: str | os.PathLike,
    split: str,
    label_dir: str | None = None,
    num_classes: int = 21,
    workers: int = 4,
) -> CheckResult:
    """Validate ``split`` of the VOC-layout ``root``; see the module doc."""
    voc = resolve_voc_root(root)
    ids = read_ids(split_list_path(voc, split))
    labels = voc / (label_dir or default_label_dir(split))
    if not labels.is_dir():
        raise DeepLabError(f"{labels}: label folder not found")
    kinds = ("missing images", "unreadable images", "missing labels", "bad labels",
             "size mismatches", "duplicate ids")  # fmt: skip
    problems: dict[str, list[str]] = {k: [] for k in kinds}
    dupes = [sid for sid, n in Counter(ids).items() if n > 1]
    problems["duplicate ids"] = [f"{sid} listed more than once" for sid in dupes]
    total: Counter = Counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        args = [(voc / "JPEGImages", labels, sid, num_classes) for sid in ids]
        for kind, msg, values in pool.map(lambda a: _check_one(*a), args):
            if kind is not None:
                problems[kind].append(msg)
            else:
                total.update(values)
    return CheckResult(voc, split, len(ids), problems, total)
