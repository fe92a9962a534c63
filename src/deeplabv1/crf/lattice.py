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

# Lattice coordinates are int64 (and float32 is exact to 2**24 only): beyond this magnitude
# every point is alone in its simplex anyway.
_MAX_FEATURE = 2.0**40


class PermutohedralLattice:
    """Permutohedral-lattice Gaussian filter over features (B, N, d).

    float32 features give a float32 lattice (float64 ones a float64 lattice, for
    gradchecks); values are cast to the lattice dtype. Works on any device (CPU, CUDA).
    """

    def __init__(self, features: torch.Tensor) -> None:
        check_features(features)
        if float(features.abs().max()) > _MAX_FEATURE:
            raise ValueError(
                f"features: values up to {float(features.abs().max()):.3g} exceed "
                f"{_MAX_FEATURE:.3g}; at such scales the Gaussian filter is the identity, "
                "scale the features down"
            )
        self.batch, self.num_points, self.dim = features.shape
        self.dtype = features.dtype
        self.device = features.device
        with torch.no_grad():
            self.tables: LatticeTables = lattice_tables(features.detach())
        self.num_lattice = self.tables.num_lattice
        self._ws: tuple[torch.Tensor, ...] | None = None

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
        m = t.num_lattice
        c = values.shape[-1]
        flat = values.reshape(t.num_points, c)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        cur, nxt, gathered, spare = self._workspace(c)
        torch.addmm(cur[:m], t.splat, flat, beta=0.0, out=cur[:m])
        axes = range(self.dim, -1, -1) if reverse else range(self.dim + 1)
        for j in axes:
            # nxt = cur + (cur[n1] + cur[n2]) / 2; row m of cur is the zero "missing" row.
            torch.index_select(cur, 0, t.neighbours[j, 0], out=gathered)
            torch.index_select(cur, 0, t.neighbours[j, 1], out=spare)
            gathered += spare
            torch.add(cur[:m], gathered, alpha=0.5, out=nxt[:m])
            cur, nxt = nxt, cur
        out = flat.new_empty(t.num_points, c)
        torch.addmm(out, t.slice, cur[:m], beta=0.0, out=out)
        return out.view(self.batch, self.num_points, c)

    def _workspace(self, c: int) -> tuple[torch.Tensor, ...]:
        """Four lattice-sized buffers, cached for the last channel count (rows m of the
        first two stay 0). Reusing them saves about a page fault per 4 KiB per call."""
        if self._ws is None or self._ws[0].shape[1] != c:
            m = self.num_lattice
            opts = {"dtype": self.dtype, "device": self.device}
            self._ws = (
                torch.zeros(m + 1, c, **opts),
                torch.zeros(m + 1, c, **opts),
                torch.empty(m, c, **opts),
                torch.empty(m, c, **opts),
            )
        return self._ws


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
