"""Fast Gaussian filtering on the permutohedral lattice (Adams, Baek, Davis 2010).

``PermutohedralLattice(features).apply(values)`` approximates, for every image b and point i,

    out[b, i] ~= sum_j exp(-|f[b, i] - f[b, j]|^2 / 2) * values[b, j]

in O(N (d+1) C) per call, following Kraehenbuehl's dense-CRF code: splat
with barycentric weights, blur with [1/2, 1, 1/2] along each of the d+1 lattice axes (missing
neighbours count as 0), slice with the same weights times alpha = 1/(1 + 2^-d). The lattice
is built once (``lattice_tables``) and reused for every call. On the CPU with numba installed
the filter runs the kernels of kernels.py (scatter splat into per-thread buffers, blur,
slice); otherwise (CUDA, no numba, DEEPLABV1_CRF_NUMBA=0) splat and slice are CSR sparse
matrices (MKL / cuSPARSE) and the blur gathers neighbour rows. Lattices are cached by their
features (``CACHE_SIZE`` = 2, see ``_cached``): the position-only lattice of an image size is
built once per process. Not thread-safe: use processes (as ``deeplabv1 crf`` batch mode does).

Gradients. The map values -> out is linear: out = S^T B_d ... B_0 S values with symmetric
axis blurs B_j. Its adjoint blurs in the reverse order (the blurs do not exactly commute on
the truncated lattice), so backward runs the same filter with ``reverse=True``, exactly as
the reference code's gradient; the two orders differ by a few 1e-3 relative (measured in the
tests). Images of a batch never share lattice points.
"""

from __future__ import annotations

import torch

from deeplabv1.crf.engine import cache as engine_cache
from deeplabv1.crf.engine import jit
from deeplabv1.crf.engine.build import MAX_FEATURE as _MAX_FEATURE
from deeplabv1.crf.engine.lattice import NumpyLattice
from deeplabv1.crf.torch.dense import check_features, check_values
from deeplabv1.crf.torch.tables import LatticeTables, lattice_tables

__all__ = ["PermutohedralLattice", "clear_cache"]


class PermutohedralLattice:
    """Permutohedral-lattice Gaussian filter over features (B, N, d).

    float32 features give a float32 lattice (float64 ones a float64 lattice, for
    gradchecks); values are cast to the lattice dtype. Works on any device (CPU, CUDA).
    """

    def __init__(self, features: torch.Tensor, *, phantoms: bool = False) -> None:
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
        entry = _cached(features, phantoms)
        self.tables: LatticeTables = entry.tables
        self.num_lattice = self.tables.num_lattice
        self._entry = entry  # shared by lattices over equal features (see _cached)
        self._ws: tuple[torch.Tensor, ...] | None = None

    def apply(self, values: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
        """Filter values (B, N, C) -> (B, N, C); differentiable w.r.t. values.

        reverse=True blurs the axes in reverse order: the exact adjoint of reverse=False.
        """
        check_values(values, self.batch, self.num_points)
        values = values.to(device=self.device, dtype=self.dtype)
        return _LatticeFilter.apply(values, self, reverse)

    def normalizer(self) -> torch.Tensor:
        """The filtered all-ones image (B, N, 1), i.e. K 1 (computed once per lattice)."""
        if self._entry.normalizer is None:
            ones = torch.ones(self.batch, self.num_points, 1, dtype=self.dtype,
                              device=self.device)  # fmt: skip
            with torch.no_grad():
                self._entry.normalizer = self.filter(ones)
        return self._entry.normalizer

    def uses_numba(self) -> bool:
        """True when filtering runs the numba kernels (CPU, numba available)."""
        return self.device.type == "cpu" and jit.available()

    def numba_tables(self) -> NumpyLattice:
        """The tables as an engine NumpyLattice (views, built once) for the numba kernels."""
        if self._entry.numba is None:
            t = self.tables
            offs = t.slice.col_indices()
            nv = offs.numel() // max(t.num_points, 1)
            self._entry.numba = NumpyLattice(
                offs.numpy().reshape(t.num_points, nv),
                t.slice.values().numpy().reshape(t.num_points, nv),
                t.bary.numpy(),
                t.neighbours.numpy(),
            )
        return self._entry.numba

    def filter(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """The filter without autograd bookkeeping; values (B, N, C) in the lattice dtype."""
        if self.uses_numba():
            return self._filter_numba(values, reverse)
        t = self.tables
        m = t.num_lattice
        c = values.shape[-1]
        flat = values.reshape(t.num_points, c)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        cur, nxt, gathered, spare = self._workspace(c)
        torch.addmm(cur[:m], t.splat_csr(), flat, beta=0.0, out=cur[:m])
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

    def _filter_numba(self, values: torch.Tensor, reverse: bool) -> torch.Tensor:
        """The same filter by the numba kernels (numpy_lattice: splat, d+1 blurs, slice)."""
        flat = values.reshape(self.tables.num_points, values.shape[-1]).contiguous().numpy()
        out = self.numba_tables().filter(flat, reverse, torch.get_num_threads())
        return torch.from_numpy(out).view(self.batch, self.num_points, -1)

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


class _Entry:
    """A built lattice and what is derived from it, shared through the cache."""

    def __init__(self, features: torch.Tensor | None, tables: LatticeTables, phantoms: bool):
        self.features = features
        self.phantoms = phantoms
        self.tables = tables
        self.normalizer: torch.Tensor | None = None
        self.numba: NumpyLattice | None = None


# The last CACHE_SIZE lattices by their features. The position-only (Gaussian) lattice
# depends only on (B, H, W, sxy), so repeated calls (the CLI, a batch of images of one size,
# the benchmark's repeats) build it once; comparing the features costs ~0.3 ms at 500x375.
CACHE_SIZE = 2
_CACHE: list[_Entry] = []


def _cached(features: torch.Tensor, phantoms: bool) -> _Entry:
    """The cache entry of features (B, N, d), building the lattice on a miss."""
    features = features.detach()
    for k, e in enumerate(_CACHE):
        f = e.features
        if (f.shape == features.shape and f.dtype == features.dtype and e.phantoms == phantoms
                and f.device == features.device and torch.equal(f, features)):  # fmt: skip
            _CACHE.insert(0, _CACHE.pop(k))
            return e
    if CACHE_SIZE > 0 and len(_CACHE) >= CACHE_SIZE:
        _CACHE.pop()  # evict before building: the peak memory then holds one lattice less
    with torch.no_grad():
        entry = _Entry(features.clone(), lattice_tables(features, phantoms), phantoms)
    if CACHE_SIZE > 0:
        _CACHE.insert(0, entry)
    return entry


def clear_cache() -> None:
    """Forget the cached lattices, the torch-free engine's too (they are rebuilt on demand)."""
    _CACHE.clear()
    engine_cache.clear_cache()


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
