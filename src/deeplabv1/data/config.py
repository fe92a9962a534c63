"""Typed settings of ``deeplabv1 data prepare|download|synth|check`` (no heavy imports here).

Values come from the dataclass defaults < ``--config FILE.yaml`` < flags
(``deeplabv1.config.resolve_config``); field help strings are the ``--help`` text. ``prepare``,
``download`` and ``synth`` save the resolved config (``deeplabv1.config.save_config``) beside
what they wrote, under the names below; ``check`` writes nothing. ``validate()`` rejects
impossible values with a message naming the setting and its flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from deeplabv1.errors import DeepLabError

# where each command saves its resolved config (relative to the folder named in its docstring)
PREPARE_CONFIG_NAME = "prepare_config.yaml"
DOWNLOAD_CONFIG_NAME = "download_config.yaml"
SYNTH_CONFIG_NAME = "synth_config.yaml"

ARCHIVE = Literal["voc2012", "sbd"]  # = the keys of deeplabv1.data.download.ARCHIVES
ARCHIVE_NAMES: tuple[str, ...] = get_args(ARCHIVE)
MAX_NUM_CLASSES = 255  # label values 0..254 are classes, 255 is void
SYNTH_MAX_CLASSES = 21  # synthetic labels use the VOC class indices (background + 20)


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


def _require(ok: bool, action: str, name: str, problem: str) -> None:
    """Raise ``DeepLabError("<action>: <name> (--<flag>) <problem>")`` unless ``ok``."""
    if not ok:
        raise DeepLabError(f"{action}: {name} (--{name.replace('_', '-')}) {problem}")


def _check_num_classes(action: str, num_classes: int, top: int = MAX_NUM_CLASSES) -> None:
    _require(2 <= num_classes <= top, action, "num_classes",
             f"must lie in 2..{top} (background included), got {num_classes}")  # fmt: skip


def _check_workers(action: str, workers: int) -> None:
    _require(workers >= 0, action, "workers", f"must be >= 0 (0 counts as 1), got {workers}")


@dataclass
class PrepareConfig:
    """Merge VOC2012 + SBD into SegmentationClassAug/ and the train_aug / trainval_aug lists.

    The resolved config is saved as ImageSets/Segmentation/prepare_config.yaml of the output
    root, beside the lists it wrote.
    """

    voc: str | None = _f(None, "VOCdevkit/VOC2012 (or a parent); required")
    sbd: str | None = _f(None, "benchmark_RELEASE (or its dataset/); required")
    out: str | None = _f(None, "output root (default: the VOC root itself)")
    workers: int = _f(1, "processes for the label conversion (0 counts as 1)")
    strict: bool = _f(False, "require the list sizes of the full official releases")
    num_classes: int = _f(21, "number of classes, background included (labels 0..N-1, 255)")
    overwrite: bool = _f(False, "replace label files and lists that deeplabv1 did not write")

    def validate(self) -> None:
        """Reject missing folders and impossible values, naming the setting."""
        for name in ("voc", "sbd"):
            _require(getattr(self, name) is not None, "prepare", name,
                     "is required (a flag or a key of the --config file)")  # fmt: skip
        _check_workers("prepare", self.workers)
        _check_num_classes("prepare", self.num_classes)


@dataclass
class DownloadConfig:
    """Fetch the VOC2012 and SBD archives, verify their md5 and extract them safely.

    The resolved config is saved as download_config.yaml in the root folder.
    """

    root: str | None = _f(None, "folder for archives and datasets; required")
    source: str | None = _f(
        None, "mirror: a URL or a folder holding the archive files by their names")
    only: list[ARCHIVE] | None = _f(
        None, "fetch only this archive (repeatable; default: voc2012 and sbd)")
    voc2012_md5: str | None = _f(None, "expected md5 of the VOC2012 archive (default: official)")
    sbd_md5: str | None = _f(None, "expected md5 of the SBD archive (default: official)")
    extract: bool = _f(True, "extract the archives (--no-extract: download and verify only)")
    overwrite: bool = _f(False, "replace files under root whose contents differ from the "
                         "archive's (a file is never replaced by a folder or the reverse)")

    def validate(self) -> None:
        """Reject a missing root, an empty archive list and malformed checksums."""
        _require(self.root is not None, "download", "root",
                 "is required (a flag or a key of the --config file)")  # fmt: skip
        _require(self.only is None or len(self.only) > 0, "download", "only",
                 "names no archive; leave it out to fetch voc2012 and sbd")  # fmt: skip
        for name in ("voc2012_md5", "sbd_md5"):
            value = getattr(self, name)
            _require(value is None or re.fullmatch(r"[0-9a-fA-F]{32}", value) is not None,
                     "download", name, f"must be 32 hexadecimal digits, got {value!r}")  # fmt: skip

    def archive_names(self) -> list[str]:
        """The archives to fetch, in order."""
        return list(self.only) if self.only else list(ARCHIVE_NAMES)

    def md5_overrides(self) -> dict[str, str]:
        """Expected checksums given by the user (lower case), per archive name."""
        given = {"voc2012": self.voc2012_md5, "sbd": self.sbd_md5}
        return {k: v.lower() for k, v in given.items() if v}


@dataclass
class SynthConfig:
    """Write a small synthetic dataset in the VOC2012 layout (for demos and tests).

    The resolved config is saved as synth_config.yaml in the output root.
    """

    out: str | None = _f(None, "output root; required")
    num: int = _f(200, "number of images")
    size: tuple[int, int] = _f((160, 120), "image width and height in pixels (at least 16)")
    seed: int = _f(0, "seed: image i depends only on (seed, i)")
    num_classes: int = _f(6, "number of classes, background included (2..21)")
    val_fraction: float = _f(0.25, "fraction of the ids (the last ones) listed as val, in [0, 1)")
    void_width: int = _f(4, "void band width in pixels (0 = no band)")
    overwrite: bool = _f(False, "replace changed files in a folder data synth wrote before (a "
                              "folder it did not write is refused even so)")

    def validate(self) -> None:
        """Reject impossible values, naming the setting."""
        _require(self.out is not None, "synth", "out",
                 "is required (a flag or a key of the --config file)")  # fmt: skip
        _require(self.num >= 1, "synth", "num", f"must be >= 1, got {self.num}")
        _require(len(self.size) == 2 and min(self.size) >= 16, "synth", "size",
                 f"must be two numbers W H, each at least 16, got {list(self.size)}")  # fmt: skip
        _require(self.seed >= 0, "synth", "seed", f"must be >= 0, got {self.seed}")
        _check_num_classes("synth", self.num_classes, SYNTH_MAX_CLASSES)
        _require(0.0 <= self.val_fraction < 1.0, "synth", "val_fraction",
                 f"must lie in [0, 1), got {self.val_fraction}")  # fmt: skip
        _require(self.void_width >= 0, "synth", "void_width",
                 f"must be >= 0, got {self.void_width}")  # fmt: skip


@dataclass
class CheckConfig:
    """Validate a split: missing files, unreadable images, bad label values, size mismatches
    (with --split all in a plain folder, also masks without an image), and masks that look
    wrong (a class never present; void where objects should be).

    Writes nothing (the report goes to standard output). Exit status: 0 when it prints OK (no
    problems, no warnings), 1 when it lists problems, 3 when it prints warnings only (the files
    read fine but the masks look wrong), 2 when it cannot check (bad arguments, no dataset).
    """

    root: str | None = _f(
        None, "dataset root: a plain images/ + masks/ folder or a VOC2012-layout root; required")
    split: str = _f("val", "split: a list name (VOC: under ImageSets/Segmentation; plain folder: "
                    "<root>/<split>.txt, or train/val with --val-fraction, or all) or a .txt path")
    label_dir: str | None = _f(
        None, "label folder (default: masks/ in a plain folder; VOC: SegmentationClassAug for "
        "*_aug splits, else SegmentationClass)")
    num_classes: int | None = _f(
        None, "number of classes, background included (labels 0..N-1, 255); default: as many as "
        "the dataset's classes file names, else 21")
    val_fraction: float | None = _f(
        None, "plain folder without split lists: the fraction of images (a fixed, hash-based "
        "choice) that makes the val split; the rest is train")
    workers: int = _f(4, "reader threads (0 counts as 1)")

    def validate(self) -> None:
        """Reject a missing root and impossible values, naming the setting."""
        _require(self.root is not None, "check", "root",
                 "is required (a flag or a key of the --config file)")  # fmt: skip
        if self.num_classes is not None:
            _check_num_classes("check", self.num_classes)
        _require(self.val_fraction is None or 0.0 < self.val_fraction < 1.0, "check",
                 "val_fraction", f"must lie in (0, 1), got {self.val_fraction}")  # fmt: skip
        _check_workers("check", self.workers)
