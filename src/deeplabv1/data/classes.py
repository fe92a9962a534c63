"""Class names and colours of a dataset or a model: defaults, the classes file, checks.

A dataset root (a plain ``images/`` + ``masks/`` folder or a VOC2012-layout root) may hold a
classes file naming its classes in index order, with optional colours:

- ``classes.txt``: one class per line, index = line number from 0; a line may end with a colour
  ``#rrggbb`` (``cat #ff0000``). Blank lines and lines starting with ``#`` are skipped.
- ``classes.yaml`` (or ``.yml``): a list (or ``classes:`` holding a list) whose entries are names
  or mappings ``{name: cat, color: [255, 0, 0]}`` (``color`` may be ``"#ff0000"``).

Without one, the names are PASCAL VOC's for 21 classes and ``class0``, ``class1``, ... otherwise;
a class without a colour gets the VOCdevkit colour of its index. Value 255 is always void.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplabv1.data.palette import VOC_CLASSES, VOC_COLORMAP
from deeplabv1.errors import DeepLabError

CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.txt")
_HEX = re.compile(r"#([0-9a-fA-F]{6})")


@dataclass(frozen=True)
class ClassInfo:
    """Names (index order) and RGB colours (``(num_classes, 3)`` uint8) plus where they came
    from (a file path, ``--class-names``, a checkpoint, or ``default``)."""

    names: tuple[str, ...]
    colors: np.ndarray
    source: str = "default"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def colormap(self) -> np.ndarray:
        """A 256-entry colour map: these colours for 0..N-1, the VOCdevkit map elsewhere."""
        return colormap_for(self.colors)

    def palette(self) -> list[list[int]]:
        """The colours as plain lists (what checkpoints and JSON files store)."""
        return self.colors.astype(int).tolist()


def default_class_names(num_classes: int) -> list[str]:
    """PASCAL VOC's names for 21 classes, ``class0 .. class{N-1}`` otherwise."""
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class{i}" for i in range(num_classes)]


def default_colors(num_classes: int) -> np.ndarray:
    """The VOCdevkit colours of indices 0..N-1."""
    return VOC_COLORMAP[:num_classes].copy()


def colormap_for(colors: np.ndarray | Sequence | None) -> np.ndarray:
    """A (256, 3) uint8 colour map: ``colors`` for the first indices, VOC's for the rest."""
    cmap = VOC_COLORMAP.copy()
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        cmap[: len(colors)] = colors
    return cmap


def default_classes(num_classes: int) -> ClassInfo:
    """The names and colours a model or dataset gets when nothing names its classes."""
    return ClassInfo(tuple(default_class_names(num_classes)), default_colors(num_classes))


def check_class_names(names: Sequence, num_classes: int | None, where: str) -> tuple[str, ...]:
    """Names as a tuple of non-empty, distinct strings (``num_classes`` of them, if given)."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DeepLabError(f"{where}: class names must be a list, got {type(names).__name__}")
    # YAML reads `1` as an int (fine as a name) and `no` as a bool (surely not meant)
    out = tuple(
        str(n).strip() if isinstance(n, str | int) and not isinstance(n, bool) else n for n in names
    )
    bad = [n for n in out if not isinstance(n, str) or not n]
    if bad:
        raise DeepLabError(f"{where}: class names must be non-empty strings, got {bad[0]!r}")
    if num_classes is not None and len(out) != num_classes:
        raise DeepLabError(f"{where}: {len(out)} class names for {num_classes} classes")
    if not 2 <= len(out) <= 255:
        raise DeepLabError(f"{where}: {len(out)} class(es); 2..255 are needed (background "
                           "included; 255 is void)")  # fmt: skip
    dupes = sorted({n for n in out if out.count(n) > 1})
    if dupes:
        raise DeepLabError(f"{where}: class names must be distinct; repeated: {', '.join(dupes)}")
    return out


def parse_color(value, where: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` or ``[r, g, b]`` (0..255 each) -> an RGB tuple."""
    match = _HEX.fullmatch(value.strip()) if isinstance(value, str) else None
    if match:
        h = match.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if (not isinstance(value, str) and isinstance(value, Sequence) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                    for v in value)):  # fmt: skip
        return int(value[0]), int(value[1]), int(value[2])
    raise DeepLabError(f"{where}: colour must be '#rrggbb' or [r, g, b] in 0..255, got {value!r}")


def _from_entries(entries: list, path: Path) -> ClassInfo:
    names, colors = [], []
    for k, entry in enumerate(entries):
        where = f"{path}: class {k}"
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - {"name", "color", "colour"})
            if unknown or "name" not in entry:
                raise DeepLabError(f"{where}: expected keys name and optional color, got "
                                   f"{sorted(entry)}")  # fmt: skip
            names.append(entry["name"])
            color = entry.get("color", entry.get("colour"))
            colors.append(None if color is None else parse_color(color, where))
        else:
            names.append(entry)
            colors.append(None)
    checked = check_class_names(names, None, str(path))
    rgb = default_colors(len(checked))
    for k, color in enumerate(colors):
        if color is not None:
            rgb[k] = color
    return ClassInfo(checked, rgb, str(path))


def read_classes_file(path: str | os.PathLike) -> ClassInfo:
    """Read a ``classes.txt`` or ``classes.yaml`` (see the module docstring); errors name it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeepLabError(f"{path}: cannot read the classes file ({exc})") from exc
    if path.suffix == ".txt":
        entries: list = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, last = line.rpartition(" ")
            if name and _HEX.fullmatch(last):
                entries.append({"name": name.strip(), "color": last})
            else:
                entries.append(line)
        return _from_entries(entries, path)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeepLabError(f"{path}: not valid YAML ({exc})") from exc
    except RecursionError:  # PyYAML composes nested collections recursively
        raise DeepLabError(f"{path}: not valid YAML (collections nested too deeply)") from None
    if isinstance(data, dict) and set(data) == {"classes"}:
        data = data["classes"]
    if not isinstance(data, list):
        raise DeepLabError(f"{path}: expected a list of class names (or classes: [...])")
    return _from_entries(data, path)


def find_classes_file(root: str | os.PathLike) -> Path | None:
    """The classes file in ``root`` (first of classes.yaml, classes.yml, classes.txt), if any."""
    for name in CLASSES_FILES:
        cand = Path(root) / name
        if cand.is_file():
            return cand
    return None


def dataset_classes(root: str | os.PathLike) -> ClassInfo | None:
    """The classes file of dataset folder ``root`` read, or None when it has none."""
    path = find_classes_file(root)
    return None if path is None else read_classes_file(path)


def stored_classes(names, palette, num_classes: int, where: str) -> ClassInfo:
    """Classes stored in a checkpoint or score folder (``class_names`` / ``palette`` entries),
    checked; missing entries fall back to the defaults."""
    if names is None:
        checked = tuple(default_class_names(num_classes))
        source = "default"
    else:
        checked = check_class_names(names, num_classes, where)
        source = where
    if palette is None:
        return ClassInfo(checked, default_colors(num_classes), source)
    if not isinstance(palette, Sequence) or len(palette) != num_classes:
        raise DeepLabError(f"{where}: palette must hold {num_classes} [r, g, b] colours")
    colors = np.array([parse_color(c, f"{where}: palette") for c in palette], dtype=np.uint8)
    return ClassInfo(checked, colors.reshape(-1, 3), source)


def resolve_classes(
    found: ClassInfo | None, num_classes: int | None, class_names: Sequence[str] | None = None
) -> ClassInfo:
    """The classes of a run: ``class_names`` (``--class-names``; colours from ``found`` when it
    names as many), else ``found`` (a dataset's classes file), else the defaults for
    ``num_classes`` (21 when None). ``found`` naming other than ``num_classes`` is an error
    unless ``class_names`` override it."""
    if (class_names is None and found is not None and num_classes is not None
            and found.num_classes != num_classes):  # fmt: skip
        raise DeepLabError(f"{found.source}: names {found.num_classes} classes, but num_classes "
                           f"(--num-classes) is {num_classes}")  # fmt: skip
    if class_names is not None:
        names = check_class_names(class_names, num_classes, "class_names (--class-names)")
        same = found is not None and found.num_classes == len(names)
        return ClassInfo(names, found.colors if same else default_colors(len(names)),
                         "--class-names")  # fmt: skip
    if found is not None:
        return found
    return default_classes(21 if num_classes is None else num_classes)
