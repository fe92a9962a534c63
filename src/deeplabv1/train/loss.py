"""The DeepLab loss: softmax cross-entropy over the non-ignored pixels of the score grid.

Labels are shrunk to the stride-8 score grid by subsampling (``label[..., o::8, o::8]`` with
the release's offset o, exactly Caffe's align-corners shrink; never averaging) and pixels
labelled 255 are ignored. The sum of the per-pixel losses is divided by a ``normaliser`` the
caller chooses: the number of valid pixels of the whole batch (over micro-batches and processes)
makes gradient accumulation and DDP give exactly the gradient of one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deeplabv1.data.palette import IGNORE_INDEX
from deeplabv1.errors import DeepLabError


def check_grid(small_labels: torch.Tensor, scores: torch.Tensor, crop_size: int) -> None:
    """Shrunk labels (B, h, w) must match the score grid (B, C, h, w); else a clear error."""
    if tuple(small_labels.shape[-2:]) != tuple(scores.shape[-2:]):
        raise DeepLabError(
            f"crop {crop_size} shrinks to labels {tuple(small_labels.shape[-2:])} but the "
            f"network scores {tuple(scores.shape[-2:])}: use the crop size of the architecture "
            "(321 for LargeFOV, 306 for DeepLab)"
        )


def count_valid(labels: torch.Tensor) -> torch.Tensor:
    """Number of non-ignored pixels (a 0-d float64 tensor, ready for all-reduce)."""
    return (labels != IGNORE_INDEX).sum().to(torch.float64)


def cross_entropy_sum(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over valid pixels of ``-log softmax(scores)[label]`` (computed in float32)."""
    return F.cross_entropy(scores.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def segmentation_loss(
    scores: torch.Tensor, labels: torch.Tensor, normaliser: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy summed over valid pixels / ``normaliser`` (default: their count, at least 1).

    ``scores`` (B, C, h, w), ``labels`` (B, h, w) already on the score grid.
    """
    if normaliser is None:
        normaliser = count_valid(labels)
    if isinstance(normaliser, torch.Tensor):
        normaliser = normaliser.clamp(min=1).to(torch.float32)
    else:
        normaliser = max(float(normaliser), 1.0)
    return cross_entropy_sum(scores, labels) / normaliser
