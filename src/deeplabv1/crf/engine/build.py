"""Building the permutohedral lattice (Adams, Baek, Davis 2010) on numpy arrays, no torch.

``build_lattice(features, n)`` follows Kraehenbuehl's code as pydensecrf ships it: ``embed``
finds each point's enclosing simplex and barycentric weights (the numba kernel, with
pydensecrf's float32 arithmetic), the vertex keys (batch, remainder, q_0..q_{d-1}) are packed
into one integer per vertex (``Radix``, sized here), ``hash_vertices`` numbers the distinct
vertices by first occurrence and ``neighbours`` looks up the blur neighbours. For the pydensecrf
drop-in the build also hashes, as pydensecrf does, the vertices of a few zero "phantom" points
after each image whose size is not a multiple of 4 (``phantom_points``): they carry no values
but take part in the blur, which changes the filter near the origin of the feature space
(Kraehenbuehl's scalar code, and the rest of this package, have no such points). The tables are
exactly those of the torch side's sort-based build (tests/test_crf_numpy_engine.py); when
the packed codes would need more than 62 bits (tiny standard deviations) the hash table keys
on the vertices' coordinate rows instead (``build_tables_wide``), with the same tables.
"""

from __future__ import annotations

import math

import numpy as np

from deeplabv1.crf.engine import lazy_module, threads
from deeplabv1.crf.engine.lattice import NumpyLattice

build_kernels = lazy_module("deeplabv1.crf.engine.build_kernels")

__all__ = [
    "MAX_CODE_BITS",
    "MAX_FEATURE",
    "Radix",
    "build_lattice",
    "build_tables",
    "build_tables_wide",
    "check_features",
    "embed",
    "make_radix",
    "neighbour_deltas",
    "pad_images",
    "phantom_points",
    "radix_from_bounds",
    "real_rows",
    "scale_factors",
    "slice_alpha",
]

MAX_CODE_BITS = 62  # packed vertex codes must stay below 2**MAX_CODE_BITS
# Lattice coordinates are int64 (and float32 is exact to 2**24 only): beyond this magnitude
# every point is alone in its simplex anyway.
MAX_FEATURE = 2.0**40


def scale_factors(d: int, dtype=np.float32) -> np.ndarray:
    """scale[i] = sqrt(2/3) (d+1) / sqrt((i+1)(i+2)) (features in lattice units). In float32
    rounded as pydensecrf rounds them (sqrt(2/3) (d+1) to float32 first); in float64 exact."""
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    if np.dtype(dtype) == np.float32:
        inv_std = float(np.float32(inv_std))
    return np.array([inv_std / math.sqrt((i + 2) * (i + 1)) for i in range(d)], dtype)


def slice_alpha(d: int) -> float:
    """The slice's scale alpha = 1 / (1 + 2^-d)."""
    return 1.0 / (1.0 + 2.0 ** (-d))


def embed(features_t: np.ndarray, num_threads: int | None = None):
    """Enclosing simplices of float32 features (d, P) (coordinate-major), by the numba kernel.

    Returns q0 (d+1, P) int64 (rem0 = (d+1) q0), rank (d+1, P) int64 and bary (d+1, P)
    float32, bitwise equal to the torch side's ``build.embed``.
    """
    d, p = features_t.shape
    q0 = np.empty((d + 1, p), np.int64)
    rank = np.empty((d + 1, p), np.int64)
    bary = np.empty((d + 1, p), np.float32)
    feats = np.ascontiguousarray(features_t, dtype=np.float32)
    scale = scale_factors(d)
    parts = threads.ranges(p, threads.use_threads(num_threads))
    bad = np.zeros(len(parts), np.int64)
    threads.run(build_kernels.embed, [(feats, scale, q0, rank, bary, bad[t : t + 1], lo, hi)
                                      for t, (lo, hi) in enumerate(parts)])  # fmt: skip
    if bad.any():
        raise ValueError(_too_large(float(np.abs(feats).max())))
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


def build_tables(q0, rank, radix: Radix, n: int, index=np.int64, num_threads=None):
    """Vertex ids (P, d+1) int32 (lattice points numbered by first pixel) and neighbours
    (d+1, 2, M) of dtype ``index`` (int64: torch's index type; M where missing) of the
    simplices q0, rank (d+1, P); images of n points each never share a vertex."""
    d = radix.d
    p = q0.shape[1]
    ids = np.empty((p, d + 1), np.int32)
    lo = np.asarray(radix.lo, np.int64)
    strides = np.asarray(radix.strides, np.int64)
    uniq, keys, tids = build_kernels.hash_vertices(
        q0, rank, lo, strides, radix.r_stride, radix.b_stride, n, ids
    )
    m = uniq.shape[0]
    nbrs = np.full((d + 1, 2, m), m, index)
    deltas = np.ascontiguousarray(neighbour_deltas(radix)[:, 0])
    jobs = [(uniq, keys, tids, radix.r_stride, deltas, nbrs, lo, hi)
            for lo, hi in threads.ranges(m, threads.use_threads(num_threads))]  # fmt: skip
    threads.run(build_kernels.neighbours, jobs)
    return ids, nbrs


def _too_large(top: float) -> str:
    return (
        f"features: values up to {top:.3g} (positions or colours divided by their standard "
        "deviations) are too large for the lattice's float32 arithmetic: it finds no simplex "
        "for some points (pydensecrf writes out of bounds there); use larger standard "
        "deviations or scale the features down"
    )


def build_tables_wide(q0, rank, n: int, index=np.int64, num_threads=None):
    """``build_tables`` for feature ranges whose packed codes need more than MAX_CODE_BITS
    bits (tiny standard deviations): the hash keys are the vertices' (batch, r, q) rows, the
    tables the same. About 2x slower than packed codes, and (d+2) 8 bytes per vertex more."""
    p = q0.shape[1]
    ids = np.empty((p, q0.shape[0]), np.int32)
    keys, table = build_kernels.hash_vertex_rows(q0, rank, n, ids)
    m = keys.shape[0]
    nbrs = np.full((q0.shape[0], 2, m), m, index)
    jobs = [(keys, table, nbrs, lo, hi)
            for lo, hi in threads.ranges(m, threads.use_threads(num_threads))]  # fmt: skip
    threads.run(build_kernels.neighbour_rows, jobs)
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


def phantom_points(n: int) -> int:
    """Zero points pydensecrf's SSE build adds to an image of n points: it embeds points in
    blocks of 4, the last block padded with zero features, and hashes the vertices of the
    padding too (they get no values but take part in the blur)."""
    return -n % 4


def pad_images(features: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Features (P, d) of images of n points each, every image followed by its phantom zero
    points (``phantom_points``): (P', d) and the padded image size n'."""
    pad = phantom_points(n)
    if not pad:
        return features, n
    batch, d = features.shape[0] // n, features.shape[1]
    out = np.zeros((batch, n + pad, d), np.float32)
    out[:, :n] = features.reshape(batch, n, d)
    return out.reshape(-1, d), n + pad


def real_rows(table: np.ndarray, n: int, padded: int) -> np.ndarray:
    """The rows of a (P', ...) table that belong to real points (drops the phantom ones)."""
    if padded == n:
        return table
    rows = table.reshape(-1, padded, *table.shape[1:])[:, :n]
    return np.ascontiguousarray(rows.reshape(-1, *table.shape[1:]))


def build_lattice(features: np.ndarray, n: int, num_threads=None, phantoms: bool = False):
    """The lattice of float32 features (P, d), images of n points each. ``phantoms``: with
    pydensecrf's phantom vertices (the drop-in)."""
    if features.ndim != 2 or min(features.shape) < 1 or n < 1 or features.shape[0] % n:
        raise ValueError(f"features: expected (P, d) with P a multiple of n={n}, "
                         f"got {features.shape}")  # fmt: skip
    p, d = features.shape
    check_features(features)
    padded_features, padded = pad_images(features, n) if phantoms else (features, n)
    q0, rank, bary = embed(padded_features.T, num_threads)
    del padded_features
    radix = make_radix(q0, p // n)
    # int32 neighbours (the blur's index; half the bytes of int64) while M + 1 fits
    index = np.int32 if q0.shape[1] * (d + 1) < 1 << 31 else np.int64
    if radix is None:  # the packed codes would not fit: hash the key rows themselves
        ids, nbrs = build_tables_wide(q0, rank, padded, index, num_threads)
    else:
        ids, nbrs = build_tables(q0, rank, radix, padded, index, num_threads)
    del q0, rank
    bary_pm = real_rows(np.ascontiguousarray(bary.T), n, padded)  # (P, d+1) pixel-major
    del bary
    return NumpyLattice(real_rows(ids, n, padded), None, bary_pm, nbrs, alpha=slice_alpha(d))
