"""numba kernels of the permutohedral filter: splat, reduce, blur and slice.

Each works on a range of rows (pixels or lattice points) so that threads.run can give every
thread its own range. Values are rows of C floats; lattice buffers have M + 1 rows, the last
one zero (the value of a missing blur neighbour). Rows whose width is a multiple of 8 go
through the 8-lane vector operations of simd.py, with the same bits as the scalar loops.
"""

from __future__ import annotations

import numpy as np

from deeplabv1.crf.engine.jit import kernel
from deeplabv1.crf.engine.simd import blur8, prefetch_read

__all__ = ["blur", "reduce_rows", "slice_", "splat"]

# Rows ahead whose blur neighbours ``blur`` prefetches (scattered rows; measured on the 5-D
# lattice at 500x375, 21 labels: an axis 0.31 -> 0.29 ms)
_AHEAD = 8


@kernel
def splat(offs, bary, values, acc, lo, hi):  # pragma: no cover - compiled
    """acc = 0, then acc[offs[i, r]] += bary[i, r] values[i] for the pixels lo..hi (acc: this
    thread's (M + 1, C) buffer; its zero last row is left alone)."""
    c = values.shape[1]
    acc[: acc.shape[0] - 1] = 0
    if c == 1:  # one column (the normaliser): no label loop
        for i in range(lo, hi):
            x = values[i, 0]
            for r in range(offs.shape[1]):
                acc[offs[i, r], 0] += bary[i, r] * x
        return
    for i in range(lo, hi):
        for r in range(offs.shape[1]):
            w = bary[i, r]
            v = offs[i, r]
            for k in range(c):
                acc[v, k] += w * values[i, k]


@kernel
def reduce_rows(acc, lo, hi):  # pragma: no cover - compiled
    """acc[0, m] += acc[1, m] + ... for the rows m in lo..hi (the threads' splat buffers)."""
    for m in range(lo, hi):
        for t in range(1, acc.shape[0]):
            for k in range(acc.shape[2]):
                acc[0, m, k] += acc[t, m, k]


@kernel
def blur(src, dst, n1, n2, lo, hi):  # pragma: no cover - compiled
    """dst[m] = src[m] + (src[n1[m]] + src[n2[m]]) / 2 for the rows m in lo..hi; row M of src
    is the zero row."""
    c = src.shape[1]
    half = src.dtype.type(0.5)
    if c % 8 == 0:
        for m in range(lo, hi):
            if m + _AHEAD < hi:
                a = n1[m + _AHEAD] * c
                b = n2[m + _AHEAD] * c
                prefetch_read(src, a)
                prefetch_read(src, a + c - 1)
                prefetch_read(src, b)
                prefetch_read(src, b + c - 1)
            a = n1[m] * c
            b = n2[m] * c
            for k0 in range(0, c, 8):
                blur8(dst, m * c + k0, src, m * c + k0, a + k0, b + k0)
    else:
        for m in range(lo, hi):
            a = n1[m]
            b = n2[m]
            for k in range(c):
                dst[m, k] = src[m, k] + half * (src[a, k] + src[b, k])


@kernel
def slice_(offs, wts, lat, out, lo, hi, base):  # pragma: no cover - compiled
    """out[i] = base[i] + sum_r wts[i, r] * lat[offs[i, r]] for the pixels lo..hi; a base of
    no rows adds nothing (out may be base; lat may have more (padding) columns than out)."""
    c = out.shape[1]
    cp = lat.shape[1]
    add = base.shape[0] > 0
    if cp == 1:  # one column (the normaliser): no label loop
        for i in range(lo, hi):
            t = out.dtype.type(0)
            for r in range(offs.shape[1]):
                t += wts[i, r] * lat[offs[i, r], 0]
            out[i, 0] = base[i, 0] + t if add else t
        return
    acc = np.empty(cp, dtype=out.dtype)
    for i in range(lo, hi):
        for k in range(cp):
            acc[k] = 0
        for r in range(offs.shape[1]):
            w = wts[i, r]
            v = offs[i, r]
            for k in range(cp):
                acc[k] += w * lat[v, k]
        if add:
            for k in range(c):
                out[i, k] = base[i, k] + acc[k]
        else:
            for k in range(c):
                out[i, k] = acc[k]
