"""Stage 2 of ``deeplabv1 train --crf end-to-end``: the network and the CRF trained jointly.

Stage 1 is the paper's training (``loop.train``). Then, as CRF-as-RNN (Zheng et al. 2015), the
mean-field CRF becomes the last layer (``deeplabv1.crf.layer.CRFLayer``): per crop, the fc8
scores are zoomed x8 to full resolution (align-corners bilinear, the test procedure's zoom), the
layer runs ``crf_train_iters`` (5) mean-field updates on them with the crop's RGB image, and
the softmax cross-entropy against the full-resolution labels (255 ignored) trains the network
(SGD, the paper's lr/decay multipliers on ``crf_base_lr``) and the CRF parameters (their own
``crf_lr``, no weight decay: the two kernel weights, the label compatibility initialised from
Potts, and with ``crf_learn_std`` the kernel standard deviations). The network's dropout is
off in this stage unless ``crf_dropout`` (measured on the demo: docs/crf_end_to_end.md).

Outputs in ``<out_dir>/crf/``: ``log.jsonl`` and ``final.pt``, a normal checkpoint whose ``crf``
entry holds the learned parameters and ``iters`` = ``crf_test_iters`` (10) for ``eval`` and
``predict``. Single process (under torchrun only rank 0 runs this stage); not resumable: a
crash leaves stage 1's ``final.pt`` intact and the stage reruns from it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deeplabv1.errors import DeepLabError

STAGE_DIR = "crf"


@dataclass
class CRFStageSettings:
    """The stage's settings; ``TrainConfig`` carries them as fields of the same names."""

    crf_max_iter: int = 1000  # joint iterations
    crf_base_lr: float = 1e-4  # network base lr in the joint stage (x10 classifier as usual)
    crf_lr: float = 1e-2  # lr of the CRF parameters
    crf_train_iters: int = 5  # mean-field updates unrolled in training (CRF-as-RNN: 5)
    crf_test_iters: int = 10  # updates at test time, saved in the checkpoint (CRF-as-RNN: 10)
    crf_learn_std: bool = False  # also learn sa, sb, sg (approximate gradient, see layer)
    crf_memory_checkpoint: bool = False  # torch.utils.checkpoint each update (less memory)
    crf_normalization: str = "after"  # DeepLab's
    crf_dropout: bool = False  # keep the network's dropout on in the joint stage (see docs)


def stage_settings(cfg) -> CRFStageSettings:
    """The CRF-stage settings of a TrainConfig (missing fields take the defaults above)."""
    return CRFStageSettings(**{f.name: getattr(cfg, f.name) for f in fields(CRFStageSettings)
                               if hasattr(cfg, f.name)})  # fmt: skip


def _rgb_batch(images: torch.Tensor) -> torch.Tensor:
    """Caffe inputs (B, 3, H, W) -> (B, H, W, 3) uint8 RGB (padding shows the mean colour)."""
    from deeplabv1.data.caffe_input import from_caffe_input

    return torch.from_numpy(np.stack([from_caffe_input(x) for x in images]))


def full_resolution(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """fc8 scores zoomed x8 to (height, width) exactly as the test procedure (replicate/crop)."""
    from deeplabv1.models.inference import OUTPUT_STRIDE, zoom_scores

    full = zoom_scores(scores, OUTPUT_STRIDE)
    short_h, short_w = max(0, height - full.shape[-2]), max(0, width - full.shape[-1])
    if short_h or short_w:
        full = F.pad(full, (0, short_w, 0, short_h), mode="replicate")
    return full[..., :height, :width]


def finetune_crf(cfg, stage1: str | os.PathLike, settings: CRFStageSettings | None = None) -> Path:
    """Joint fine-tuning from the stage-1 checkpoint; returns ``<out_dir>/crf/final.pt``.

    ``cfg`` is the run's TrainConfig (data, batch, device, seed, out_dir, ...); ``settings``
    default to ``stage_settings(cfg)``.
    """
    from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from deeplabv1.config import config_to_dict
    from deeplabv1.crf.layer import CRFLayer
    from deeplabv1.train.build import build_dataset
    from deeplabv1.train.config import replace
    from deeplabv1.train.distributed import resolve_device
    from deeplabv1.train.logger import TrainLogger
    from deeplabv1.train.optim import build_optimizer

    s = settings if settings is not None else stage_settings(cfg)
    out_dir = Path(cfg.out_dir) / STAGE_DIR
    final = out_dir / "final.pt"
    if int(os.environ.get("RANK", "0")) != 0:
        return final
    if s.crf_max_iter < 1 or s.crf_train_iters < 1 or s.crf_test_iters < 1:
        raise DeepLabError("train config: crf_max_iter, crf_train_iters, crf_test_iters >= 1")
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(stage1)
    # dropout off by default: the CRF should learn on the unaries it will see at test time
    model = model_from_checkpoint(ckpt).to(device).train(s.crf_dropout)
    num_classes = int(ckpt["num_classes"])
    layer = CRFLayer.from_checkpoint_entry(
        ckpt.get("crf") or ckpt["arch"], num_classes, iters=s.crf_train_iters,
        normalization=s.crf_normalization, learn_std=s.crf_learn_std,
        checkpoint=s.crf_memory_checkpoint,
    ).to(device)  # fmt: skip
    optimizer = build_optimizer(model, replace(cfg, base_lr=s.crf_base_lr))
    crf_params = [p for p in layer.parameters() if p.requires_grad]
    optimizer.add_param_group({"params": crf_params, "lr": s.crf_lr, "lr_mult": 1.0,
                               "weight_decay": 0.0, "names": ["crf"]})  # fmt: skip
    dataset = build_dataset(cfg)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True,
                                             num_samples=s.crf_max_iter * cfg.batch_size,
                                             generator=generator)  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.workers, drop_last=True)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = TrainLogger(out_dir, start_iter=0, max_iter=s.crf_max_iter, progress=cfg.progress,
                         tensorboard=cfg.tensorboard)  # fmt: skip
    logger.message(f"CRF stage: joint fine-tuning from {stage1}, {layer}")
    torch.manual_seed(cfg.seed + 1)
    t_start = t_window = time.perf_counter()
    window, window_loss = 0, 0.0
    log_every = max(1, min(cfg.log_every, s.crf_max_iter))
    for it, batch in enumerate(loader, start=1):
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        scores = full_resolution(model(images), *labels.shape[-2:])
        logits = layer(scores.float(), _rgb_batch(batch["image"]).to(device))
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window_loss += loss.item()
        window += 1
        if it % log_every == 0 or it == s.crf_max_iter:
            if not np.isfinite(window_loss):
                raise DeepLabError(f"CRF stage diverged at iteration {it} (lower crf_lr)")
            now = time.perf_counter()
            w1, w2 = (float(x) for x in layer.weights.detach().cpu())
            logger.log({"iter": it, "loss": window_loss / window, "lr": s.crf_base_lr,
                        "images_per_s": window * cfg.batch_size / max(now - t_window, 1e-9),
                        "time": now - t_start, "crf_w1": w1, "crf_w2": w2})  # fmt: skip
            window, window_loss, t_window = 0, 0.0, now
    save_checkpoint(final, model.state_dict(), arch=ckpt["arch"], num_classes=num_classes,
                    width=ckpt["width"], model_kwargs=ckpt["model_kwargs"],
                    config=config_to_dict(cfg), crf=layer.checkpoint_entry(s.crf_test_iters),
                    iteration=s.crf_max_iter, source=str(stage1))  # fmt: skip
    logger.message(f"CRF stage: final checkpoint {final} ({layer.crf_params()})")
    logger.close()
    return final
