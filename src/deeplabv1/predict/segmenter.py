"""The Python API: segment a PIL image or numpy array with a trained or converted checkpoint.

>>> from deeplabv1 import Segmenter
>>> seg = Segmenter.from_checkpoint("model.pt", device="cpu")
>>> result = seg.predict(image, crf=True)      # PIL image or (H, W, 3) uint8 RGB array
>>> labels, probs = result                      # (H, W) uint8 classes, (C, H, W) float32
>>> seg.class_names[labels[0, 0]]               # the checkpoint's class names

Test procedure: the released test network of the model's variant
(``deeplabv1.models.inference``): every image is padded bottom/right with the mean colour to
513 x 513, then to the side the variant's test prototxt uses (DeepLab: 514, with pool4 pad 1
and a 7-pixel crop after the zoom; MSc: dense branches summed at full resolution). An image side
longer than ``test_size`` is padded to the next ``8k + 1`` (DeepLab: ``8k + 2``) instead (e.g.
640 -> 641), the size at which the score map's zoom lands exactly on the input grid;
``test_size=None`` always uses that minimal padding.

The network runs in evaluation mode (no dropout) whatever mode the model was given in; the
model's own mode is left as the caller set it (``deeplabv1.models.inference.eval_mode``).

Where the CRF runs (``crf_device``, as ``deeplabv1 eval --crf-device``): ``auto`` (default) on
the network's GPU when it runs on one (the torch lattice path), else the torch-free CPU engine;
``cpu`` always the CPU engine; ``same`` the network's device. A CRF that runs out of GPU memory
is redone on the CPU engine (noted once on stderr).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from deeplabv1.errors import DeepLabError
from deeplabv1.predict.images import to_rgb


@dataclass
class Prediction:
    """Result of ``Segmenter.predict``; unpacks as ``labels, probs = result``.

    ``labels`` (H, W) uint8 and ``probs`` (C, H, W) float32 are the final result: network +
    CRF when the CRF ran, the network alone otherwise. ``net_labels`` / ``net_probs`` are always
    the network's (softmax of the upsampled scores); ``crf_labels`` / ``crf_probs`` are None
    without the CRF. ``scores`` are the raw upsampled network scores (C, H, W).
    """

    labels: np.ndarray
    probs: np.ndarray
    net_labels: np.ndarray
    net_probs: np.ndarray
    scores: np.ndarray
    crf_labels: np.ndarray | None = None
    crf_probs: np.ndarray | None = None

    def __iter__(self):
        return iter((self.labels, self.probs))


def padded_size(size: int, test_size: int | None, model: torch.nn.Module | None = None) -> int:
    """Side length the network sees for an image side ``size`` (see the module docstring)."""
    from deeplabv1.models.inference import input_side_for

    return input_side_for(model, size, test_size)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; asking for CUDA without a GPU is a clear error."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeepLabError(f"device {device!r}: no CUDA GPU is available (use --device cpu)")
    return dev


class Segmenter:
    """A DeepLab V1 network (+ optional dense CRF) ready to segment single images.

    ``class_names`` (index order), ``palette`` (their colours) and ``colormap`` (256 x 3, for
    ``deeplabv1.data.palette.colorize``) describe what the labels mean.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = "cpu",
        test_size: int | None = 513,
        crf_params=None,
        crf_iters: int = 10,
        crf_device: str = "auto",
        class_names=None,
        palette=None,
    ) -> None:
        """``crf_params``: a variant name or CRFParams; default: the model's variant.
        ``crf_device``: ``auto``, ``cpu`` or ``same`` (see the module docstring).
        ``class_names`` / ``palette`` (``num_classes`` names / ``[r, g, b]`` colours): default
        the model's ``class_names`` / ``palette`` attributes (set from checkpoints), else VOC's
        names for 21 classes (``class0``, ... otherwise) and the VOCdevkit colours."""
        from deeplabv1.crf.params import DEEPLAB_CRF_PARAMS, get_params
        from deeplabv1.data.classes import stored_classes

        self.device = resolve_device(device)
        self.model = model.to(self.device)  # the network runs in eval mode; the caller's mode stays
        self.test_size = test_size
        self.num_classes = int(getattr(model, "num_classes", 21))
        classes = stored_classes(
            getattr(model, "class_names", None) if class_names is None else class_names,
            getattr(model, "palette", None) if palette is None else palette,
            self.num_classes, "Segmenter",
        )  # fmt: skip
        self.class_names: tuple[str, ...] = classes.names
        self.palette: list[list[int]] = classes.palette()
        self.colormap = classes.colormap()  # (256, 3) uint8 for palette PNGs and overlays
        arch = getattr(model, "arch", "deeplab-largefov")
        default = arch if arch in DEEPLAB_CRF_PARAMS else "deeplab-largefov"
        try:
            self.crf_params = get_params(default if crf_params is None else crf_params)
        except ValueError as exc:
            raise DeepLabError(str(exc)) from exc
        self.crf_iters = int(crf_iters)
        self.crf_device = crf_device
        self.crf_runner()  # rejects an unknown crf_device now, not at the first image

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device | None = "cpu", **kwargs
    ) -> Segmenter:
        """Load a ``deeplabv1 train`` / ``convert`` checkpoint (any arch, any width).

        CRF parameters: ``crf_params`` if given, else the checkpoint's ``crf`` entry (a variant
        name, a dict of CRFParams fields, e.g. from ``crf-search``, or a CRF learned end to end:
        ``deeplabv1.crf.torch.learned``), else the arch's values.
        """
        from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint
        from deeplabv1.crf.torch.learned import crf_params_from_checkpoint

        ckpt = load_checkpoint(path)
        saved = ckpt.get("crf")
        if kwargs.get("crf_params") is None and saved:
            try:
                kwargs["crf_params"] = crf_params_from_checkpoint(saved, str(path))
            except (TypeError, ValueError) as exc:
                raise DeepLabError(f"{path}: bad 'crf' entry {saved!r} ({exc})") from exc
        model = model_from_checkpoint(ckpt).eval()
        return cls(model, device=device, **kwargs)

    @torch.no_grad()
    def network_scores(self, rgb: np.ndarray) -> torch.Tensor:
        """Raw full-resolution scores (C, H, W) on ``self.device`` for an RGB uint8 image."""
        from deeplabv1.data.caffe_input import to_caffe_input
        from deeplabv1.models.inference import predict_scores

        h, w = rgb.shape[:2]
        x = to_caffe_input(rgb).to(self.device)
        ph = padded_size(h, self.test_size, self.model)
        pw = padded_size(w, self.test_size, self.model)
        # zero in Caffe input space is the mean colour: the released test-time padding
        x = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h), value=0.0)
        scores = predict_scores(self.model, x[None], test_size=None)
        return scores[0, :, :h, :w].float()

    def crf_runner(self, batch_size: int | None = None):
        """A ``deeplabv1.evaluate.crf_runner.CRFRunner`` with this segmenter's CRF settings:
        images submitted with their scores come back with their CRF labels, images of one size
        batched (``batch_size``; default 8 on a GPU, 1 on the CPU)."""
        from deeplabv1.evaluate.crf_runner import CRFRunner

        return CRFRunner(self.crf_params, self.crf_iters, device=self.crf_device,
                         batch_size=batch_size)  # fmt: skip

    def crf_probabilities(self, scores: torch.Tensor, rgb: np.ndarray) -> torch.Tensor:
        """CRF marginals (C, H, W) for ``network_scores`` of ``rgb``, on ``crf_device``."""
        from deeplabv1.crf import deeplab_crf

        device = self.crf_runner().target(scores.device)
        try:
            return deeplab_crf(scores, rgb, self.crf_params, iters=self.crf_iters, device=device)
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            print(f"note: the CRF of a {rgb.shape[1]}x{rgb.shape[0]} image ran out of GPU "
                  "memory; it runs on the CPU engine", file=sys.stderr)  # fmt: skip
            return deeplab_crf(scores.cpu(), rgb, self.crf_params, iters=self.crf_iters)

    def predict(self, image, crf: bool = False, *, background: str = "white") -> Prediction:
        """Segment one image: a PIL image (any mode, converted as in ``load_image``; EXIF
        orientation is not applied here) or an (H, W, 3) uint8 RGB / (H, W) gray array."""
        rgb = self._as_rgb(image, background)
        scores = self.network_scores(rgb)
        net_probs = torch.softmax(scores, dim=0)
        net_labels, net_np = _argmax(net_probs), net_probs.cpu().numpy()
        result = Prediction(
            labels=net_labels, probs=net_np, net_labels=net_labels, net_probs=net_np,
            scores=scores.cpu().numpy(),
        )  # fmt: skip
        if crf:
            q = self.crf_probabilities(scores, rgb)
            result.crf_labels, result.crf_probs = _argmax(q), q.cpu().numpy()
            result.labels, result.probs = result.crf_labels, result.crf_probs
        return result

    @staticmethod
    def _as_rgb(image, background: str) -> np.ndarray:
        from PIL import Image

        if isinstance(image, Image.Image):
            return to_rgb(image, background=background)
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise DeepLabError(
                f"image: expected (H, W, 3) or (H, W) uint8, got {arr.dtype} {arr.shape}"
            )
        if min(arr.shape[:2]) < 1:
            raise DeepLabError(f"image: empty image of shape {arr.shape}")
        return np.ascontiguousarray(arr)


def network_labels(scores: torch.Tensor) -> np.ndarray:
    """(H, W) uint8 labels of ``network_scores``: what ``predict`` gives without the CRF."""
    return _argmax(torch.softmax(scores, dim=0))


def _argmax(probs: torch.Tensor) -> np.ndarray:
    return probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
