"""``deeplabv1 data check``: validate one split of a dataset and name every problem.

Either layout (``deeplabv1.data.layout``). Problems, for each id of the split: the image exists
and its header is readable, the label PNG exists, is a palette/grayscale PNG of the image's size,
and holds only 0..num_classes-1 and 255 (the values outside are listed with their pixel and file
counts); with ``--split all`` in a plain folder, also every mask without an image. Warnings
(``label_warnings``, also logged by ``deeplabv1 train``) flag masks that read fine but cannot be
what was meant: a class that never appears, or void (255) everywhere: more than half of the
pixels, or the only value besides 0 (binary masks saved as 0/255).
Reading is done by a thread pool (PIL releases the GIL while decoding).

The verdict (``CheckResult.exit_status``, the command's exit status): 0 "OK" (no problems, no
warnings), 1 problems, 3 warnings only; 2 stays the CLI's "could not check" (bad arguments, no
dataset).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from deeplabv1.data import folder
from deeplabv1.data.datasets import find_image, find_label
from deeplabv1.data.palette import IGNORE_INDEX, read_label_png
from deeplabv1.errors import DeepLabError

PROBLEM_KINDS = ("missing images", "unreadable images", "missing labels", "bad labels",
                 "label values >= num_classes", "size mismatches", "duplicate ids",
                 "masks without images")  # fmt: skip
EXIT_OK, EXIT_PROBLEMS, EXIT_WARNINGS = 0, 1, 3


@dataclasses.dataclass
class CheckResult:
    """Outcome of ``check_dataset``: problems by kind (messages naming files), warnings, the
    pixel count of every label value, and the class names the check used."""

    root: Path
    split: str
    num_images: int
    problems: dict[str, list[str]]
    pixel_counts: Counter
    class_names: Sequence[str] = ()
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_problems(self) -> int:
        return sum(len(msgs) for msgs in self.problems.values())

    @property
    def ok(self) -> bool:
        """No problems and no warnings: what "OK" means."""
        return not self.num_problems and not self.warnings

    @property
    def exit_status(self) -> int:
        """0 OK, 1 problems (warnings or not), 3 warnings only."""
        return EXIT_PROBLEMS if self.num_problems else EXIT_WARNINGS if self.warnings else EXIT_OK

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.root} {self.split}: {self.num_images:,} images"]
        for kind, msgs in self.problems.items():
            if msgs:
                lines.append(f"  {len(msgs):,} {kind}:")
                lines += [f"    {m}" for m in msgs[:limit]]
                if len(msgs) > limit:
                    lines.append(f"    ... and {len(msgs) - limit:,} more")
        lines += [f"  warning: {w}" for w in self.warnings]
        counted = _plural(len(self.warnings), "warning")
        if self.num_problems:
            lines.append(f"  {_plural(self.num_problems, 'problem')}, {counted}")
        else:
            values = ", ".join(f"{_value_name(k, self.class_names)}: {v:,}"
                               for k, v in sorted(self.pixel_counts.items()))  # fmt: skip
            verdict = "OK" if self.ok else f"no problems, {counted}"
            lines.append(f"  {verdict}; label pixels per value: {values}")
        return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _value_name(value: int, class_names: Sequence[str]) -> str:
    if value == IGNORE_INDEX:
        return "255 (void)"
    return f"{value} ({class_names[value]})" if value < len(class_names) else str(value)


def label_warnings(
    pixel_counts: Counter, class_names: Sequence[str], where: str = "the masks"
) -> list[str]:
    """Warnings about a label-value histogram (see the module docstring); [] when it looks sane.

    ``class_names`` gives the number of classes; values outside 0..N-1 and 255 are ignored here.
    """
    num_classes = len(class_names)
    total = sum(pixel_counts.values())
    if not total:
        return []
    out = []
    never = [c for c in range(num_classes) if not pixel_counts.get(c)]
    if never:
        listed = ", ".join(_value_name(c, class_names) for c in never)
        out.append(f"class(es) never present in {where}: {listed}")
    void = pixel_counts.get(IGNORE_INDEX, 0)
    objects = sum(pixel_counts.get(c, 0) for c in range(1, num_classes))
    if void and (objects == 0 or 2 * void > total):
        found = "no pixel of a class other than 0" if objects == 0 else "more than half"
        fix = "1" if num_classes == 2 else f"1..{num_classes - 1}"
        out.append(
            f"void (255) covers {100 * void / total:.1f}% of the pixels of {where} ({found}); "
            "255 is ignored in training: if it marks objects (binary masks saved as 0/255), "
            f"save them as class index {fix} instead"
        )
    return out


def scan_labels(paths: Sequence[Path], num_classes: int, workers: int = 4,
                images: Sequence[Path] | None = None) -> Counter:  # fmt: skip
    """Pixel count of every label value over ``paths`` (values are checked: an error names the
    file holding a value outside 0..num_classes-1 and 255); with ``images`` (one per mask),
    a mask whose size differs from its image's is an error naming both."""

    def count(path: Path, image: Path | None) -> Counter:
        labels = read_label_png(path, num_classes)
        if image is not None:
            _check_size(path, labels, image)
        values, counts = np.unique(labels, return_counts=True)
        return Counter(dict(zip(values.tolist(), counts.tolist())))

    total: Counter = Counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for found in pool.map(count, paths, images or [None] * len(paths)):
            total.update(found)
    return total


def _check_size(label: Path, labels: np.ndarray, image: Path) -> None:
    """Raise the training loader's error when mask and image sizes differ (the image's size
    from its header)."""
    try:
        with Image.open(image) as img:
            width, height = img.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DeepLabError(f"{image}: cannot read image ({exc})") from exc
    if labels.shape != (height, width):
        raise DeepLabError(f"{label}: label size {labels.shape[1]}x{labels.shape[0]} differs "
                           f"from image {image} size {width}x{height}")  # fmt: skip


def _check_one(image_dir: Path, label_dir: Path, sid: str):
    image = find_image(image_dir, sid)
    if not image.is_file():
        return "missing images", str(image), None
    try:
        with Image.open(image) as img:
            size = img.size
    except OSError as exc:
        return "unreadable images", f"{image}: {exc}", None
    label = find_label(label_dir, sid)
    if not label.is_file():
        return "missing labels", str(label), None
    try:
        labels = read_label_png(label, None)
    except DeepLabError as exc:
        return "bad labels", str(exc), None
    if (labels.shape[1], labels.shape[0]) != size:
        msg = f"{label}: size {labels.shape[1]}x{labels.shape[0]}, image {size[0]}x{size[1]}"
        return "size mismatches", msg, None
    values, counts = np.unique(labels, return_counts=True)
    return None, str(label), Counter(dict(zip(values.tolist(), counts.tolist())))


def check_dataset(
    root: str | os.PathLike,
    split: str,
    label_dir: str | None = None,
    num_classes: int | None = None,
    workers: int = 4,
    val_fraction: float | None = None,
) -> CheckResult:
    """Validate ``split`` of the dataset ``root`` (either layout); see the module doc.

    ``num_classes``: None = as many as the dataset's classes file names, else 21.
    """
    from deeplabv1.data.classes import dataset_classes, resolve_classes
    from deeplabv1.data.layout import resolve_split

    found = resolve_split(root, split, label_dir, val_fraction)
    if found.label_dir is None:
        raise DeepLabError("data check: needs labels (--label-dir none reads none)")
    names = resolve_classes(dataset_classes(found.root), num_classes).names
    problems: dict[str, list[str]] = {k: [] for k in PROBLEM_KINDS}
    dupes = [sid for sid, n in Counter(found.ids).items() if n > 1]
    problems["duplicate ids"] = [f"{sid} listed more than once" for sid in dupes]
    if found.layout == "folder" and split == "all":
        stems = folder.list_image_stems(found.image_dir)
        problems["masks without images"] = [
            f"{mask}: no image {mask.stem}.jpg, .jpeg or .png in {found.image_dir}"
            for mask in folder.masks_without_images(found.label_dir, stems)
        ]
    total: Counter = Counter()
    outside: dict[int, list] = {}  # value -> [pixels, masks, first mask]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        args = [(found.image_dir, found.label_dir, sid) for sid in found.ids]
        for kind, msg, values in pool.map(lambda a: _check_one(*a), args):
            if kind is not None:
                problems[kind].append(msg)
                continue
            total.update(values)
            for v in values:
                if len(names) <= v != IGNORE_INDEX:
                    entry = outside.setdefault(v, [0, 0, msg])
                    entry[0] += values[v]
                    entry[1] += 1
    problems["label values >= num_classes"] = [
        f"{v}: {px:,} pixels in {n:,} mask(s), e.g. {first} (classes are 0..{len(names) - 1}, "
        "255 is void)" for v, (px, n, first) in sorted(outside.items())
    ]
    warnings = label_warnings(total, names, f"the masks of split {split!r}")
    return CheckResult(found.root, split, len(found.ids), problems, total, names, warnings)
