"""pydensecrf's unary classes: ``Unary``, ``ConstUnary`` and ``LogisticUnary``.

``DenseCRF.setUnary(u)`` takes one of them. pydensecrf checks none of their shapes (a wrong
one reads out of bounds at inference); here a wrong shape is a ValueError when the unary is
set. The bare ``Unary()`` is pydensecrf's empty unary: setting it clears the energies
(inference then starts from the uniform distribution, ``startInference`` from zeros).
"""

from __future__ import annotations

import numpy as np

from deeplabv1.crf.pydensecrf.checks import as_float_matrix, as_unary

__all__ = ["ConstUnary", "LogisticUnary", "Unary", "unary_energy"]


class Unary:
    """The base class; on its own, no unary energy at all."""


class ConstUnary(Unary):
    """A fixed unary energy (nlabels, nvar)."""

    def __init__(self, u) -> None:
        self.energy = u


class LogisticUnary(Unary):
    """pydensecrf's logistic unary: energies ``L @ f`` for L (nlabels, K) and f (K, nvar)."""

    def __init__(self, L, f) -> None:  # noqa: N803 (pydensecrf's names)
        self.L, self.f = L, f


def unary_energy(u: Unary, num_labels: int, num_points: int) -> np.ndarray | None:
    """The (nlabels, nvar) float32 energies of a unary object (None for the bare Unary)."""
    if isinstance(u, ConstUnary):
        return as_unary(u.energy, num_labels, num_points)
    if isinstance(u, LogisticUnary):
        lm = as_float_matrix(u.L, "logistic unary L", (num_labels, None))
        f = as_float_matrix(u.f, "logistic unary f", (lm.shape[1], num_points))
        return as_unary(lm @ f, num_labels, num_points, "logistic unary L @ f")
    return None
