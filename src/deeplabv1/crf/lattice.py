"""Fast Gaussian filtering on the permutohedral lattice (Adams, Baek, Davis 2010).

``PermutohedralLattice(features).apply(values)`` approximates, for every image b and point i,

    out[b, i] ~= sum_j exp(-|f[b, i] - f[b, j]|^2 / 2) * values[b, j]

in O(N (d+1) C) per call, following Kraehenbuehl's dense-CRF code (SPEC section 4a): splat
with barycentric weights, blur with [1/2, 1, 1/2] along each of the d+1 lattice axes (missing
neighbours count as 0), slice with the same weights times alpha = 1/(1 + 2^-d). The lattice
is built once (``lattice_tables``) and reused for every call; splat and slice are CSR sparse
matrices (MKL-backed, multithreaded on CPU), the blur gathers neighbour rows.

Gradients. The map values -> out is linear: out = S^T B_d ... B_0 S values with symmetric
axis blurs B_j. Its adjoint blurs in the reverse order (the blurs do not exactly commute on
the truncated lattice), so backward runs the same filter with ``reverse=True``, exactly as
the reference code's gradient; the two orders differ by a few 1e-3 relative (measured in the
tests). Images of a batch never share lattice points.
"""

from __future__ import annotations

import torch

from deeplabv1.crf.dense import check_features, check_values
from deeplabv1.crf.lattice_index import LatticeTables, lattice_tables

__all__ = ["PermutohedralLattice"]


class PermutohedralLattice:
    """Permutohedral-lattice Gaussian filter over features (B, N, d).

    float32 features give a float32 lattice (float64 ones a float64 lattice, for
    gradchecks); values are cast to the lattice dtype. Works on any device (CPU, CUDA).
    """

    def __init__(self, features: torch.Tensor) -> None:
        check_features(features)
        self.batch, self.num_points, self.dim = features.shape
        self.dtype = features.dtype
        self.device = features.device
        with torch.no_grad():
            self.tables: LatticeTables = lattice_tables(features.detach())
        self.num_lattice = self.tables.num_lattice

    def apply(self, values: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
        """Filter values (B, N, C) -> (B, N, C); differentiable w.r.t. values.

        reverse=True blurs the axes in reverse order: the exact adjoint of reverse=False.
        """
        check_values(values, self.batch, self.num_points)
        values = values.to(device=self.device, dtype=self.dtype)
        return _LatticeFilter.apply(values, self, reverse)

    def normalizer(self) -> torch.Tensor:
        """The filtered all-ones image (B, N, 1), i.e. K 1."""
        ones = torch.ones(self.batch, self.num_points, 1, dtype=self.dtype, device=self.device)
        return self.apply(ones)

    def filter(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """The filter without autograd bookkeeping; values (B, N, C) in the lattice dtype."""
        t = self.tables
        c = values.shape[-1]
        flat = values.reshape(t.num_points, c)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        # Two (M + 1, C) ping-pong buffers whose last row stays 0: the "missing" neighbour.
        cur = flat.new_empty(t.num_lattice + 1, c)
        nxt = flat.new_empty(t.num_lattice + 1, c)
        cur[-1] = 0
        nxt[-1] = 0
        m = t.num_lattice
        torch.addmm(cur[:m], t.splat, flat, beta=0.0, out=cur[:m])
        gather1 = flat.new_empty(m, c)
        gather2 = flat.new_empty(m, c)
        axes = range(self.dim, -1, -1) if reverse else range(self.dim + 1)
        for j in axes:
            torch.index_select(cur, 0, t.neighbours[j, 0], out=gather1)
            torch.index_select(cur, 0, t.neighbours[j, 1], out=gather2)
            gather1 += gather2
            torch.add(cur[:m], gather1, alpha=0.5, out=nxt[:m])
            cur, nxt = nxt, cur
        out = t.slice @ cur[:m]
        return out.view(self.batch, self.num_points, c)


class _LatticeFilter(torch.autograd.Function):
    """values -> K values with backward grad -> K^T grad (the reverse-order filter)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, lattice: PermutohedralLattice, reverse: bool):
        ctx.lattice = lattice
        ctx.reverse = reverse
        return lattice.filter(values, reverse)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad = _LatticeFilter.apply(grad_out, ctx.lattice, not ctx.reverse)
        return grad, None, None
