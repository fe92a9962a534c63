"""A drop-in for ``pydensecrf.densecrf``: switch by changing the import.

    import deeplabv1.crf.densecrf as dcrf        # instead of: import pydensecrf.densecrf as dcrf

Same classes, constants, method names, argument order, defaults, array layouts (labels x
pixels, pixel index y * W + x) and results. Where pydensecrf returns a well-defined result
the drop-in returns the same one (a ``PydensecrfWarning`` where the input is unusual); where
pydensecrf crashes or returns NaN it raises a ValueError saying why (checks.py). Also:
``inference`` and ``startInference`` return float32 ndarrays (nlabels, nvar) instead of
Eigen wrappers (``np.array(Q)`` works on both), any real dtype and non-contiguous arrays are
accepted. Keyword-only extras: ``device`` ("cuda": the torch side) and ``method``
("dense": exact filtering, small inputs; torch side).

On the CPU the CRF runs on the numba engine (deeplabv1.crf.engine), Potts, diagonal and
matrix compatibilities alike, and never imports torch; threads: ``deeplabv1.crf.
set_num_threads``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from deeplabv1.crf import require_torch
from deeplabv1.crf.engine import cache as engine_cache
from deeplabv1.crf.engine import meanfield as engine_mf
from deeplabv1.crf.engine import threads as engine_threads
from deeplabv1.crf.features import divide_features, position_grid
from deeplabv1.crf.pydensecrf import eigen
from deeplabv1.crf.pydensecrf.checks import (
    PydensecrfWarning,
    as_compat,
    as_float_matrix,
    as_rgb_image,
    as_std,
    as_unary,
    kernel_type,
    normalization_mode,
    warn,
)
from deeplabv1.crf.pydensecrf.unary import ConstUnary, LogisticUnary, Unary, unary_energy

__all__ = [
    "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL", "NO_NORMALIZATION", "NORMALIZE_AFTER",
    "NORMALIZE_BEFORE", "NORMALIZE_SYMMETRIC", "ConstUnary", "DenseCRF", "DenseCRF2D",
    "DiagonalCompatibility", "KernelType", "LogisticUnary", "MatrixCompatibility",
    "NormalizationType", "PottsCompatibility", "PydensecrfWarning", "Unary", "eigen",
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


class PottsCompatibility:
    """Potts weight w: adds +w * (filtered Q_l) to label l's logit (a plain number works)."""

    def __init__(self, weight: float):
        self.value = float(weight)


class DiagonalCompatibility:
    """Per-label energies v (L,): adds -v_l * (filtered Q_l) to label l's logit."""

    def __init__(self, v):
        self.value = np.asarray(v, dtype=np.float32).reshape(-1)


class MatrixCompatibility:
    """Full energy matrix M (L, L), symmetrised to (M + M^T) / 2, as in pydensecrf."""

    def __init__(self, m):
        self.value = np.asarray(m, dtype=np.float32)


class _Term:
    """A PairwiseTerm-like record for the torch side's prepare_terms."""

    def __init__(self, features, compat, normalization):
        self.features, self.compat, self.normalization = features, compat, normalization


def _pixel_major(u: np.ndarray) -> np.ndarray:
    """Energies (nlabels, nvar) as the engine's pixel-major padded array (one transpose)."""
    out = engine_mf.unary_buffer(u.shape[1], u.shape[0])
    out[:, : u.shape[0]] = u.T
    return out


class DenseCRF:
    """Fully connected CRF over ``nvar`` variables with ``nlabels`` labels.

    On the CPU (the default) every term runs on the numba engine; ``device="cuda"``,
    ``method="dense"``, numba disabled (``DEEPLABV1_CRF_NUMBA=0``) or feature ranges
    beyond the engine's 62-bit codes run the torch side (torch imported then).
    """

    def __init__(self, nvar: int, nlabels: int, *args, device=None, method: str = "lattice",
                 **kwargs) -> None:  # fmt: skip
        if args or kwargs:  # pydensecrf swallows extra arguments
            warn(f"DenseCRF: extra arguments {args or ''}{kwargs or ''} ignored, as pydensecrf "
                 "ignores them")  # fmt: skip
        if int(nvar) < 0 or int(nlabels) < 1:
            raise ValueError(f"DenseCRF: need nvar >= 0 and nlabels >= 1, got {nvar}, {nlabels}")
        self._nvar, self._nlabel = int(nvar), int(nlabels)
        cpu = device is None or str(device) == "cpu"
        if not cpu:
            torch = require_torch("the drop-in on CUDA, with method='dense' or without numba")

            device = torch.device(device)  # validates the name
        if method not in ("lattice", "dense"):
            raise ValueError(f"method: expected 'lattice' or 'dense', got {method!r}")
        self._device = device
        self._method = method
        self._fast = cpu and method == "lattice" and engine_threads.available()
        # pixel-major energies (nvar, padded width: engine_mf.unary_buffer); None: unset
        self._un: np.ndarray | None = None
        self._specs: list[tuple[np.ndarray, object, str]] = []  # (features (N, d), compat, mode)
        self._np_terms: list[engine_mf.NumpyTerm] = []
        self._torch: list | None = None  # torch PreparedTerms once the torch side is needed

    # -- unary --------------------------------------------------------------------------
    def setUnaryEnergy(self, u, f=None) -> None:  # noqa: N802 (pydensecrf's name)
        """Unary energies (nlabels, nvar), e.g. -log(probabilities); with ``f`` (nvar, nvar)
        pydensecrf's logistic unary ``u @ f``."""
        if f is None:
            u = as_unary(u, self._nlabel, self._nvar)
        else:  # pydensecrf checks u's shape only: f must then be (nvar, nvar)
            as_float_matrix(u, "unary energy", (self._nlabel, self._nvar), finite=False)
            u = unary_energy(LogisticUnary(u, f), self._nlabel, self._nvar)
        self._un = None  # free the old energies first
        self._un = _pixel_major(u)

    def setUnary(self, u: Unary) -> None:  # noqa: N802
        """A ``ConstUnary`` or ``LogisticUnary``; the bare ``Unary()`` clears the unary."""
        if not isinstance(u, Unary):
            raise ValueError(f"setUnary: expected a ConstUnary or LogisticUnary, got {u!r}")
        energy = unary_energy(u, self._nlabel, self._nvar)
        self._un = None if energy is None else _pixel_major(energy)

    # -- pairwise -----------------------------------------------------------------------
    def addPairwiseEnergy(  # noqa: N802
        self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """A Gaussian-kernel term over features (d, nvar) already divided by their std devs."""
        feats = as_float_matrix(features, "pairwise energy", (None, self._nvar))
        self._add(np.ascontiguousarray(feats.T), compat, kernel, normalization)

    def _add(self, feats: np.ndarray, compat, kernel, normalization) -> None:
        """Add a term over private float32 features (nvar, d)."""
        kernel_type(kernel)
        mode = normalization_mode(normalization)
        compat = as_compat(compat, self._nlabel)
        if self._nvar == 0:  # nothing to filter: no lattice
            self._specs.append((feats, compat, mode))
            return
        if self._torch is None and self._fast:
            lat = engine_cache.cached_lattice(feats, self._nvar, copy=False, phantoms=True)
            # keep the cache's equal features, not a second copy (cache hits)
            cached = engine_cache.cached_features(lat)
            self._specs.append((feats if cached is None else cached, compat, mode))
            self._np_terms.append(engine_mf.prepare_term(lat, compat, mode))
            return
        self._specs.append((feats, compat, mode))
        self._prepare_torch(self._specs if self._torch is None else self._specs[-1:])

    def _prepare_torch(self, specs) -> None:
        """Switch to (or extend) the torch side with these terms."""
        torch = require_torch("the drop-in on CUDA, with method='dense' or without numba")

        from deeplabv1.crf.torch.terms import prepare_terms

        if self._torch is None:
            self._torch, self._np_terms = [], []
        for feats, compat, mode in specs:
            term = _Term(torch.from_numpy(feats).unsqueeze(0), compat, mode)
            self._torch += prepare_terms(
                [term],
                1,
                self._nlabel,
                self._nvar,
                device=self._torch_device(),
                method=self._method,
            )

    def _torch_device(self):
        torch = require_torch("the drop-in on CUDA, with method='dense' or without numba")

        return torch.device(self._device or "cpu")

    def _energies(self) -> np.ndarray:
        """Pixel-major energies (nvar, nlabels), a view; zeros without a unary (as
        pydensecrf)."""
        if self._un is None:
            return np.zeros((self._nvar, self._nlabel), np.float32)
        return self._un[:, : self._nlabel]

    def _numpy_engine(self) -> bool:
        return self._torch is None

    # -- inference ----------------------------------------------------------------------
    def inference(self, niter: int) -> np.ndarray:
        """Marginals Q (nlabels, nvar) float32 after ``niter`` mean-field iterations (a
        negative count runs none, as in pydensecrf)."""
        niter = int(niter)
        if niter < 0:
            warn(f"inference({niter}): a negative iteration count runs none, as in pydensecrf")
            niter = 0
        if self._nvar == 0:
            return np.zeros((self._nlabel, 0), np.float32)
        if self._numpy_engine():
            out = np.empty((1, self._nlabel, self._nvar), np.float32)
            un = self._un if self._un is not None else self._energies()
            return engine_mf.iterate(un, self._np_terms, niter, out=out,
                                     num_labels=self._nlabel)[0]  # fmt: skip
        torch = require_torch("the drop-in on CUDA, with method='dense' or without numba")

        from deeplabv1.crf.torch.meanfield import mean_field_prepared

        u = torch.from_numpy(np.ascontiguousarray(self._energies().T))
        q = mean_field_prepared(u.to(self._torch_device()).unsqueeze(0), self._torch, niter)
        return q[0].cpu().numpy()

    def startInference(self):  # noqa: N802
        """(Q, tmp1, tmp2): the initial marginals softmax(-U) (zeros without a unary, as in
        pydensecrf) and two scratch matrices for ``stepInference``."""
        if self._un is None:
            q = np.zeros((self._nlabel, self._nvar), np.float32)
        else:
            q = self.inference(0)
        return q, eigen.MatrixXf(), eigen.MatrixXf()

    def stepInference(self, Q, tmp1=None, tmp2=None) -> None:  # noqa: N802, N803
        """One mean-field iteration, updating Q (nlabels, nvar), an ndarray or an
        ``eigen.MatrixXf``, in place."""
        target = Q.array if isinstance(Q, eigen.MatrixXf) else Q
        q = self._as_q(target)
        if self._nvar == 0:
            return
        qt = np.ascontiguousarray(q.T)
        new = -self._energies()
        for message in self._messages(qt):
            new += message
        new -= new.max(1, keepdims=True)
        np.exp(new, out=new)
        new /= new.sum(1, keepdims=True)
        target[...] = new.T

    def klDivergence(self, Q) -> float:  # noqa: N802, N803
        """KL(Q || P) up to the log partition constant, as pydensecrf computes it."""
        q = self._as_q(Q.array if isinstance(Q, eigen.MatrixXf) else Q)
        if self._un is not None and np.isinf(self._energies()).any():
            raise ValueError("klDivergence: undefined with +inf unary energies (pydensecrf "
                             "returns NaN)")  # fmt: skip
        qd = q.astype(np.float64)
        kl = (qd * np.log(np.maximum(qd, 1e-20))).sum()
        if self._un is not None:
            kl += (self._energies().T * qd).sum()
        qt = np.ascontiguousarray(q.T)
        for message in self._messages(qt):
            kl -= (qt * message.astype(np.float64)).sum()
        return float(kl)

    def _messages(self, qt: np.ndarray):
        """Each term's message (nvar, nlabels) float32 for marginals qt (nvar, nlabels)."""
        if self._nvar == 0:
            return []
        if self._numpy_engine():
            return [engine_mf.message(qt, t) for t in self._np_terms]
        torch = require_torch("the drop-in on CUDA, with method='dense' or without numba")

        from deeplabv1.crf.torch.meanfield import pairwise_message

        x = torch.from_numpy(qt).to(self._torch_device()).unsqueeze(0)
        with torch.no_grad():
            return [pairwise_message(x, t)[0].cpu().numpy() for t in self._torch]

    def _as_q(self, Q) -> np.ndarray:  # noqa: N803
        if not isinstance(Q, np.ndarray) or Q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Q: expected an ndarray or MatrixXf of shape "
                             f"{(self._nlabel, self._nvar)}")  # fmt: skip
        return np.ascontiguousarray(Q, dtype=np.float32)


class DenseCRF2D(DenseCRF):
    """A DenseCRF over a W x H image grid (pixel index y * W + x)."""

    def __init__(self, w: int, h: int, nlabels: int, *args, device=None,
                 method: str = "lattice", **kwargs) -> None:  # fmt: skip
        if int(w) < 0 or int(h) < 0:
            raise ValueError(f"DenseCRF2D: need width and height >= 0, got {w} x {h}")
        super().__init__(int(w) * int(h), nlabels, *args, device=device, method=method, **kwargs)
        self._w, self._h = int(w), int(h)

    def addPairwiseGaussian(  # noqa: N802
        self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Position-only term with standard deviation ``sxy`` (one number or (sx, sy))."""
        sx, sy = as_std(sxy, 2, "sxy")
        feats = position_grid(self._h, self._w, sx, sy)
        self._add(feats, compat, kernel, normalization)

    def addPairwiseBilateral(  # noqa: N802
        self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC
    ) -> None:
        """Position + colour term; ``rgbim`` is an (H, W, 3) uint8 image."""
        sx, sy = as_std(sxy, 2, "sxy")
        scol = as_std(srgb, 3, "srgb")
        img = as_rgb_image(rgbim, self._h, self._w)
        feats = np.empty((self._h * self._w, 5), np.float32)
        feats[:, :2] = position_grid(self._h, self._w, sx, sy)
        divide_features(img.reshape(-1, 3), scol, out=feats[:, 2:])
        self._add(feats, compat, kernel, normalization)
