"""The images ``deeplabv1 crf-search`` tunes on, from either source, and how one is scored.

- Saved score maps (``deeplabv1 eval --save-scores``) of a dataset's split: ``SavedImage``,
  the coarse map zoomed back to the image as the evaluator does (torch).
- Any model's scores in plain folders: ``--image-dir`` images, ``--scores-dir`` ``<stem>.npy``
  scores, ``--label-dir`` ``<stem>.png`` labels (palette or grey class indices, 255 = void).
  Images and scores are paired by stem and read exactly as ``deeplabv1 crf`` reads them
  (``deeplabv1.cli.crf_files``: ``--probabilities``, ``--channels-last``, ``--upsample``); any
  number of classes (the score files'). ``FolderImage`` keeps the image and labels and re-reads
  its scores for every point (full-resolution scores of 100 images would take gigabytes per
  worker). On the CPU with the lattice method this path never imports torch.

A ``Tuning`` is what a search runs on: the image ids, the class count, a picklable loader that
each worker process calls once, and the setup fingerprint that ``--resume`` checks.
``unary_record`` scores the arg-max of the scores alone: the baseline the CRF's gain is
measured against.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplabv1.errors import DeepLabError


@dataclass
class Tuning:
    """What a search runs on (see the module doc)."""

    ids: list[str]
    num_classes: int
    loader: Callable[[], list]
    setup: dict


def ids_digest(ids: list[str]) -> str:
    """A short fingerprint of the image ids, in order."""
    return hashlib.sha1(os.fsencode("\n".join(ids))).hexdigest()[:16]  # names in any bytes


def _labels_np(probs) -> np.ndarray:
    return probs.argmax(0).cpu().numpy() if hasattr(probs, "cpu") else probs.argmax(0)


@dataclass
class SavedImage:
    """One image of a saved-scores search: its coarse scores, RGB and labels."""

    coarse: np.ndarray
    height: int
    width: int
    factor: int
    crop: int
    rgb: np.ndarray
    labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.coarse.shape[0]

    def scores(self):
        from deeplabv1.evaluate.scores import full_scores

        return full_scores(self.coarse, self.height, self.width, self.factor, self.crop)

    def unary_labels(self) -> np.ndarray:
        return _labels_np(self.scores())

    def crf_labels(self, params, iters: int, normalization: str, method: str) -> np.ndarray:
        from deeplabv1.evaluate.evaluator import run_crf

        return run_crf(self.scores(), self.rgb, params, iters, normalization, method)


@dataclass
class FolderImage:
    """One image of a folder search: RGB and labels kept, scores re-read when needed."""

    rgb: np.ndarray
    labels: np.ndarray
    image_path: str
    scores_path: str
    num_classes: int
    options: dict  # probabilities, channels_last, upsample

    def scores(self) -> np.ndarray:
        from deeplabv1.cli.crf_files import fit_scores, load_scores

        opts = self.options
        scores = load_scores(self.scores_path, opts["probabilities"], opts["channels_last"])
        if scores.shape[0] != self.num_classes:
            raise DeepLabError(f"{self.scores_path}: {scores.shape[0]} classes, but the first "
                               f"score file has {self.num_classes}")  # fmt: skip
        return fit_scores(scores, self.scores_path, self.image_path, self.rgb.shape[:2],
                          opts["upsample"])  # fmt: skip

    def unary_labels(self) -> np.ndarray:
        return self.scores().argmax(0)

    def crf_labels(self, params, iters: int, normalization: str, method: str) -> np.ndarray:
        probabilities = self.options["probabilities"]
        if method == "lattice":
            from deeplabv1.crf import deeplab_crf_np

            return deeplab_crf_np(self.scores(), self.rgb, params, iters, normalization,
                                  probabilities=probabilities).argmax(0)  # fmt: skip
        import torch

        from deeplabv1.crf import deeplab_crf

        with torch.no_grad():
            return _labels_np(deeplab_crf(self.scores(), self.rgb, params, iters, normalization,
                                          probabilities=probabilities, method=method))  # fmt: skip


class FolderLoader:
    """Picklable zero-argument callable: the ``FolderImage`` of every (image, scores, label)
    that can be read; the others are left out, their errors in ``skipped`` ({stem: message})."""

    def __init__(self, trios: list[tuple[str, str, str, str]], num_classes: int, options: dict,
                 background: str, max_pixels: int):  # fmt: skip
        self.trios, self.num_classes, self.options = trios, num_classes, options
        self.background, self.max_pixels = background, max_pixels
        self.skipped: dict[str, str] = {}

    def __call__(self) -> list[FolderImage]:
        from deeplabv1.data.palette import read_label_png
        from deeplabv1.predict.images import load_image

        out = []
        self.skipped = {}
        for stem, image, scores, label in self.trios:
            try:
                rgb = load_image(image, background=self.background, max_pixels=self.max_pixels)
                labels = read_label_png(label, self.num_classes)
                if labels.shape != rgb.shape[:2]:
                    size = " x ".join(map(str, rgb.shape[:2]))
                    theirs = " x ".join(map(str, labels.shape))
                    raise DeepLabError(f"{label}: labels are {theirs} but image {image} is {size}")
                item = FolderImage(rgb, labels, image, scores, self.num_classes, self.options)
                item.scores()  # read once: a bad score file is left out here, not mid-search
            except DeepLabError as exc:
                self.skipped[stem] = str(exc)
                continue
            out.append(item)
        return out


def folder_tuning(cfg) -> Tuning:
    """The ``Tuning`` of ``cfg.image_dir`` / ``cfg.scores_dir`` / ``cfg.label_dir``: the first
    ``cfg.num_images`` complete trios by stem; partners missing are reported on stderr."""
    from deeplabv1.cli.crf_files import match_pairs, report_unmatched

    if not (cfg.image_dir and cfg.scores_dir and cfg.label_dir):
        raise DeepLabError("crf-search: folder mode needs --image-dir, --scores-dir and "
                           "--label-dir")  # fmt: skip
    mixed = [f for f in ("scores", "data", "val_fraction") if getattr(cfg, f) is not None]
    if mixed:
        flags = ", ".join("--" + f.replace("_", "-") for f in mixed)
        raise DeepLabError(f"crf-search: {flags} belong to saved-score searches; give either "
                           "--scores/--data or --image-dir/--scores-dir/--label-dir")  # fmt: skip
    label_dir = Path(cfg.label_dir)
    if not label_dir.is_dir():
        raise DeepLabError(f"{label_dir}: not a directory")
    pairs, no_scores, no_image, several, several_scores = match_pairs(
        Path(cfg.image_dir), Path(cfg.scores_dir))  # fmt: skip
    no_label = [s for s, _, _ in pairs if not (label_dir / f"{s}.png").is_file()]
    report = "deeplabv1 crf-search"
    report_unmatched(report, "image(s) without a score file", no_scores, cfg.scores_dir)
    report_unmatched(report, "score file(s) without an image", no_image, cfg.image_dir)
    report_unmatched(report, "pair(s) without a <stem>.png label", no_label, label_dir)
    report_unmatched(report, "stem(s) with more than one image", several, cfg.image_dir)
    report_unmatched(report, "stem(s) with more than one score file", several_scores,
                     cfg.scores_dir)  # fmt: skip
    missing = set(no_label)
    trios = [(s, str(i), str(n), str(label_dir / f"{s}.png")) for s, i, n in pairs
             if s not in missing][: cfg.num_images]  # fmt: skip
    if not trios:
        raise DeepLabError(f"{cfg.image_dir}, {cfg.scores_dir}, {label_dir}: no image / scores "
                           "/ label trios by stem")  # fmt: skip
    num_classes = _first_class_count([t[2] for t in trios], cfg)
    options = {"probabilities": cfg.probabilities, "channels_last": cfg.channels_last,
               "upsample": cfg.upsample_mode()}  # fmt: skip
    ids = [t[0] for t in trios]
    setup = {"images": str(Path(cfg.image_dir).resolve()),
             "scores": str(Path(cfg.scores_dir).resolve()), "labels": str(label_dir.resolve()),
             "num_images": len(ids), "ids_sha1": ids_digest(ids), "num_classes": num_classes,
             **options, "background": cfg.background, "iters": cfg.iters,
             "normalization": cfg.normalization, "method": cfg.method}  # fmt: skip
    loader = FolderLoader(trios, num_classes, options, cfg.background, cfg.max_pixels())
    return Tuning(ids, num_classes, loader, setup)


def _first_class_count(score_files: list[str], cfg) -> int:
    """The class count of the first readable score file (unreadable ones are skipped later, as
    bad items); the first one's error when none can be read."""
    from deeplabv1.cli.crf_files import load_scores

    first = None
    for path in score_files:
        try:
            return load_scores(path, cfg.probabilities, cfg.channels_last).shape[0]
        except DeepLabError as exc:
            first = first or exc
    raise first


def unary_record(images: list, num_classes: int) -> dict:
    """Mean IoU and pixel accuracy (%) of the scores' arg-max over ``images``: the CRF's
    baseline. Reads every score file once, so a bad one is reported before the search."""
    from deeplabv1.evaluate.metrics import ConfusionAccumulator, mean_iou, pixel_accuracy

    acc = ConfusionAccumulator(num_classes)
    for item in images:
        acc.update(item.unary_labels(), item.labels)
    return {"mean_iou": round(100 * mean_iou(acc.matrix), 4),
            "pixel_accuracy": round(100 * pixel_accuracy(acc.matrix), 4)}  # fmt: skip
