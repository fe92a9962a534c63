"""Mean-field inference for the fully connected CRF (Kraehenbuehl & Koltun 2011).

Unary energies U (B, L, N); Q = softmax(-U); then ``iters`` times

    m = -U - sum_k compat_k(normalise_k(filter_k(Q)));   Q = softmax(m)   (max subtracted)

A Potts term with weight w adds +w * (filtered Q_l) to label l's logit (the negated energy;
equal to the paper's [l != l'] form since the sum over labels is constant per pixel). Diagonal
(L,) and full (L, L) compatibilities are energies, as in Kraehenbuehl's code; a matrix is
symmetrised. Normalisation of a term, with K the Gaussian filter and K1 its row sums:

- "symmetric": n * K(n * Q), n = (K1 + 1e-20)^-1/2. pydensecrf's default (and so the drop-in's).
- "after":     (K Q) / (K1 + 1e-20). The NIPS 2011 code that DeepLab ran: ``deeplab_crf``'s default.
- "before":    K(Q / (K1 + 1e-20)). Present in pydensecrf; rarely used.
- "none":      K Q, unnormalised.

Neither code removes the self term j = i of the paper's sum, so neither do we.

Internally the marginals live as (B, N, L) so that the filters see contiguous (B, N, C) values;
the fast loop reuses its buffers (no per-iteration allocation beyond the filter's output).
:func:`mean_field_step` is the same iteration as a pure function of tensors, for autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number

import torch

from deeplabv1.crf.torch.terms import PreparedTerm, as_unary, prepare_terms

__all__ = [
    "NORMALIZATIONS",
    "PairwiseTerm",
    "PreparedTerm",
    "mean_field",
    "mean_field_prepared",
    "mean_field_step",
    "pairwise_message",
    "prepare_terms",
]

NORMALIZATIONS = ("symmetric", "after", "before", "none")


@dataclass
class PairwiseTerm:
    """One Gaussian-kernel pairwise term.

    features: (B, N, d) float, already divided by the standard deviations (see features.py).
    compat: Potts weight (a number), a diagonal (L,) or a full (L, L) compatibility (energies).
    normalization: one of NORMALIZATIONS; "symmetric" is pydensecrf's default.
    """

    features: torch.Tensor
    compat: float | torch.Tensor = 1.0
    normalization: str = "symmetric"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization: expected one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if isinstance(self.compat, Number) and not torch.isfinite(torch.tensor(self.compat)):
            raise ValueError(f"compat: must be finite, got {self.compat}")


def pairwise_message(q: torch.Tensor, term: PreparedTerm) -> torch.Tensor:
    """The negated-energy message of one term for marginals q (B, N, L) (pure function)."""
    x = q if term.pre is None else q * term.pre
    f = term.filter.apply(x)
    if term.post is not None:
        f = f * term.post
    if term.matrix is not None:
        return f @ term.matrix
    if term.vector is not None:
        return f * term.vector
    return f if term.post is not None else f * term.weight


def mean_field_step(neg_unary: torch.Tensor, q: torch.Tensor, terms) -> torch.Tensor:
    """One mean-field update softmax(-U + sum of messages), all (B, N, L); differentiable."""
    m = neg_unary
    for term in terms:
        m = m + pairwise_message(q, term)
    return torch.softmax(m, dim=-1)


def _iterate_inplace(neg_unary, q, terms, iters: int) -> torch.Tensor:
    """``iters`` in-place updates of q (B, N, L); buffers allocated once. The first term adds
    straight onto -U (out=logits), which saves a copy pass per iteration."""
    logits = torch.empty_like(q)
    scaled = torch.empty_like(q) if any(t.pre is not None for t in terms) else None
    num_labels = q.shape[-1]
    for _ in range(iters):
        base = neg_unary
        for term in terms:
            x = q if term.pre is None else torch.mul(q, term.pre, out=scaled)
            f = term.filter.apply(x)
            if term.matrix is not None:
                if term.post is not None:
                    f.mul_(term.post)
                torch.addmm(base.reshape(-1, num_labels), f.reshape(-1, num_labels),
                            term.matrix, out=logits.view(-1, num_labels))  # fmt: skip
            elif term.vector is not None:
                if term.post is not None:
                    f.mul_(term.post)
                torch.addcmul(base, f, term.vector, out=logits)
            elif term.post is not None:  # Potts: the weight is folded into post
                torch.addcmul(base, f, term.post, out=logits)
            else:
                torch.add(base, f, alpha=term.weight, out=logits)
            base = logits
        if base is neg_unary:
            logits.copy_(neg_unary)
        torch.softmax(logits, dim=-1, out=q)
    return q


def mean_field(
    unary: torch.Tensor,
    terms,
    iters: int = 10,
    method="lattice",
) -> torch.Tensor:
    """Mean-field marginals Q (B, L, N) for unary energies (B, L, N) and PairwiseTerms.

    ``unary`` is -log P up to a per-pixel constant (for network scores: their negation; see
    unary.py). Terms' features may be on any device; they follow the unary's device. ``method``
    picks the filter: "lattice" (permutohedral, O(N)), "dense" (exact, O(N^2): tests only) or
    a callable features (B, N, d) -> filter with ``.apply``.
    Runs without autograd history unless a tensor requires grad; then it uses the pure
    :func:`mean_field_step` so that gradients flow.
    """
    unary = as_unary(unary)
    prepared = prepare_terms(terms, unary.shape[0], unary.shape[1], unary.shape[2],
                             device=unary.device, method=method)  # fmt: skip
    return mean_field_prepared(unary, prepared, iters)


def mean_field_prepared(unary: torch.Tensor, prepared, iters: int = 10) -> torch.Tensor:
    """:func:`mean_field` on a validated float32 unary (B, L, N) and PreparedTerms."""
    if int(iters) < 0:
        raise ValueError(f"iters: must be >= 0, got {iters}")
    needs_grad = torch.is_grad_enabled() and (
        unary.requires_grad or any(t.requires_grad for t in prepared)
    )
    if not needs_grad and _numba_eligible(unary, prepared):
        with torch.no_grad():
            return _iterate_numba(unary, prepared, int(iters))
    neg_unary = unary.neg().transpose(1, 2).contiguous()  # (B, N, L)
    needs_grad = torch.is_grad_enabled() and (
        unary.requires_grad or any(t.requires_grad for t in prepared)
    )
    if needs_grad:
        q = torch.softmax(neg_unary, dim=-1)
        for _ in range(int(iters)):
            q = mean_field_step(neg_unary, q, prepared)
    else:
        with torch.no_grad():
            q = torch.softmax(neg_unary, dim=-1)
            q = _iterate_inplace(neg_unary, q, prepared, int(iters))
    return q.transpose(1, 2).contiguous()


def _numba_eligible(unary: torch.Tensor, terms) -> bool:
    """The engine's fused numba loop handles CPU float32 terms on permutohedral lattices
    (Potts, diagonal and matrix compatibilities)."""
    from deeplabv1.crf.engine import jit
    from deeplabv1.crf.torch.lattice import PermutohedralLattice

    return (
        unary.device.type == "cpu"
        and unary.dtype == torch.float32
        and len(terms) > 0
        and jit.available()
        and all(
            isinstance(t.filter, PermutohedralLattice) and t.filter.dtype == torch.float32
            for t in terms
        )
    )


def _iterate_numba(unary: torch.Tensor, terms, iters: int) -> torch.Tensor:
    """Mean field by the torch-free engine (engine/meanfield.py, fused numba kernels) on views
    of the tensors; unary (B, L, N) -> Q (B, L, N)."""
    from deeplabv1.crf.engine import meanfield as engine_mf

    def array(t: torch.Tensor | None, flat: bool = True):
        if t is None:
            return None
        t = t.detach().cpu()
        return (t.reshape(-1) if flat else t).contiguous().numpy()

    nterms = [engine_mf.NumpyTerm(t.filter.numba_tables(), array(t.pre), array(t.post), t.weight,
                                  array(t.vector), array(t.matrix, flat=False))
              for t in terms]  # fmt: skip
    q = engine_mf.mean_field(unary.numpy(), nterms, iters, torch.get_num_threads())
    return torch.from_numpy(q)
