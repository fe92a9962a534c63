"""Unary energies (B, L, N) from network scores, probabilities or labels (torch)."""

from __future__ import annotations

import torch

__all__ = ["unary_from_labels", "unary_from_logits", "unary_from_probabilities"]


def unary_from_logits(scores: torch.Tensor) -> torch.Tensor:
    """Energies = -scores: DeepLab's unary (equal to -log softmax up to a per-pixel constant)."""
    return -scores.to(torch.float32)


def unary_from_probabilities(probs: torch.Tensor, clip: float = 1e-5) -> torch.Tensor:
    """Energies = -log(clip(p, clip, 1)), pydensecrf's ``unary_from_softmax`` rule."""
    if not 0 < clip <= 1:
        raise ValueError(f"clip: must be in (0, 1], got {clip}")
    probs = probs.to(torch.float32)
    if bool((probs < 0).any()) or bool((probs > 1 + 1e-3).any()):
        raise ValueError("probabilities: values outside [0, 1]")
    return -probs.clamp(clip, 1.0).log()


def unary_from_labels(
    labels: torch.Tensor, num_classes: int, gt_prob: float = 0.5, ignore_index: int | None = None
) -> torch.Tensor:
    """Energies (B, L, N) for hard labels (B, N): probability gt_prob on the label, the rest
    spread evenly; pixels equal to ``ignore_index`` get a uniform distribution."""
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob: must be in (0, 1), got {gt_prob}")
    if num_classes < 2:
        raise ValueError(f"num_classes: must be >= 2, got {num_classes}")
    labels = labels.long()
    unsure = (
        labels == ignore_index
        if ignore_index is not None
        else torch.zeros_like(labels, dtype=torch.bool)
    )
    valid = labels[~unsure]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise ValueError(f"labels: values must lie in 0..{num_classes - 1}")
    n_energy = -torch.log(torch.tensor((1.0 - gt_prob) / (num_classes - 1)))
    out = n_energy.expand(labels.shape[0], num_classes, labels.shape[1]).clone()
    idx = labels.masked_fill(unsure, 0).unsqueeze(1)
    out.scatter_(1, idx, float(-torch.log(torch.tensor(gt_prob))))
    out.masked_fill_(unsure.unsqueeze(1), float(torch.log(torch.tensor(float(num_classes)))))
    return out
