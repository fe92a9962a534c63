"""``TrainConfig``: every setting of ``deeplabv1 train``, defaulting to the paper's recipe.

Defaults follow the authors' released solver files: SGD with momentum 0.9,
weight decay 5e-4 (none on biases), base lr 1e-3, fc8 lr x10 (MSc: x1), biases lr x2,
"step" policy with gamma 0.1 every 2,000 iterations, 6,000 iterations, batch 20 (the
packaged configs carry each released variant's batch; ``deeplabv1 train --list-configs``),
crop 321 (306 for DeepLab), labels shrunk from pixel 1 (DeepLab) or 0. Values come from the
dataclass defaults < ``--config FILE.yaml`` < flags (``deeplabv1.config.resolve_config``);
the resolved config is written as ``config.yaml`` in ``out_dir`` beside the checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from deeplabv1.errors import DeepLabError

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max

ARCH = Literal[
    "deeplab", "deeplab-7x7", "deeplab-4x4", "deeplab-largefov", "deeplab-msc",
    "deeplab-msc-largefov",
]  # fmt: skip (= deeplabv1.models.MODEL_NAMES, spelled out for the type checker and --help)


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """One training run. ``batch_size`` is the global number of images per iteration."""

    # what to train
    arch: ARCH = _f("deeplab-largefov", "network variant")
    num_classes: int | None = _f(
        None, "number of classes, background included (None = as many as --class-names or the "
        "dataset's classes file names, else 21 as PASCAL VOC)")
    class_names: list[str] | None = _f(
        None, "class names in index order, stored in the checkpoint (None = the dataset's "
        "classes file, else VOC's names for 21 classes and class0, class1, ... otherwise)")
    width: float = _f(1.0, "channel-width multiplier (1.0 = the paper; <1 for quick demos)")
    init: str | None = _f(
        None, "initial weights: a `deeplabv1 convert` or `train` checkpoint (None = random); "
        "with other classes its trunk is kept and the classifier re-initialised")
    msc_train_fc8: bool | None = _f(
        None, "MSc only: keep fc8 trainable (None = per release: deeplab-msc yes, "
        "deeplab-msc-largefov no; an fc8 re-initialised for other classes is trained anyway); "
        "the trunk is frozen and the new branches are trained")
    dropout: float | None = _f(None, "override the dropout probability (None = the network's 0.5)")
    # data
    data_root: str | None = _f(
        None, "dataset: a plain images/ + masks/ folder or a VOC2012-layout root")
    split: str | None = _f(
        None, "training list (None = train_aug for VOC, train for a plain folder; also "
        "trainval_aug, all, a .txt path, ...)")
    label_dir: str | None = _f(
        None, "label folder under data_root (None = masks/ in a plain folder; VOC: "
        "SegmentationClassAug for *_aug splits, else SegmentationClass)")
    val_fraction: float | None = _f(
        None, "plain folder without split lists: hold out this fraction of the images as val "
        "(a fixed, hash-based choice; pass the same value to eval)")
    crop_size: int | None = _f(None, "training crop (None = 306 for deeplab, 321 otherwise)")
    label_offset: int | None = _f(
        None, "label pixel of the first score cell when labels are shrunk to the score grid "
        "(targets label[o + 8i]; None = as released: 1 for deeplab's 306 crop, 0 otherwise)")
    mirror: bool = _f(True, "random horizontal mirror")
    workers: int = _f(2, "DataLoader worker processes (0 = load in the main process)")
    # optimisation (the paper's recipe)
    batch_size: int = _f(20, "images per iteration over all GPUs (paper 20; LargeFOV release 30)")
    iter_size: int = _f(1, "gradient accumulation steps per iteration (Caffe iter_size)")
    max_iter: int = _f(6000, "training iterations")
    base_lr: float = _f(1e-3, "base learning rate")
    lr_policy: Literal["step", "fixed"] = _f("step", "learning-rate policy")
    gamma: float = _f(0.1, "step policy: multiply the lr by gamma every step_size iterations")
    step_size: int = _f(2000, "step policy: iterations between lr drops")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "L2 weight decay on weights (never on biases)")
    classifier_lr_mult: float = _f(
        10.0, "lr multiplier of fc8 in the plain variants (the MSc release trains fc8 and the "
        "branch classifiers at x1)")
    bias_lr_mult: float = _f(2.0, "lr multiplier of biases (fc8 bias: 10 x 2 = 20)")
    sgd_variant: Literal["caffe", "pytorch"] = _f(
        "caffe", "caffe: v = m v + lr (g + wd w), w -= v; pytorch: v = m v + g + wd w, "
        "w -= lr v (the two differ only right after an lr change)")
    loss_norm: Literal["batch", "micro"] = _f(
        "batch", "batch: average the loss over the valid pixels of the whole batch (exact under "
        "accumulation and DDP); micro: per micro-batch, averaged over iter_size (Caffe)")
    seed: int = _f(0, "seed of the initialisation, data order, augmentation and dropout (>= 0)")
    # output and progress
    out_dir: str = _f("runs/train", "folder for checkpoints, config.yaml and log.jsonl (one run "
                      "at a time: a second run into it is refused)")
    overwrite: bool = _f(False, "start over in a folder holding an earlier run, replacing "
                              "files deeplabv1 did not write (never another command's "
                              "outputs; checkpoint-named files of yours are not deleted)")
    checkpoint_every: int = _f(1000, "write a resumable checkpoint every K iterations (0 = off)")
    keep_checkpoints: int = _f(2, "keep the newest K periodic checkpoints (0 = keep all)")
    resume: str | None = _f(None, "checkpoint to resume from, or 'auto' for the newest in out_dir")
    log_every: int = _f(20, "iterations between log lines (loss is averaged over them)")
    progress: bool = _f(True, "show a tqdm progress bar")
    tensorboard: bool = _f(True, "also write TensorBoard events when tensorboard is installed")
    # speed
    device: str = _f("auto", "auto (cuda when available), cpu, cuda, cuda:1, ...")
    bf16: bool = _f(False, "bfloat16 autocast (CUDA)")
    channels_last: bool = _f(False, "channels_last memory format (CUDA)")
    compile: bool = _f(False, "torch.compile the network")
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    # optional second stage, not in the paper (deeplabv1.train.crf_finetune, CRF-as-RNN style)
    crf: Literal["none", "end-to-end"] = _f(
        "none", "end-to-end: after training, fine-tune network + CRF jointly (not the paper)")
    crf_max_iter: int = _f(1000, "CRF stage: joint iterations")
    crf_checkpoint_every: int = _f(200, "CRF stage: snapshot every K iterations (0 = off)")
    crf_base_lr: float = _f(1e-4, "CRF stage: network base lr")
    crf_lr: float = _f(1e-2, "CRF stage: lr of the CRF parameters")
    crf_train_iters: int = _f(5, "CRF stage: mean-field updates unrolled in training")
    crf_test_iters: int = _f(10, "CRF stage: mean-field updates at test time")
    crf_learn_std: bool = _f(False, "CRF stage: also learn the kernel standard deviations")
    crf_memory_checkpoint: bool = _f(False, "CRF stage: recompute each update (less memory)")
    crf_normalization: str = _f("after", "CRF stage: message normalisation (DeepLab: after)")
    crf_dropout: bool = _f(False, "CRF stage: keep the network's dropout on (off by default: "
                                  "with it the joint stage lost accuracy on the demo data)")

    def resolved_crop_size(self) -> int:
        """The crop size: as set, or 306 for DeepLab and 321 for the others."""
        if self.crop_size is not None:
            return self.crop_size
        return 306 if self.arch == "deeplab" else 321

    def resolved_label_offset(self) -> int:
        """The label shrink offset: as set, or the release's (DeepLab's train prototxt shrinks
        its 306 label with ``pad_beg: -1``, the 321-crop variants with 0)."""
        if self.label_offset is not None:
            return self.label_offset
        return 1 if self.arch == "deeplab" else 0

    def resolved_msc_train_fc8(self) -> bool:
        """Whether fc8 is trained in an MSc model (release: MSc yes, MSc-LargeFOV no)."""
        if self.msc_train_fc8 is not None:
            return self.msc_train_fc8
        return self.arch != "deeplab-msc-largefov"

    def validate(self, world_size: int = 1) -> None:
        """Reject impossible settings (and values of the wrong type) naming the setting."""
        from deeplabv1.config import check_types

        check_types(self, "train config")
        finite = math.isfinite  # an infinite lr, decay or multiplier turns the weights to NaN
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.iter_size >= 1, "iter_size must be >= 1"),
            (self.max_iter >= 1, "max_iter must be >= 1"),
            (self.base_lr > 0 and finite(self.base_lr),
             f"base_lr must be a finite number > 0, got {self.base_lr}"),
            (0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0 and finite(self.weight_decay),
             f"weight_decay must be a finite number >= 0, got {self.weight_decay}"),
            (self.gamma > 0 and finite(self.gamma),
             f"gamma must be a finite number > 0, got {self.gamma}"),
            (self.classifier_lr_mult >= 0 and finite(self.classifier_lr_mult),
             f"classifier_lr_mult must be a finite number >= 0, got {self.classifier_lr_mult}"),
            (self.bias_lr_mult >= 0 and finite(self.bias_lr_mult),
             f"bias_lr_mult must be a finite number >= 0, got {self.bias_lr_mult}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.crop_size is None or self.crop_size >= 1, "crop_size must be >= 1"),
            (self.step_size >= 1, "step_size must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.crf_checkpoint_every >= 0, "crf_checkpoint_every must be >= 0"),
            (self.keep_checkpoints >= 0, "keep_checkpoints must be >= 0"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.width > 0, "width must be > 0"),
            (self.label_offset is None or self.label_offset >= 0, "label_offset must be >= 0"),
            (self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.data_root is not None, "data_root is required (a dataset folder)"),
            (self.num_classes is None or 2 <= self.num_classes <= 255,
             "num_classes must lie in 2..255 (background included; 255 is void)"),
            (self.val_fraction is None or 0 < self.val_fraction < 1,
             "val_fraction must lie in (0, 1)"),
        ]
        # the joint stage's settings (crf end-to-end): checked before stage 1 trains, and
        # also without that stage, as every command checks the settings it would not use
        from deeplabv1.crf.torch.meanfield import NORMALIZATIONS

        checks += [
            (self.crf_max_iter >= 1, "crf_max_iter must be >= 1"),
            (self.crf_train_iters >= 1, "crf_train_iters must be >= 1"),
            (self.crf_test_iters >= 1, "crf_test_iters must be >= 1"),
            (self.crf_base_lr > 0 and finite(self.crf_base_lr),
             f"crf_base_lr must be a finite number > 0, got {self.crf_base_lr}"),
            (self.crf_lr >= 0 and finite(self.crf_lr),
             f"crf_lr must be a finite number >= 0, got {self.crf_lr}"),
            (self.crf_normalization in NORMALIZATIONS,
             f"crf_normalization must be one of {', '.join(NORMALIZATIONS)}, got "
             f"{self.crf_normalization!r}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise DeepLabError(f"train config: {message}")
        # the optimizer hands each group's lr to float32 kernels: it must fit that type
        mults = max(1.0, self.classifier_lr_mult) * max(1.0, self.bias_lr_mult)
        for name in ("base_lr", "crf_base_lr"):
            if getattr(self, name) * mults > FLOAT32_MAX:
                raise DeepLabError(
                    f"train config: {name} {getattr(self, name)} times the lr multipliers "
                    f"({mults:g}) exceeds the largest float32 ({FLOAT32_MAX:.4g})")
        per_step = world_size * self.iter_size
        if self.batch_size % per_step:
            raise DeepLabError(
                f"train config: batch_size {self.batch_size} is not divisible by "
                f"processes x iter_size = {world_size} x {self.iter_size}")

    def micro_batch(self, world_size: int = 1) -> int:
        """Images per forward pass on one process."""
        return self.batch_size // (world_size * self.iter_size)


def replace(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``cfg`` with some settings changed."""
    return dataclasses.replace(cfg, **changes)
