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

On the CPU (numba installed) Potts terms run on the torch-free engine (numpy_lattice.py,
numpy_meanfield.py): the process never imports torch. Its threads: ``deeplabv1.crf.
set_num_threads``. Other compatibilities, ``method="dense"`` and CUDA use the torch path.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from deeplabv1.crf import numpy_lattice, numpy_meanfield
from deeplabv1.crf.compat import (
    ConstUnary,
    DiagonalCompatibility,
    MatrixCompatibility,
    PottsCompatibility,
    as_compat,
    as_float_matrix,
    as_rgb_image,
)
from deeplabv1.crf.features import bilateral_features_np, gaussian_features_np

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
    """Fully connected CRF over ``nvar`` variables with ``nlabels`` labels.

    On the CPU with method "lattice" and numba installed, Potts terms run on the torch-free
    engine (numpy_meanfield); a diagonal or matrix compatibility, ``method="dense"``,
    ``device="cuda"`` or no numba run the torch path (torch imported then).
    """

    def __init__(self, nvar: int, nlabels: int, *, device=None, method: str = "lattice"):
        if int(nvar) < 1 or int(nlabels) < 1:
            raise ValueError(f"DenseCRF: need nvar >= 1 and nlabels >= 1, got {nvar}, {nlabels}")
        self._nvar, self._nlabel = int(nvar), int(nlabels)
        cpu = device is None or str(device) == "cpu"
        if not cpu:
            import torch

            device = torch.device(device)  # validates the name
        self._device = device
        self._method = method
        self._fast = cpu and method == "lattice" and numpy_lattice.available()
        self._un = np.zeros((self._nvar, self._nlabel), np.float32)  # pixel-major energies
        self._specs: list[tuple[np.ndarray, object, str]] = []  # (features (N, d), compat, mode)
        self._np_terms: list[numpy_meanfield.NumpyTerm] = []
        self._torch: list | None = None  # torch PreparedTerms once the torch path is needed

    # -- unary --------------------------------------------------------------------------
    def setUnaryEnergy(self, u, f=None) -> None:  # noqa: N802 (pydensecrf's name)
        """Unary energies (nlabels, nvar), e.g. -log(probabilities)."""
        if f is not None:
            raise ValueError(
                "setUnaryEnergy: the logistic unary (second argument) is not supported"
            )
        u = as_float_matrix(u, "unary energy", (self._nlabel, self._nvar))
        self._un = None  # free the old energies first
        self._un = np.ascontiguousarray(u.T)

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
        self._add(np.array(feats.T, order="C"), compat, kernel, normalization)  # a private copy

    def _add(self, feats: np.ndarray, compat, kernel, normalization) -> None:
        """Add a term over float32 features (nvar, d)."""
        if int(kernel) not in (0, 1, 2):
            raise ValueError(f"kernel: expected a KernelType, got {kernel!r}")
        if int(normalization) not in _MODES:
            raise ValueError(f"normalization: expected a NormalizationType, got {normalization!r}")
        compat = as_compat(compat, self._nlabel)
        mode = _MODES[int(normalization)]
        if self._torch is None and self._fast and isinstance(compat, float):
            lat = numpy_lattice.cached_lattice(feats, self._nvar, copy=False)  # feats: ours
            if lat is not None:  # None: codes beyond 62 bits (the torch path handles those)
                # keep the cache's equal features, not a second copy (cache hits)
                cached = numpy_lattice.cached_features(lat)
                self._specs.append((feats if cached is None else cached, compat, mode))
                self._np_terms.append(numpy_meanfield.prepare_term(lat, compat, mode))
                return
        self._specs.append((feats, compat, mode))
        self._prepare_torch(self._specs if self._torch is None else self._specs[-1:])

    def _prepare_torch(self, specs) -> None:
        """Switch to (or extend) the torch path with these terms."""
        import torch

        from deeplabv1.crf.terms import prepare_terms

        if self._torch is None:
            self._torch, self._np_terms = [], []
        device = self._torch_device()
        for feats, compat, mode in specs:
            term = _Term(torch.from_numpy(feats).unsqueeze(0), compat, mode)
            self._torch += prepare_terms(
                [term], 1, self._nlabel, self._nvar, device=device, method=self._method
            )

    def _torch_device(self):
        import torch

        return torch.device(self._device or "cpu")

    def _unary_tensor(self):
        """Unary energies (1, nlabels, nvar) as a tensor on the device (torch path)."""
        import torch

        u = torch.from_numpy(np.ascontiguousarray(self._un.T))
        return u.to(self._torch_device()).unsqueeze(0)

    def _numpy_engine(self) -> bool:
        return self._fast and self._torch is None

    # -- inference ----------------------------------------------------------------------
    def inference(self, niter: int) -> np.ndarray:
        """Marginals Q (nlabels, nvar) float32 after ``niter`` mean-field iterations."""
        if int(niter) < 0:
            raise ValueError(f"iters: must be >= 0, got {niter}")
        if self._numpy_engine():
            out = np.empty((1, self._nlabel, self._nvar), np.float32)
            return numpy_meanfield.iterate(self._un, self._np_terms, int(niter), out=out)[0]
        from deeplabv1.crf.meanfield import mean_field_prepared

        q = mean_field_prepared(self._unary_tensor(), self._torch or [], int(niter))
        return q[0].cpu().numpy()

    def startInference(self):  # noqa: N802
        """(Q, tmp1, tmp2): the initial marginals softmax(-U) and two scratch arrays."""
        return self.inference(0), np.empty(0, np.float32), np.empty(0, np.float32)

    def stepInference(self, Q, tmp1=None, tmp2=None) -> None:  # noqa: N802, N803
        """One mean-field iteration, updating the float32 array Q (nlabels, nvar) in place."""
        q = self._as_q(Q)
        if self._numpy_engine():
            new = numpy_meanfield.step(-self._un, np.ascontiguousarray(q.T), self._np_terms)
            Q[...] = new.T
            return
        import torch

        from deeplabv1.crf.meanfield import mean_field_step

        with torch.no_grad():
            neg_unary = self._unary_tensor().neg().transpose(1, 2)
            qt = torch.from_numpy(q).to(self._torch_device()).T.unsqueeze(0).contiguous()
            new = mean_field_step(neg_unary, qt, self._torch or [])
        Q[...] = new[0].T.cpu().numpy()

    def klDivergence(self, Q) -> float:  # noqa: N802, N803
        """KL(Q || P) up to the log partition constant, as pydensecrf computes it."""
        q = self._as_q(Q)
        qd = q.astype(np.float64)
        kl = (qd * np.log(np.maximum(qd, 1e-20))).sum() + (self._un.T * qd).sum()
        qt = np.ascontiguousarray(q.T)
        for message in self._messages(qt):
            kl -= (qt * message.astype(np.float64)).sum()
        return float(kl)

    def _messages(self, qt: np.ndarray):
        """Each term's message (nvar, nlabels) float32 for marginals qt (nvar, nlabels)."""
        if self._numpy_engine():
            return [numpy_meanfield.message(qt, t) for t in self._np_terms]
        import torch

        from deeplabv1.crf.meanfield import pairwise_message

        x = torch.from_numpy(qt).to(self._torch_device()).unsqueeze(0)
        with torch.no_grad():
            return [pairwise_message(x, t)[0].cpu().numpy() for t in self._torch or []]

    def _as_q(self, Q) -> np.ndarray:  # noqa: N803
        if not isinstance(Q, np.ndarray) or Q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Q: expected an ndarray of shape {(self._nlabel, self._nvar)}")
        return np.ascontiguousarray(Q, dtype=np.float32)


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
        self._add(gaussian_features_np(self._h, self._w, sxy), compat, kernel, normalization)

    def addPairwiseBilateral(  # noqa: N802
        self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Position + colour term; ``rgbim`` is an (H, W, 3) uint8 image."""
        img = as_rgb_image(rgbim, self._h, self._w)
        self._add(bilateral_features_np(img, sxy, srgb), compat, kernel, normalization)
