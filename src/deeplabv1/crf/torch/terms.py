"""Turning PairwiseTerms into filters, normalisers and compatibilities, once per inference.

Everything a mean-field iteration needs that does not depend on Q is computed here: the filter
(lattice or exact), the per-pixel normalisers split into a pre-filter and a post-filter factor
(B, N, 1), and the compatibility as a negated-energy coefficient (the Potts weight folded into
the post factor when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number

import numpy as np
import torch

__all__ = ["PreparedTerm", "as_unary", "make_filter", "prepare_terms"]

METHODS = ("lattice", "dense")


@dataclass
class PreparedTerm:
    """A term ready for iteration: message = coeff(post * K(pre * Q))."""

    filter: object
    pre: torch.Tensor | None  # (B, N, 1) or None
    post: torch.Tensor | None  # (B, N, 1) or None; includes the Potts weight for Potts terms
    weight: float  # Potts weight (used only when post is None)
    vector: torch.Tensor | None  # (L,) negated diagonal energies
    matrix: torch.Tensor | None  # (L, L) negated symmetrised energies

    @property
    def requires_grad(self) -> bool:
        return any(
            t is not None and t.requires_grad
            for t in (self.pre, self.post, self.vector, self.matrix)
        )


def as_unary(unary) -> torch.Tensor:
    """Validate unary energies (B, L, N) (numpy or torch, any float) as a float32 tensor."""
    if isinstance(unary, np.ndarray):
        unary = torch.from_numpy(np.array(unary, dtype=np.float32))  # a writable copy
    if not isinstance(unary, torch.Tensor):
        raise ValueError(f"unary: expected a tensor or array, got {type(unary).__name__}")
    if unary.dim() != 3 or min(unary.shape) < 1:
        raise ValueError(f"unary: expected a non-empty (B, L, N) array, got {tuple(unary.shape)}")
    if not unary.is_floating_point():
        raise ValueError(f"unary: expected floating energies, got {unary.dtype}")
    unary = unary.to(torch.float32)
    if not bool(torch.isfinite(unary).all()):
        raise ValueError("unary: contains NaN or infinite energies")
    return unary


def make_filter(features: torch.Tensor, method, phantoms: bool = False):
    """The Gaussian filter over (B, N, d) float32 features: "lattice", "dense" (exact), or
    any callable features -> object with ``.apply(values (B, N, C)) -> (B, N, C)``;
    ``phantoms``: the lattice with pydensecrf's phantom vertices (the drop-in)."""
    if callable(method):
        return method(features)
    if method == "lattice":
        from deeplabv1.crf.torch.lattice import PermutohedralLattice

        return PermutohedralLattice(features, phantoms=phantoms)
    if method == "dense":
        from deeplabv1.crf.torch.dense import DenseFilter

        return DenseFilter(features)
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def _compat(
    compat, num_labels: int, device
) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """(Potts weight, negated diagonal, negated symmetrised matrix): exactly one is used."""
    if isinstance(compat, Number):
        return float(compat), None, None
    c = torch.as_tensor(np.asarray(compat) if not isinstance(compat, torch.Tensor) else compat)
    c = c.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("compat: contains NaN or infinite values")
    if c.dim() == 0:
        return float(c), None, None
    if c.dim() == 1 and c.shape[0] == num_labels:
        return 0.0, -c, None
    if c.dim() == 2 and tuple(c.shape) == (num_labels, num_labels):
        return 0.0, None, -0.5 * (c + c.T)
    raise ValueError(
        f"compat: expected a number, ({num_labels},) or ({num_labels}, {num_labels}), "
        f"got shape {tuple(c.shape)}"
    )


def prepare_terms(terms, batch: int, num_labels: int, num_points: int, *, device, method: str,
                  phantoms: bool = False):  # fmt: skip
    """PreparedTerms for PairwiseTerm-likes (features, compat, normalization) on ``device``
    (``phantoms``: lattices with pydensecrf's phantom vertices, for the drop-in)."""
    prepared = []
    for k, term in enumerate(terms):
        feats = term.features
        if isinstance(feats, np.ndarray):
            feats = torch.from_numpy(np.array(feats, dtype=np.float32))
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            raise ValueError(f"term {k}: features must be a (B, N, d) tensor")
        if feats.shape[0] != batch or feats.shape[1] != num_points:
            raise ValueError(
                f"term {k}: features {tuple(feats.shape)} do not match the unary "
                f"(B={batch}, N={num_points})"
            )
        feats = feats.to(device=device, dtype=torch.float32).contiguous()
        filt = make_filter(feats, method, phantoms)
        weight, vector, matrix = _compat(term.compat, num_labels, device)
        pre = post = None
        mode = term.normalization
        if mode != "none":
            if hasattr(filt, "normalizer"):  # the lattice computes K 1 once and caches it
                norm = filt.normalizer()
            else:
                norm = filt.apply(torch.ones(batch, num_points, 1, device=device))
            if mode not in ("symmetric", "after", "before"):
                raise ValueError(f"term {k}: unknown normalization {mode!r}")
            # in float64, rounded once, as pydensecrf and the CPU engine compute them
            wide = norm.to(torch.float64) if norm.device.type != "mps" else norm
            factor = 1.0 / ((wide + 1e-20).sqrt() if mode == "symmetric" else wide + 1e-20)
            factor = factor.to(norm.dtype)
            pre = factor if mode != "after" else None
            post = factor if mode != "before" else None
        if post is not None and vector is None and matrix is None:
            post = post * weight  # Potts: fold the weight in (a new tensor: pre may alias post)
        prepared.append(PreparedTerm(filt, pre, post, weight, vector, matrix))
    return prepared
