"""The released test procedure and the training-label shrink.

- :func:`predict_scores`: pad the Caffe input at the bottom/right with 0 (= the mean colour) to
  at least ``test_size``, then to the side the model's test network is made for
  (:func:`input_side_for`: 513 for LargeFOV and MSc, 514 for DeepLab), run the test network
  (:func:`run_test_network`; DeepLab: pool4 pad 1; MSc: dense branches summed at full size),
  zoom the score map with bilinear align-corners interpolation to (h - 1) * 8 + 1, crop the
  release's offset at the start (DeepLab 7) and cut to the image (:func:`crop_zoomed`).
- :func:`zoom_scores`: that zoom. ``method="transposed"`` computes the same values with a
  fixed-kernel depthwise transposed convolution (a tent kernel of side 2f - 1, stride f); a test
  proves it equal to the interpolation.
- :func:`shrink_labels`: ``labels[..., offset::8, offset::8]``, what Caffe's ``INTERP``
  ``shrink_factor: 8, pad_beg: -offset`` does to a label map (offset 1 for DeepLab's 306 crop,
  0 for the 321 crops). Subsampling never averages, so it never invents a class at a boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from deeplabv1.errors import DeepLabError
from deeplabv1.models.receptive_field import output_size

OUTPUT_STRIDE = 8
ZOOM_METHODS = ("interpolate", "transposed")

__all__ = [
    "OUTPUT_STRIDE",
    "crop_zoomed",
    "eval_mode",
    "output_size",
    "predict_scores",
    "shrink_labels",
    "input_side_for",
    "run_test_network",
    "zoom_scores",
]


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


def input_side_for(model: torch.nn.Module | None, size: int, test_size: int | None = None) -> int:
    """The side the test network runs at for an image side ``size``: the smallest
    ``8k + grid`` that is at least ``max(size, test_size)`` (``grid`` is the model's
    ``test_net.grid``: 1 for 513-style inputs, 2 for DeepLab's 514; 1 without a model)."""
    net = getattr(model, "test_net", None)
    grid = net.grid if net is not None else 1
    side = max(int(size), int(test_size or 1))
    return side + (grid - side) % OUTPUT_STRIDE


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in evaluation mode (no dropout) for the ``with`` block; afterwards every
    module is back in the mode the caller left it in (a model in training mode stays one)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def run_test_network(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Run the model's test network on padded Caffe input ``x`` (B,3,H,W).

    Returns ``(scores, factor, crop)``: the full-resolution map is ``scores`` zoomed by
    ``factor`` with ``crop`` pixels cut at the start (:func:`crop_zoomed`). A model without a
    ``forward_test`` is run as it is, zoomed x8 and not cropped. The network runs in evaluation
    mode whatever mode the model is in (:func:`eval_mode`: the caller's mode is restored), so
    the scores are deterministic: dropout is a training-time layer.
    """
    net = getattr(model, "test_net", None)
    with eval_mode(model):
        if net is None or not hasattr(model, "forward_test"):
            return model(x), OUTPUT_STRIDE, 0
        return model.forward_test(x), net.factor, net.crop


def crop_zoomed(
    scores: torch.Tensor, height: int, width: int, factor: int = OUTPUT_STRIDE, crop: int = 0,
    zoom_method: str = "interpolate",
) -> torch.Tensor:  # fmt: skip
    """Zoom ``scores`` (..., C, h, w) by ``factor``, cut ``crop`` pixels at the start and keep the
    first ``height`` x ``width``; where the map falls short, its last row/column is repeated."""
    squeeze = scores.dim() == 3
    zoomed = scores[None] if squeeze else scores
    if factor != 1:
        zoomed = zoom_scores(zoomed, factor, zoom_method)
    zoomed = zoomed[..., crop:, crop:]
    short_h, short_w = max(0, height - zoomed.shape[-2]), max(0, width - zoomed.shape[-1])
    if short_h or short_w:
        zoomed = F.pad(zoomed, (0, short_w, 0, short_h), mode="replicate")
    zoomed = zoomed[..., :height, :width]
    return zoomed[0] if squeeze else zoomed


@torch.no_grad()
def predict_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    test_size: int | None = 513,
    *,
    zoom_method: str = "interpolate",
) -> torch.Tensor:
    """Full-resolution scores (B,C,H,W) for Caffe-input images (B,3,H,W), as the release tests.

    The images are padded bottom/right with 0 (the mean colour) to at least ``test_size``
    (``None`` or 0: only to the test network's grid), then to :func:`input_side_for`: a side
    longer than ``test_size`` goes to the next side the test network is made for (``8k + 1``;
    DeepLab ``8k + 2``), as ``Segmenter`` and ``deeplabv1 eval`` do. The model's test network
    runs on that and its map is zoomed and cropped back to the images.

    The network always runs in evaluation mode (no dropout), so two calls give the same scores
    whatever mode the model is in; the model's own mode is left as it was (models from
    ``model_from_checkpoint`` or ``torch.hub.load`` come in training mode, as torchvision's do).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise DeepLabError(f"predict_scores: expected (B,3,H,W) images, got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    side_h = input_side_for(model, height, test_size)
    side_w = input_side_for(model, width, test_size)
    x = F.pad(images, (0, side_w - width, 0, side_h - height), value=0.0)
    scores, factor, crop = run_test_network(model, x)
    return crop_zoomed(scores, height, width, factor, crop, zoom_method)


def shrink_labels(labels, factor: int = OUTPUT_STRIDE, offset: int = 0):
    """Labels (..., H, W) (torch or numpy) -> ``labels[..., offset::factor, offset::factor]``.

    Caffe's ``INTERP shrink_factor: factor, pad_beg: -offset``: target i is label
    ``offset + factor * i``, one pixel per score cell, never averaged.
    """
    if labels.ndim < 2:
        raise DeepLabError(f"shrink_labels: expected (..., H, W) labels, got shape {labels.shape}")
    if offset < 0:
        raise DeepLabError(f"shrink_labels: offset must be >= 0 (a crop), got {offset}")
    return labels[..., offset::factor, offset::factor]
