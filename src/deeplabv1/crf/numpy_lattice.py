"""The permutohedral lattice on numpy arrays and the numba kernels: the CPU engine, no torch.

This module must never import torch: the pydensecrf drop-in (densecrf.py) runs on it alone, so
a CPU process pays for numpy + numba (about 150 MiB with the compiled kernels loaded) instead
of torch's 220 MiB import. The torch classes (lattice.py, lattice_index.py, meanfield.py) use
the same functions on the CPU and wrap the arrays with ``torch.from_numpy``: one
implementation of the numba path.

    lat = cached_lattice(features, n)        # features (P, d) float32, images of n points each
    out = lat.filter(values)                 # (P, C) -> (P, C); reverse=True: adjoint order
    norm = lat.normalizer()                  # K 1, (P, 1), computed once

Build (SPEC 4a, same arithmetic as lattice_build.py): the numba ``embed`` finds each point's
simplex, the mixed-radix packing of the vertex keys (batch, r, q_0..q_{d-1}) is sized here,
``hash_vertices`` numbers the distinct vertices by first occurrence (pixel-major) and
``neighbours`` looks up the blur neighbours. The tables equal the torch sort-based build's
(tests/test_crf_numpy_engine.py). When the codes do not fit in 62 bits ``build_lattice``
returns None (the torch path has a slower unique-rows build for that).

Threads: the kernels run on ``get_num_threads()`` threads, numba's pool size unless
``set_num_threads(n)`` was called (the torch classes pass ``torch.get_num_threads()``).
"""

from __future__ import annotations

import math

import numpy as np

from deeplabv1.crf import lattice_numba

__all__ = [
    "CACHE_SIZE",
    "NumpyLattice",
    "Radix",
    "build_lattice",
    "build_tables",
    "cached_lattice",
    "clear_cache",
    "embed",
    "get_num_threads",
    "make_radix",
    "neighbour_deltas",
    "radix_from_bounds",
    "scale_factors",
    "set_num_threads",
    "use_threads",
]

MAX_CODE_BITS = 62  # packed vertex codes must stay below 2**MAX_CODE_BITS
# Lattice coordinates are int64 (and float32 is exact to 2**24 only): beyond this magnitude
# every point is alone in its simplex anyway.
MAX_FEATURE = 2.0**40

_THREADS: int | None = None  # None: numba's pool size


def available() -> bool:
    """True when the engine can run (numba importable and not disabled)."""
    return lattice_numba.available()


def set_num_threads(n: int) -> None:
    """Threads of the torch-free CPU engine (clamped to numba's pool, NUMBA_NUM_THREADS).

    The torch path keeps following ``torch.get_num_threads()``.
    """
    if int(n) < 1:
        raise ValueError(f"set_num_threads: need n >= 1, got {n}")
    global _THREADS
    _THREADS = int(n)


def get_num_threads() -> int:
    """Threads the engine runs on: the ``set_num_threads`` value or numba's pool size."""
    pool = lattice_numba.numba.config.NUMBA_NUM_THREADS if available() else 1
    return min(_THREADS, pool) if _THREADS is not None else pool


def use_threads(threads: int | None = None) -> int:
    """Set numba's thread count for the next kernels: ``threads``, or the engine's setting."""
    return lattice_numba.set_threads(threads if threads else get_num_threads())


def scale_factors(d: int) -> list[float]:
    """scale[i] = sqrt(2/3) (d+1) / sqrt((i+1)(i+2)): features in units of the lattice."""
    return [math.sqrt(2.0 / 3.0) * (d + 1) / math.sqrt((i + 1) * (i + 2)) for i in range(d)]


def embed(features_t: np.ndarray, threads: int | None = None):
    """Enclosing simplices of float32 features (d, P) (coordinate-major), by the numba kernel.

    Returns q0 (d+1, P) int64 (rem0 = (d+1) q0), rank (d+1, P) int64 and bary (d+1, P)
    float32, bitwise equal to lattice_build.embed's torch arithmetic.
    """
    d, p = features_t.shape
    q0 = np.empty((d + 1, p), np.int64)
    rank = np.empty((d + 1, p), np.int64)
    bary = np.empty((d + 1, p), np.float32)
    use_threads(threads)
    scale = np.asarray(scale_factors(d), dtype=np.float32)
    lattice_numba.embed(np.ascontiguousarray(features_t, dtype=np.float32), scale, q0, rank, bary)
    return q0, rank, bary


class Radix:
    """Mixed-radix packing of (batch, r, q_0..q_{d-1}) into one int64 per lattice point."""

    def __init__(self, lo: list[int], sizes: list[int], d: int) -> None:
        self.d = d
        self.lo = lo
        self.strides = [math.prod(sizes[i + 1 :]) for i in range(d)]
        self.r_stride = math.prod(sizes)
        self.b_stride = self.r_stride * (d + 1)


def radix_from_bounds(lo_q0, hi_q0, d: int, batch_size: int, max_bits: int = MAX_CODE_BITS):
    """The packing for q0 ranges [lo_q0, hi_q0] of the first d coordinates, or None when the
    codes would not fit in max_bits. Vertices reach q0 - 1, their neighbours q0 - 2 and q0 + 1."""
    lo = [int(v) - 2 for v in lo_q0]
    sizes = [int(h) + 1 - lo_k + 1 for lo_k, h in zip(lo, hi_q0)]
    if math.prod(sizes) * (d + 1) * batch_size >= 1 << max_bits:
        return None
    return Radix(lo, sizes, d)


def make_radix(q0: np.ndarray, batch_size: int, max_bits: int = MAX_CODE_BITS) -> Radix | None:
    """The packing for the simplices q0 (d+1, P), or None when the codes do not fit."""
    d = q0.shape[0] - 1
    return radix_from_bounds(q0[:d].min(1), q0[:d].max(1), d, batch_size, max_bits)


def neighbour_deltas(radix: Radix) -> np.ndarray:
    """(d+1 axes, 2, d+1 remainders) int64 code offsets of the two blur neighbours per axis.

    Neighbour 1 is key - 1 except key_j + d (r -> r-1); neighbour 2 is key + 1 except key_j - d
    (r -> r+1). With k = (d+1) q + r: n1 lowers every q_i by [r == 0] and raises q_j by one;
    n2 raises every q_i by [r == d] and lowers q_j by one. Axis j = d has no digit of its own
    (the implicit last coordinate absorbs the change).
    """
    d = radix.d
    all_q = sum(radix.strides)
    out = np.zeros((d + 1, 2, d + 1), np.int64)
    for j in range(d + 1):
        sj = radix.strides[j] if j < d else 0
        for r in range(d + 1):
            out[j, 0, r] = ((r - 1) % (d + 1) - r) * radix.r_stride - (r == 0) * all_q + sj
            out[j, 1, r] = ((r + 1) % (d + 1) - r) * radix.r_stride + (r == d) * all_q - sj
    return out


def build_tables(q0: np.ndarray, rank: np.ndarray, radix: Radix, n: int, index=np.int64):
    """Vertex ids (P, d+1) int32 (lattice points numbered by first pixel) and neighbours
    (d+1, 2, M) of dtype ``index`` (int64: torch's index type; M where missing) of the
    simplices q0, rank (d+1, P); images of n points each never share a vertex."""
    d = radix.d
    p = q0.shape[1]
    ids = np.empty((p, d + 1), np.int32)
    lo = np.asarray(radix.lo, np.int64)
    strides = np.asarray(radix.strides, np.int64)
    uniq, keys, tids = lattice_numba.hash_vertices(
        q0, rank, lo, strides, radix.r_stride, radix.b_stride, n, ids
    )
    nbrs = np.empty((d + 1, 2, uniq.shape[0]), index)
    deltas = np.ascontiguousarray(neighbour_deltas(radix)[:, 0])
    lattice_numba.neighbours(uniq, keys, tids, radix.r_stride, deltas, nbrs)
    return ids, nbrs


def check_features(features: np.ndarray) -> None:
    """ValueError unless features are finite and within MAX_FEATURE in magnitude."""
    if features.size and not np.isfinite(features).all():
        raise ValueError("features: contains NaN or infinite values")
    top = float(np.abs(features).max()) if features.size else 0.0
    if top > MAX_FEATURE:
        raise ValueError(
            f"features: values up to {top:.3g} exceed {MAX_FEATURE:.3g}; at such scales the "
            "Gaussian filter is the identity, scale the features down"
        )


def build_lattice(features: np.ndarray, n: int, threads: int | None = None):
    """The lattice of float32 features (P, d), images of n points each; None when the codes do
    not fit in MAX_CODE_BITS."""
    if features.ndim != 2 or min(features.shape) < 1 or n < 1 or features.shape[0] % n:
        raise ValueError(f"features: expected (P, d) with P a multiple of n={n}, "
                         f"got {features.shape}")  # fmt: skip
    p, d = features.shape
    check_features(features)
    q0, rank, bary = embed(features.T, threads)
    radix = make_radix(q0, p // n)
    if radix is None:
        return None
    # int32 neighbours (the blur's index; half the bytes of int64) while M + 1 fits
    index = np.int32 if q0.shape[1] * (d + 1) < 1 << 31 else np.int64
    ids, nbrs = build_tables(q0, rank, radix, n, index)
    del q0, rank
    bary_pm = np.ascontiguousarray(bary.T)  # (P, d+1) pixel-major
    del bary
    return NumpyLattice(ids, None, bary_pm, nbrs, alpha=slice_alpha(d))


def slice_alpha(d: int) -> float:
    """The slice's scale alpha = 1 / (1 + 2^-d)."""
    return 1.0 / (1.0 + 2.0 ** (-d))


class NumpyLattice:
    """Lattice tables as arrays (P points, M lattice points, dimension d) and the filter.

    offs (P, d+1) int vertex ids, wts (P, d+1) slice weights (bary * alpha), bary (P, d+1)
    splat weights, neighbours (d+1, 2, M) int32 or int64 (M: missing). float32 or float64
    tables.
    With ``wts`` None the slice weights are not stored but computed when needed as
    ``bary * float32(alpha)`` (the same bits; 4 (d+1) bytes per pixel less to keep).
    """

    def __init__(self, offs, wts, bary, neighbours, alpha: float | None = None) -> None:
        if wts is None and alpha is None:
            raise ValueError("NumpyLattice: give the slice weights or alpha")
        self.offs, self.bary = offs, bary
        self._wts = wts
        self.alpha = alpha
        self.neighbours = neighbours
        self.n1 = list(neighbours[:, 0])
        self.n2 = list(neighbours[:, 1])
        self.num_points = offs.shape[0]
        self.num_lattice = neighbours.shape[2]
        self.dtype = bary.dtype
        self._ws: tuple[np.ndarray, ...] | None = None
        self._norm: np.ndarray | None = None

    @property
    def wts(self) -> np.ndarray:
        """The slice weights (P, d+1): stored, or bary * alpha computed now (a new array)."""
        if self._wts is not None:
            return self._wts
        return self.bary * self.dtype.type(self.alpha)

    def slice_weights(self, post) -> np.ndarray:
        """float32 slice weights times ``post`` ((P, 1) array or a scalar), a new array:
        (bary * alpha) * post, rounded as the stored product would be."""
        if self._wts is not None:
            return np.multiply(self._wts, post, dtype=np.float32)
        out = np.multiply(self.bary, self.dtype.type(self.alpha), dtype=np.float32)
        out *= post
        return out

    def filter(self, values: np.ndarray, reverse: bool = False, threads: int | None = None):
        """K values: splat, blur along axes 0..d (d..0 with reverse), slice; (P, C) -> (P, C)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        acc, a, b = self.workspace(values.shape[1], use_threads(threads))
        lattice_numba.splat_scatter(self.offs, self.bary, values, acc)
        lat = self.blur(acc, a, b, reverse)
        out = np.empty_like(values)
        lattice_numba.slice_(self.offs, self.wts, lat, out)
        return out

    def normalizer(self, threads: int | None = None) -> np.ndarray:
        """The filtered all-ones image K 1 (P, 1), computed once."""
        if self._norm is None:
            self._norm = self.filter(np.ones((self.num_points, 1), self.dtype), threads=threads)
        return self._norm

    def workspace(self, c: int, threads: int) -> tuple[np.ndarray, ...]:
        """Splat buffers acc (threads, M+1, c), the blur result buffer a (M+1, c) and the blur's
        spare b (acc[1] with several workers; its own buffer on one worker for an even axis
        count; else None), all with a zero last row, cached for the last (c, threads):
        reuse saves the page faults of new buffers."""
        ws = self._ws
        if ws is None or ws[1].shape[1] != c or ws[0].shape[0] != threads:
            rows = self.num_lattice + 1
            self._ws = ws = None  # free the old buffers first
            acc = np.zeros((threads, rows, c), self.dtype)
            if threads > 1:
                spare = acc[1]
            elif len(self.n1) % 2 == 0:
                spare = np.zeros((rows, c), self.dtype)
            else:
                spare = None
            ws = self._ws = (acc, np.zeros((rows, c), self.dtype), spare)
        return ws

    def release_workspace(self) -> None:
        """Forget the cached blur buffers (the mean field frees them after its last blur)."""
        self._ws = None

    def blur(self, acc, a, b, reverse: bool = False):
        """Blur the splatted acc (rows: M lattice points + a zero row) along every axis into a
        (returned). acc[0] is the ping-pong partner of a; an even axis count goes through b
        first (acc[1] or a spare buffer) so that the result lands in a, outside acc (the
        fused mean-field pass splats into acc while it slices the result)."""
        axes = list(range(len(self.n1) - 1, -1, -1) if reverse else range(len(self.n1)))
        if acc.shape[0] == 1:  # one worker: serial kernels (no parallel-region launches)
            kernel = lattice_numba.blur_serial
        else:
            lattice_numba.reduce_first(acc)
            kernel = lattice_numba.blur
        src = acc[0]
        if len(axes) % 2 == 0:
            j = axes.pop(0)
            kernel(src, b, self.n1[j], self.n2[j])
            src = b
        for k, j in enumerate(axes):  # an odd count left: src -> a -> acc[0] -> ... -> a
            dst = a if k % 2 == 0 else acc[0]
            kernel(src, dst, self.n1[j], self.n2[j])
            src = dst
        return a


# The last CACHE_SIZE lattices by their features. The position-only (Gaussian) lattice
# depends only on (H, W, sxy), so repeated calls (the CLI, a batch of images of one size,
# the benchmark's repeats) build it once; comparing the features costs ~0.3 ms at 500x375.
CACHE_SIZE = 2
_CACHE: list[tuple[np.ndarray, int, NumpyLattice]] = []


def cached_lattice(features: np.ndarray, n: int, threads: int | None = None, copy: bool = True):
    """``build_lattice(features, n)`` through the cache (None when the codes do not fit).

    The cache keeps a copy of the features, or with ``copy=False`` the array itself (the
    caller then promises never to modify it: the drop-in's private feature arrays).
    """
    lat = _lookup(features, n)
    if lat is not None:
        return lat
    if CACHE_SIZE > 0 and len(_CACHE) >= CACHE_SIZE:
        _CACHE.pop()  # evict before building: the peak memory then holds one lattice less
    lat = build_lattice(features, n, threads)
    if CACHE_SIZE > 0 and lat is not None:
        _CACHE.insert(0, (features.copy() if copy else features, n, lat))
    return lat


def _lookup(features: np.ndarray, n: int) -> NumpyLattice | None:
    """The cached lattice of these features (moved to the front), or None. A function of its
    own: no loop variable of the caller then holds a cached entry when the caller evicts one
    (measured: the old bilateral lattice and its buffers, 40 MiB at 500x375, stayed alive
    through the next build)."""
    for k, (f, fn, _) in enumerate(_CACHE):
        if fn == n and f.shape == features.shape and np.array_equal(f, features):
            _CACHE.insert(0, _CACHE.pop(k))
            return _CACHE[0][2]
    return None


def cached_features(lat: NumpyLattice) -> np.ndarray | None:
    """The features array the cache keeps for ``lat`` (None when it is not cached): a caller
    holding equal features can keep this one instead of a second copy."""
    for f, _, cached in _CACHE:
        if cached is lat:
            return f
    return None


def clear_cache() -> None:
    """Forget the cached lattices (they are rebuilt on demand)."""
    _CACHE.clear()
