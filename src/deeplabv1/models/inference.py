"""Caffe's test procedure and training-label shrink (SPEC sections 3 and 4).

- :func:`predict_scores`: pad the Caffe input at the bottom/right with 0 (= the mean colour) to
  ``test_size``, run the network, zoom the score map x8 with bilinear align-corners interpolation
  to (h - 1) * 8 + 1 and crop to the image (513 -> 65 -> 513 for LargeFOV).
- :func:`zoom_scores`: that zoom. ``method="transposed"`` computes the same values with a
  fixed-kernel depthwise transposed convolution (a tent kernel of side 2f - 1, stride f); a test
  proves it equal to the interpolation.
- :func:`shrink_labels`: labels[..., ::8, ::8], what Caffe's align-corners shrink of a 321 label
  to 41 does. Subsampling never averages, so it never invents a class at a boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deeplabv1.errors import DeepLabError
from deeplabv1.models.receptive_field import output_size

OUTPUT_STRIDE = 8
ZOOM_METHODS = ("interpolate", "transposed")

__all__ = ["OUTPUT_STRIDE", "output_size", "predict_scores", "shrink_labels", "zoom_scores"]


def _tent_kernel(factor: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Depthwise (C,1,2f-1,2f-1) bilinear kernel: w[t] = 1 - |t - (f - 1)| / f."""
    t = torch.arange(2 * factor - 1, dtype=like.dtype, device=like.device)
    w1 = 1 - (t - (factor - 1)).abs() / factor
    return (w1[:, None] * w1[None, :]).expand(channels, 1, -1, -1).contiguous()


def zoom_scores(
    scores: torch.Tensor, factor: int = OUTPUT_STRIDE, method: str = "interpolate"
) -> torch.Tensor:
    """Bilinear align-corners zoom of (B,C,h,w) scores to (B,C,(h-1)f+1,(w-1)f+1)."""
    if scores.dim() != 4:
        raise DeepLabError(f"zoom_scores: expected (B,C,h,w) scores, got {tuple(scores.shape)}")
    h, w = scores.shape[-2:]
    if method == "interpolate":
        size = ((h - 1) * factor + 1, (w - 1) * factor + 1)
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=True)
    if method == "transposed":
        # output p gets sum_i s[i] * (1 - |p - i f| / f): exactly linear interpolation between
        # the two score cells around p, which is what align-corners bilinear zoom computes.
        kernel = _tent_kernel(factor, scores.shape[1], scores)
        return F.conv_transpose2d(
            scores, kernel, stride=factor, padding=factor - 1, groups=scores.shape[1]
        )
    raise DeepLabError(f"zoom_scores: unknown method {method!r}; use one of {ZOOM_METHODS}")


@torch.no_grad()
def predict_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    test_size: int | None = 513,
    *,
    zoom_method: str = "interpolate",
) -> torch.Tensor:
    """Full-resolution scores (B,C,H,W) for Caffe-input images (B,3,H,W), as Caffe tests.

    ``test_size`` pads to that square (the released nets test at 513); ``None`` runs the image
    as it is. The model is used as given (call ``model.eval()`` first). Where (h - 1) * 8 + 1 is
    smaller than the image (e.g. DeepLab's train-prototxt pool4, pool4_pad=0), the last zoomed
    row/column is repeated: pixels beyond the last score cell's centre take its value.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise DeepLabError(f"predict_scores: expected (B,3,H,W) images, got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    x = images
    if test_size is not None:
        if height > test_size or width > test_size:
            raise DeepLabError(
                f"predict_scores: image {height}x{width} is larger than test_size {test_size}"
            )
        x = F.pad(images, (0, test_size - width, 0, test_size - height), value=0.0)
    scores = zoom_scores(model(x), OUTPUT_STRIDE, zoom_method)
    short_h, short_w = max(0, height - scores.shape[-2]), max(0, width - scores.shape[-1])
    if short_h or short_w:
        scores = F.pad(scores, (0, short_w, 0, short_h), mode="replicate")
    return scores[..., :height, :width]


def shrink_labels(labels, factor: int = OUTPUT_STRIDE):
    """Labels (..., H, W) (torch or numpy) -> labels[..., ::factor, ::factor], never averaged."""
    if labels.ndim < 2:
        raise DeepLabError(f"shrink_labels: expected (..., H, W) labels, got shape {labels.shape}")
    return labels[..., ::factor, ::factor]
