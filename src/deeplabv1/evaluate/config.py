"""Typed settings of ``deeplabv1 eval`` and ``deeplabv1 crf-search`` (no heavy imports here).

Values come from the dataclass defaults < ``--config FILE.yaml`` < flags
(``deeplabv1.config.resolve_config``); the resolved config is saved beside the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deeplabv1.cli.crf_files import ScoreSettings
from deeplabv1.crf.params import std_problem, variant_problem, weight_problem
from deeplabv1.errors import DeepLabError


def _f(default, help_text: str, check=None):
    """A field with its ``--help`` text and optional value check (``deeplabv1.config``)."""
    return field(default=default, metadata={"help": help_text, "check": check})


def _at_least(minimum: int):
    """A value check: the setting must be >= ``minimum``."""
    return lambda value: None if value >= minimum else f"must be >= {minimum}, got {value}"


@dataclass
class EvalConfig:
    """One evaluation run over a split (the paper's test procedure)."""

    weights: str | None = _f(None, "checkpoint (.pt) of the network (not needed with --scores)")
    data: str | None = _f(None, "dataset: a plain images/ + masks/ folder or a VOC2012 root")
    split: str = _f("val", "split: a list name (VOC: under ImageSets/Segmentation; plain folder: "
                    "<root>/<split>.txt, or val with --val-fraction) or a .txt path")
    label_dir: str | None = _f(
        None, "label folder under the root (default: masks/, or VOC's per split)")
    val_fraction: float | None = _f(
        None, "plain folder without split lists: the val fraction given to train")
    num_images: int | None = _f(None, "evaluate only the first N images of the split")
    test_size: int | None = _f(
        513, "pad inputs to this square size (513 as released); longer sides to the next size "
        "the test network takes; 0: minimal padding (as predict)")
    crf: bool = _f(False, "also evaluate network + dense CRF")
    # checked whether or not --crf is given: a config file is valid or not on its own
    crf_params: str | None = _f(
        None, "CRF parameter set by variant name (default: the checkpoint's, else its arch's)",
        variant_problem,
    )  # fmt: skip
    w1: float | None = _f(None, "override the bilateral weight w1", weight_problem)
    sa: float | None = _f(None, "override the bilateral position std sa (pixels)", std_problem)
    sb: float | None = _f(None, "override the bilateral colour std sb (0-255 units)", std_problem)
    w2: float | None = _f(None, "override the Gaussian weight w2", weight_problem)
    sg: float | None = _f(None, "override the Gaussian position std sg (pixels)", std_problem)
    crf_iters: int = _f(10, "mean-field iterations", _at_least(0))
    crf_normalization: Literal["after", "symmetric", "before", "none"] = _f(
        "after", "CRF normalisation: after (DeepLab), symmetric, ...")
    crf_method: Literal["lattice", "dense"] = _f(
        "lattice", "CRF filtering: lattice (O(N)) or dense (exact, tiny images)")
    crf_device: Literal["auto", "cpu", "same"] = _f(
        "auto", "where the CRF runs: auto (the network's GPU, else the CPU engine), cpu, same"
    )
    crf_batch_size: int | None = _f(
        None, "images of one size per CRF call (default: 8 on a GPU, 1 on the CPU)", _at_least(1)
    )
    trimap: bool = _f(False, "also score mean IoU in bands around the void boundary")
    trimap_max_width: int = _f(40, "largest trimap band width (pixels)")
    save_scores: str | None = _f(None, "save the coarse score maps to this folder")
    scores: str | None = _f(None, "use saved score maps from this folder instead of a network")
    score_dtype: str = _f("float32", "dtype of saved score maps: float32 or float16")
    compress: bool = _f(False, "save score maps compressed (np.savez_compressed)")
    save_predictions: bool = _f(False, "write predicted label PNGs under OUT/predictions/")
    batch_size: int = _f(1, "images per network forward pass")
    workers: int = _f(0, "DataLoader worker processes")
    device: str = _f("auto", "auto (cuda when available), cpu, cuda, ...")
    progress: bool = _f(True, "show a progress bar")
    resume: bool = _f(
        False, "reuse the per-image predictions (and scores) an interrupted run left in OUT"
    )
    out: str = _f("runs/eval", "output folder (results.json, results.md, config.yaml)")
    overwrite: bool = _f(False, "replace files in the output folders deeplabv1 did not write")

    def validate(self) -> None:
        """Reject impossible values (and values of the wrong type), naming the setting."""
        from deeplabv1.config import check_types

        check_types(self, "eval")
        checks = [
            (self.test_size is None or self.test_size >= 0, "test_size (--test-size) must be >= 0"),
            (self.num_images is None or self.num_images >= 1, "num_images must be >= 1"),
            (self.trimap_max_width >= 1, "trimap_max_width must be >= 1"),
            (self.batch_size >= 1, "batch_size (--batch-size) must be >= 1"),
            (self.workers >= 0, "workers (--workers) must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise DeepLabError(f"eval: {message}")


@dataclass
class CRFSearchConfig(ScoreSettings):
    """Coarse-to-fine search of w1, sa, sb on saved score maps, or on any model's
    scores: ``image_dir`` + ``scores_dir`` + ``label_dir`` folders paired by file stem, read as
    ``deeplabv1 crf`` reads them (``ScoreSettings``: probabilities, channels_last, upsample).

    The coarse grid defaults to the paper's: w1 in [5, 10] (the authors' script: {5, 10}),
    sa 50..100 step 10 (script: 40..100, set ``sa_min 40``), sb 3..10 step 1; w2 = sg = 3 fixed.
    Each refinement round halves the steps and searches best +- one old step around the best.
    """

    scores: str | None = _f(None, "folder of saved score maps (deeplabv1 eval --save-scores)")
    data: str | None = _f(None, "dataset the scores were computed on (plain folder or VOC root)")
    split: str = _f("val", "image list (the first num_images ids are used)")
    image_dir: str | None = _f(
        None,
        "any model's scores: folder of images (with --scores-dir and --label-dir, paired by "
        "stem as deeplabv1 crf pairs them)",
    )
    scores_dir: str | None = _f(None, "any model's scores: folder of <stem>.npy score files")
    label_dir: str | None = _f(
        None,
        "with --data: label folder under the root (default: masks/, or VOC's per split); with "
        "--image-dir: folder of <stem>.png label maps (palette or grey indices, 255 void)",
    )
    val_fraction: float | None = _f(
        None, "plain folder without split lists: the val fraction given to train")
    num_images: int = _f(100, "number of images to tune on (paper: 100 val images)")
    w1_min: float = _f(5.0, "coarse grid: smallest w1")
    w1_max: float = _f(10.0, "coarse grid: largest w1")
    w1_step: float = _f(5.0, "coarse grid: w1 step (5 gives {5, 10}, the authors' script)")
    sa_min: float = _f(50.0, "coarse grid: smallest sa (paper 50; authors' script 40)")
    sa_max: float = _f(100.0, "coarse grid: largest sa")
    sa_step: float = _f(10.0, "coarse grid: sa step")
    sb_min: float = _f(3.0, "coarse grid: smallest sb")
    sb_max: float = _f(10.0, "coarse grid: largest sb")
    sb_step: float = _f(1.0, "coarse grid: sb step")
    w2: float = _f(3.0, "fixed Gaussian weight w2")
    sg: float = _f(3.0, "fixed Gaussian std sg")
    refine_rounds: int = _f(1, "refinement rounds after the coarse grid (0 = grid only)")
    iters: int = _f(10, "mean-field iterations")
    normalization: str = _f("after", "CRF normalisation (after = DeepLab's)")
    method: str = _f("lattice", "CRF filtering: lattice (O(N)) or dense (exact, tiny images)")
    jobs: int = _f(1, "worker processes (each evaluates whole parameter points)")
    resume: bool = _f(False, "skip points already in OUT/points.jsonl")
    progress: bool = _f(True, "show a progress bar")
    out: str = _f("runs/crf_search", "output folder (points.jsonl, best.json, search.md)")
    overwrite: bool = _f(False, "replace files in the output folder deeplabv1 did not write")

    def validate(self) -> None:
        """Reject impossible values (and values of the wrong type), naming the setting."""
        import math

        from deeplabv1.config import check_types

        check_types(self, "crf-search")
        checks = [
            (self.num_images >= 1, "num_images (--num-images) must be >= 1"),
            (self.jobs >= 1, "jobs (--jobs) must be >= 1"),
            (self.refine_rounds >= 0, "refine_rounds (--refine-rounds) must be >= 0"),
            (self.iters >= 0, "iters (--iters) must be >= 0"),
            (self.normalization in ("after", "symmetric", "before", "none"),
             "normalization (--normalization) must be after, symmetric, before or none"),
            (self.method in ("lattice", "dense"), "method (--method) must be lattice or dense"),
            (math.isfinite(self.w2), "w2 (--w2) must be a finite number"),
            (0 < self.sg < math.inf, "sg (--sg) must be a positive number"),
        ]  # fmt: skip
        for name in ("w1", "sa", "sb"):
            lo, hi, step = (getattr(self, f"{name}_{k}") for k in ("min", "max", "step"))
            flag = f"--{name}-min/--{name}-max/--{name}-step"
            checks.append((all(map(math.isfinite, (lo, hi, step))) and step > 0 and lo <= hi,
                           f"{name} range ({flag}) needs finite min <= max and step > 0, got "
                           f"{lo:g}..{hi:g} step {step:g}"))  # fmt: skip
            if name != "w1":
                checks.append((lo > 0, f"{name}_min (--{name}-min) is a standard deviation: "
                                       f"must be > 0, got {lo:g}"))  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise DeepLabError(f"crf-search: {message}")
