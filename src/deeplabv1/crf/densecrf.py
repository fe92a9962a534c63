"""A drop-in for ``pydensecrf.densecrf``: switch by changing the import.

    from deeplabv1.crf import densecrf as dcrf      # instead of: import pydensecrf.densecrf as dcrf

Same class and method names, argument order, defaults and array layouts (labels x pixels,
pixel index y * W + x). Differences: any float dtype and non-contiguous arrays are accepted
(converted to float32); nonsense (wrong shapes, NaN/inf energies, non-positive standard
deviations, an image of the wrong size) raises ValueError; ``inference`` returns a float32
ndarray (nlabels, npixels) instead of an Eigen wrapper (``np.array(Q)`` works on both).
Extra keyword-only options: ``device`` ("cpu" / "cuda") and ``method`` ("lattice" / "dense").
``kernel`` only matters for parameter learning in pydensecrf (not offered), so it is accepted
and ignored. The default normalisation is NORMALIZE_SYMMETRIC, as in pydensecrf.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from deeplabv1.crf.compat import (
    ConstUnary,
    DiagonalCompatibility,
    MatrixCompatibility,
    PottsCompatibility,
    as_compat,
    as_float_matrix,
    as_rgb_image,
)
from deeplabv1.crf.features import bilateral_features, check_std, gaussian_features
from deeplabv1.crf.meanfield import mean_field_prepared, mean_field_step, pairwise_message
from deeplabv1.crf.terms import prepare_terms

__all__ = [
    "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL", "NO_NORMALIZATION", "NORMALIZE_AFTER",
    "NORMALIZE_BEFORE", "NORMALIZE_SYMMETRIC", "ConstUnary", "DenseCRF", "DenseCRF2D",
    "DiagonalCompatibility", "KernelType", "MatrixCompatibility", "NormalizationType",
    "PottsCompatibility",
]  # fmt: skip


class KernelType(IntEnum):
    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(IntEnum):
    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType
_MODES = {0: "none", 1: "before", 2: "after", 3: "symmetric"}


class _Term:
    """A PairwiseTerm-like record for prepare_terms."""

    def __init__(self, features, compat, normalization):
        self.features, self.compat, self.normalization = features, compat, normalization


class DenseCRF:
    """Fully connected CRF over ``nvar`` variables with ``nlabels`` labels."""

    def __init__(self, nvar: int, nlabels: int, *, device=None, method: str = "lattice"):
        if int(nvar) < 1 or int(nlabels) < 1:
            raise ValueError(f"DenseCRF: need nvar >= 1 and nlabels >= 1, got {nvar}, {nlabels}")
        self._nvar, self._nlabel = int(nvar), int(nlabels)
        self._device = torch.device(device or "cpu")
        self._method = method
        self._unary = torch.zeros(1, self._nlabel, self._nvar, device=self._device)
        self._terms = []

    # -- unary --------------------------------------------------------------------------
    def setUnaryEnergy(self, u, f=None) -> None:  # noqa: N802 (pydensecrf's name)
        """Unary energies (nlabels, nvar), e.g. -log(probabilities)."""
        if f is not None:
            raise ValueError(
                "setUnaryEnergy: the logistic unary (second argument) is not supported"
            )
        u = as_float_matrix(u, "unary energy", (self._nlabel, self._nvar))
        self._unary = torch.from_numpy(u).to(self._device).unsqueeze(0)

    def setUnary(self, u: ConstUnary) -> None:  # noqa: N802
        if not isinstance(u, ConstUnary):
            raise ValueError("setUnary: only ConstUnary is supported")
        self.setUnaryEnergy(u.energy)

    # -- pairwise -----------------------------------------------------------------------
    def addPairwiseEnergy(  # noqa: N802
        self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """A Gaussian-kernel term over features (d, nvar) already divided by their std devs."""
        feats = as_float_matrix(features, "pairwise features", (None, self._nvar))
        self._add(torch.from_numpy(feats.T.copy()).unsqueeze(0), compat, kernel, normalization)

    def _add(self, feats: torch.Tensor, compat, kernel, normalization) -> None:
        if int(kernel) not in (0, 1, 2):
            raise ValueError(f"kernel: expected a KernelType, got {kernel!r}")
        if int(normalization) not in _MODES:
            raise ValueError(f"normalization: expected a NormalizationType, got {normalization!r}")
        term = _Term(feats, as_compat(compat, self._nlabel), _MODES[int(normalization)])
        self._terms += prepare_terms(
            [term], 1, self._nlabel, self._nvar, device=self._device, method=self._method
        )

    # -- inference ----------------------------------------------------------------------
    def inference(self, niter: int) -> np.ndarray:
        """Marginals Q (nlabels, nvar) float32 after ``niter`` mean-field iterations."""
        q = mean_field_prepared(self._unary, self._terms, int(niter))
        return q[0].cpu().numpy()

    def startInference(self):  # noqa: N802
        """(Q, tmp1, tmp2): the initial marginals softmax(-U) and two scratch arrays."""
        return self.inference(0), np.empty(0, np.float32), np.empty(0, np.float32)

    def stepInference(self, Q, tmp1=None, tmp2=None) -> None:  # noqa: N802, N803
        """One mean-field iteration, updating the float32 array Q (nlabels, nvar) in place."""
        q = self._as_q(Q)
        with torch.no_grad():
            neg_unary = self._unary.neg().transpose(1, 2)
            new = mean_field_step(neg_unary, q.T.unsqueeze(0).contiguous(), self._terms)
        Q[...] = new[0].T.cpu().numpy()

    def klDivergence(self, Q) -> float:  # noqa: N802, N803
        """KL(Q || P) up to the log partition constant, as pydensecrf computes it."""
        q = self._as_q(Q)
        with torch.no_grad():
            qd = q.double()
            kl = (qd * qd.clamp_min(1e-20).log()).sum() + (self._unary[0].double() * qd).sum()
            qt = q.T.unsqueeze(0).contiguous()
            for term in self._terms:
                kl -= (qt.double() * pairwise_message(qt, term).double()).sum()
        return float(kl)

    def _as_q(self, Q) -> torch.Tensor:  # noqa: N803
        if not isinstance(Q, np.ndarray) or Q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Q: expected an ndarray of shape {(self._nlabel, self._nvar)}")
        return torch.from_numpy(np.ascontiguousarray(Q, dtype=np.float32)).to(self._device)


class DenseCRF2D(DenseCRF):
    """A DenseCRF over a W x H image grid (pixel index y * W + x)."""

    def __init__(self, w: int, h: int, nlabels: int, *, device=None, method: str = "lattice"):
        if int(w) < 1 or int(h) < 1:
            raise ValueError(f"DenseCRF2D: need positive width and height, got {w} x {h}")
        super().__init__(int(w) * int(h), nlabels, device=device, method=method)
        self._w, self._h = int(w), int(h)

    def addPairwiseGaussian(  # noqa: N802
        self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Position-only term with standard deviation ``sxy`` (one number or (sx, sy))."""
        check_std(sxy, 2, "sxy")
        feats = gaussian_features(self._h, self._w, sxy, device=self._device)
        self._add(feats, compat, kernel, normalization)

    def addPairwiseBilateral(  # noqa: N802
        self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Position + colour term; ``rgbim`` is an (H, W, 3) uint8 image."""
        img = as_rgb_image(rgbim, self._h, self._w)
        feats = bilateral_features(torch.from_numpy(img), sxy, srgb, device=self._device)
        self._add(feats, compat, kernel, normalization)
