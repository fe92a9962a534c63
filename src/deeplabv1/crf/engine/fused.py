"""The fused mean-field pass: one numba kernel over the pixels per iteration.

For every pixel it slices both terms' blurred lattices (the normaliser and the Potts weight
folded into the slice weights), adds the negated unary, takes the softmax and splats the new
marginals into both terms' lattices, so that Q never makes a trip through memory between the
two. Two kernels, the same arithmetic in the same order (the same bits):

- ``fused_step_wide`` for label rows padded to a multiple of 8 (8 labels and more): slices,
  splats (simd_vertices.py) and the softmax's row work (simd_rows.py) in 8-lane vectors (measured at
  500x375, 21 labels, one thread: the pass 18.9 -> 16.4 ms with the softmax rows as vectors),
  splat rows prefetched a few pixels ahead;
- ``fused_step`` for any row width (a few labels, unpadded): scalar loops that LLVM
  vectorises, the exp over blocks of pixels.

Both work on a range of pixels with one thread's splat buffers (threads.run).
"""

from __future__ import annotations

import numpy as np

from deeplabv1.crf.engine.jit import inline, kernel
from deeplabv1.crf.engine.simd import (
    EXP,
    LOW,
    axpy8,
    prefetch_stream,
    prefetch_write,
)
from deeplabv1.crf.engine.simd_rows import copy8, logits8, normalize8, shift8
from deeplabv1.crf.engine.simd_vertices import slice_row3, slice_row6, splat_row3, splat_row6

__all__ = ["fused_step", "fused_step_wide"]

_ONE = np.float32(1.0)
_MIN_X, _LOG2E, _HALF = EXP["min_x"], EXP["log2e"], EXP["half"]
_LN2_HI, _LN2_LO, _C, _BIAS = EXP["ln2_hi"], EXP["ln2_lo"], EXP["coef"], EXP["bias"]
# Pixels per block: the exp runs over a block as one long loop, and both kernels write the
# label-major output block by block (measured at 500x375, 21 labels, one thread: a pass
# 16.9 / 15.9 / 14.5 / 13.9 / 13.8 ms with blocks of 8 / 16 / 32 / 64 / 128 pixels).
_BLOCK = 64
# Pixels ahead whose splat rows the wide kernel prefetches for writing (measured at 500x375,
# 21 labels, one thread: the pass 28.0 -> 25.3 ms median with 4, 25.3 with 8, 26.1 with 16).
# The slice rows are not prefetched: since the pixel streams go around the caches the
# lattices mostly stay in them, and the prefetches only cost instructions (whole CRFs, 80
# alternating runs: 203 -> 190 ms one thread, 152 -> 138 ms two threads at the first quartile).
_AHEAD = 4
# Pixels ahead whose rows of the pixel streams (unary, vertex ids, weights) both kernels
# prefetch non-temporally: read once a pass, they then no longer push the lattices out of
# L2 / L3 (measured at 500x375, 21 labels, one thread, 40 alternating CRFs: 206 -> 186 ms
# at the first quartile, 237 -> 197 ms median; 16 or 64 ahead about the same).
# Written out in both kernels: as an inline helper taking the arrays the wide pass took 9%
# longer (14.2 -> 15.5 ms: reference counting per call).
_STREAM_AHEAD = 32


@inline
def _exp_parts(x):  # pragma: no cover - compiled
    """exp(x) = p * 2^n (simd.EXP); 2^n is assembled from its exponent bits by the caller."""
    x = x if x > _MIN_X else _MIN_X  # a select, not max(): that one stays scalar
    n = np.floor(x * _LOG2E + _HALF)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _C[0]
    p = p * r + _C[1]
    p = p * r + _C[2]
    p = p * r + _C[3]
    p = p * r + _C[4]
    p = p * r + _C[5]
    p = p * r + _ONE
    p = p * r + _ONE
    return p, np.int32(n)


@inline
def _write_block(qt, blk, p0, nb, c):  # pragma: no cover - compiled
    """Q of pixels p0..p0+nb (blk rows) into the label-major qt (B, C, n): runs of nb floats."""
    nimg = qt.shape[2]
    b0 = p0 // nimg
    if (p0 + nb - 1) // nimg == b0:
        j0 = p0 - b0 * nimg
        for k in range(c):
            for i in range(nb):
                qt[b0, k, j0 + i] = blk[i, k]
    else:  # the block spans two images
        for i in range(nb):
            b = (p0 + i) // nimg
            for k in range(c):
                qt[b, k, p0 + i - b * nimg] = blk[i, k]


@kernel
def fused_step_wide(
    unary, q, offs, wts, post, alpha, lat, bary, acc,
    offs2, wts2, post2, alpha2, lat2, bary2, acc2, store, qt, c, lo, hi
):  # pragma: no cover - compiled
    """``fused_step`` for rows of Cp = a multiple of 8 floats: slices and splats in 8-lane
    vectors, splat rows prefetched a few pixels ahead; the unary (P, Cp) holds the padding
    energy meanfield.PAD in its columns c.. (the same bits)."""
    cp = q.shape[1]
    splatting = bary.shape[1] > 0
    if splatting:
        acc[: acc.shape[0] - 1] = 0
    if bary2.shape[1] > 0:
        acc2[: acc2.shape[0] - 1] = 0
    nv, nv2 = wts.shape[1], wts2.shape[1]  # 0 without slices (the first pass): x = y = 0
    nb1, nb2 = bary.shape[1], bary2.shape[1]  # 0 without splats (the last pass)
    x = np.zeros(cp, dtype=np.float32)
    y = np.zeros(cp, dtype=np.float32)
    blk = np.zeros((_BLOCK, cp), dtype=np.float32)
    flat = blk.reshape(_BLOCK * cp)
    bits = np.zeros(_BLOCK * cp, dtype=np.int32)
    pow2 = bits.view(np.float32)
    for p0 in range(lo, hi, _BLOCK):
        nb = min(_BLOCK, hi - p0)
        for i in range(nb):
            p = p0 + i
            pn = p + _STREAM_AHEAD
            if pn < hi:  # the pixel streams, non-temporally
                prefetch_stream(unary, pn * unary.shape[1])
                prefetch_stream(unary, pn * unary.shape[1] + unary.shape[1] - 1)
                prefetch_stream(offs, pn * offs.shape[1])
                prefetch_stream(wts, pn * wts.shape[1])
                prefetch_stream(bary, pn * bary.shape[1])
                prefetch_stream(offs2, pn * offs2.shape[1])
                prefetch_stream(wts2, pn * wts2.shape[1])
                prefetch_stream(bary2, pn * bary2.shape[1])
                if (pn & 15) == 0:  # 16 floats a line
                    prefetch_stream(post, min(pn, post.shape[0] - 1))
                    prefetch_stream(post2, min(pn, post2.shape[0] - 1))
            # the slices, in vertex order (helpers taking arrays would cost reference
            # counting per call: written out here)
            if nv == 6:
                slice_row6(x, lat, offs, wts, post, alpha, p)
            elif nv == 3:
                slice_row3(x, lat, offs, wts, post, alpha, p)
            else:
                for k in range(cp):
                    x[k] = 0
                for r in range(nv):
                    base = offs[p, r] * cp
                    w = (np.float32(wts[p, r]) * alpha) * post[p]
                    for k0 in range(0, cp, 8):
                        axpy8(x, k0, lat, base + k0, w)
            if nv2 == 6:
                slice_row6(y, lat2, offs2, wts2, post2, alpha2, p)
            elif nv2 == 3:
                slice_row3(y, lat2, offs2, wts2, post2, alpha2, p)
            else:
                for k in range(cp):
                    y[k] = 0
                for r in range(nv2):
                    base = offs2[p, r] * cp
                    w = (np.float32(wts2[p, r]) * alpha2) * post2[p]
                    for k0 in range(0, cp, 8):
                        axpy8(y, k0, lat2, base + k0, w)
            mx = logits8(x, y, unary, p * cp)  # padding: (0 - PAD) + 0 = LOW
            shift8(flat, i * cp, x, mx)
        m = nb * cp  # exp over the whole block in one long loop
        for k in range(m):
            e, n2 = _exp_parts(flat[k])
            flat[k] = e
            bits[k] = (n2 << 23) + _BIAS
        for k in range(m):
            flat[k] *= pow2[k]
        for i in range(nb):
            p = p0 + i
            if splatting and i + _AHEAD < nb:  # the splat rows of a pixel ahead
                for r in range(offs.shape[1]):
                    base = offs[p + _AHEAD, r] * cp
                    prefetch_write(acc, base)
                    prefetch_write(acc, base + cp - 1)
                for r in range(offs2.shape[1]):
                    base = offs2[p + _AHEAD, r] * cp
                    prefetch_write(acc2, base)
                    prefetch_write(acc2, base + cp - 1)
            normalize8(x, flat, i * cp, c)
            if store:
                copy8(q, p * cp, x)
            if qt.shape[0] > 0:
                copy8(flat, i * cp, x)
            if nb1 == 6:
                splat_row6(acc, offs, bary, p, x)
            elif nb1 == 3:
                splat_row3(acc, offs, bary, p, x)
            else:
                for r in range(nb1):
                    base = offs[p, r] * cp
                    for k0 in range(0, cp, 8):
                        axpy8(acc, base + k0, x, k0, bary[p, r])
            if nb2 == 6:
                splat_row6(acc2, offs2, bary2, p, x)
            elif nb2 == 3:
                splat_row3(acc2, offs2, bary2, p, x)
            else:
                for r in range(nb2):
                    base = offs2[p, r] * cp
                    for k0 in range(0, cp, 8):
                        axpy8(acc2, base + k0, x, k0, bary2[p, r])
        if qt.shape[0] > 0:
            _write_block(qt, blk, p0, nb, c)


@kernel
def fused_step(
    unary, q, offs, wts, post, alpha, lat, bary, acc,
    offs2, wts2, post2, alpha2, lat2, bary2, acc2, store, qt, c, lo, hi
):  # pragma: no cover - compiled
    """One pass over the pixels lo..hi of c labels' unary energies (P, >= c columns):
    q[p] = softmax(-unary[p] + sum_r w[p,r] lat[offs[p,r]] + the same for term 2) with the
    slice weights w[p,r] = (float32(wts[p,r]) * alpha) * post[p] (the base weights wts (P,
    d+1), the float32 scale alpha and the per-pixel factors post (P,) float32: the rounding
    of lattice.slice_weights, formed here instead of streamed from memory),
    then scatter bary[p,r] q[p] into acc[offs[p,r]] (and acc2): this thread's (M + 1, Cp)
    buffers, zeroed first. q, lat and acc have Cp >= C columns (any Cp; q's padding stays 0).
    The slices run over wts' columns, the splats over bary's: 0-column arrays skip a term's
    slice (the initial softmax) or splat (the last iteration); 0-column offs2, wts2, bary2
    for a single term. q is written only when ``store`` is true (when further terms need
    Q). qt (B, C, n) float32, B n = P, unless it has no rows: receives Q label-major
    (qt[b, k, j] = Q of pixel b n + j), the caller's output, so that the last pass needs no
    pixel-major Q (measured: 17 MiB less at 500x375, 21 labels). Pixels go in blocks of
    _BLOCK: slices and max per pixel, exp over the whole block, then sum, normalisation and
    splat per pixel. Max and sum run over 8 interleaved lanes (a single running max or sum
    is a chain of dependent operations that no compiler may vectorise without fastmath)."""
    cp = q.shape[1]
    if bary.shape[1] > 0:
        acc[: acc.shape[0] - 1] = 0
    if bary2.shape[1] > 0:
        acc2[: acc2.shape[0] - 1] = 0
    x = np.zeros(cp, dtype=np.float32)
    y = np.zeros(cp, dtype=np.float32)
    blk = np.zeros((_BLOCK, cp), dtype=np.float32)
    flat = blk.reshape(_BLOCK * cp)
    bits = np.zeros(_BLOCK * cp, dtype=np.int32)
    pow2 = bits.view(np.float32)
    part = np.zeros(8, dtype=np.float32)
    for p0 in range(lo, hi, _BLOCK):
        nb = min(_BLOCK, hi - p0)
        for i in range(nb):
            p = p0 + i
            pn = p + _STREAM_AHEAD
            if pn < hi:  # the pixel streams, non-temporally
                prefetch_stream(unary, pn * unary.shape[1])
                prefetch_stream(unary, pn * unary.shape[1] + unary.shape[1] - 1)
                prefetch_stream(offs, pn * offs.shape[1])
                prefetch_stream(wts, pn * wts.shape[1])
                prefetch_stream(bary, pn * bary.shape[1])
                prefetch_stream(offs2, pn * offs2.shape[1])
                prefetch_stream(wts2, pn * wts2.shape[1])
                prefetch_stream(bary2, pn * bary2.shape[1])
                if (pn & 15) == 0:  # 16 floats a line
                    prefetch_stream(post, min(pn, post.shape[0] - 1))
                    prefetch_stream(post2, min(pn, post2.shape[0] - 1))
            # the slices (3 and 6 vertices written out, so that the label loop vectorises;
            # helpers taking arrays would cost reference counting per call)
            nv = wts.shape[1]
            if nv == 6:  # d = 5
                sc = post[p]
                w0 = (np.float32(wts[p, 0]) * alpha) * sc
                w1 = (np.float32(wts[p, 1]) * alpha) * sc
                w2 = (np.float32(wts[p, 2]) * alpha) * sc
                w3 = (np.float32(wts[p, 3]) * alpha) * sc
                w4 = (np.float32(wts[p, 4]) * alpha) * sc
                w5 = (np.float32(wts[p, 5]) * alpha) * sc
                v0, v1, v2 = offs[p, 0], offs[p, 1], offs[p, 2]
                v3, v4, v5 = offs[p, 3], offs[p, 4], offs[p, 5]
                for k in range(cp):
                    a = (w0 * lat[v0, k] + w1 * lat[v1, k]) + w2 * lat[v2, k]
                    a = (a + w3 * lat[v3, k]) + w4 * lat[v4, k]
                    x[k] = a + w5 * lat[v5, k]
            elif nv == 3:  # d = 2
                sc = post[p]
                w0 = (np.float32(wts[p, 0]) * alpha) * sc
                w1 = (np.float32(wts[p, 1]) * alpha) * sc
                w2 = (np.float32(wts[p, 2]) * alpha) * sc
                v0, v1, v2 = offs[p, 0], offs[p, 1], offs[p, 2]
                for k in range(cp):
                    x[k] = (w0 * lat[v0, k] + w1 * lat[v1, k]) + w2 * lat[v2, k]
            else:
                for k in range(cp):
                    x[k] = 0
                for r in range(nv):
                    w = (np.float32(wts[p, r]) * alpha) * post[p]
                    v = offs[p, r]
                    for k in range(cp):
                        x[k] += w * lat[v, k]
            nv = wts2.shape[1]
            if nv == 6:
                sc = post2[p]
                w0 = (np.float32(wts2[p, 0]) * alpha2) * sc
                w1 = (np.float32(wts2[p, 1]) * alpha2) * sc
                w2 = (np.float32(wts2[p, 2]) * alpha2) * sc
                w3 = (np.float32(wts2[p, 3]) * alpha2) * sc
                w4 = (np.float32(wts2[p, 4]) * alpha2) * sc
                w5 = (np.float32(wts2[p, 5]) * alpha2) * sc
                v0, v1, v2 = offs2[p, 0], offs2[p, 1], offs2[p, 2]
                v3, v4, v5 = offs2[p, 3], offs2[p, 4], offs2[p, 5]
                for k in range(cp):
                    a = (w0 * lat2[v0, k] + w1 * lat2[v1, k]) + w2 * lat2[v2, k]
                    a = (a + w3 * lat2[v3, k]) + w4 * lat2[v4, k]
                    y[k] = a + w5 * lat2[v5, k]
            elif nv == 3:
                sc = post2[p]
                w0 = (np.float32(wts2[p, 0]) * alpha2) * sc
                w1 = (np.float32(wts2[p, 1]) * alpha2) * sc
                w2 = (np.float32(wts2[p, 2]) * alpha2) * sc
                v0, v1, v2 = offs2[p, 0], offs2[p, 1], offs2[p, 2]
                for k in range(cp):
                    y[k] = (w0 * lat2[v0, k] + w1 * lat2[v1, k]) + w2 * lat2[v2, k]
            else:
                for k in range(cp):
                    y[k] = 0
                for r in range(nv):
                    w = (np.float32(wts2[p, r]) * alpha2) * post2[p]
                    v = offs2[p, r]
                    for k in range(cp):
                        y[k] += w * lat2[v, k]
            for k in range(c):
                x[k] = (x[k] - unary[p, k]) + y[k]
            for k in range(c, cp):
                x[k] = LOW
            for j in range(8):  # lanes beyond cp count as padding: the wide kernel's bits
                part[j] = x[j] if j < cp else LOW
            for k0 in range(8, cp, 8):
                for j in range(min(8, cp - k0)):
                    part[j] = part[j] if part[j] > x[k0 + j] else x[k0 + j]
            mx = part[0]
            for j in range(1, 8):
                mx = mx if mx > part[j] else part[j]
            for k in range(cp):
                blk[i, k] = x[k] - mx
        # exp over the whole block in one long loop (vectorises without remainders)
        m = nb * cp
        for k in range(m):
            e, n2 = _exp_parts(flat[k])
            flat[k] = e
            bits[k] = (n2 << 23) + _BIAS
        for k in range(m):
            flat[k] *= pow2[k]
        for i in range(nb):
            p = p0 + i
            for k in range(c, cp):
                blk[i, k] = 0
            for j in range(8):
                part[j] = blk[i, j] if j < cp else 0
            for k0 in range(8, cp, 8):
                for j in range(min(8, cp - k0)):
                    part[j] += blk[i, k0 + j]
            s = ((part[0] + part[1]) + (part[2] + part[3])) + (
                (part[4] + part[5]) + (part[6] + part[7]))  # fmt: skip
            inv = _ONE / s
            for k in range(cp):
                x[k] = blk[i, k] * inv
            if store:
                for k in range(cp):
                    q[p, k] = x[k]
            if qt.shape[0] > 0:
                for k in range(c):
                    blk[i, k] = x[k]
            for r in range(bary.shape[1]):
                w = bary[p, r]
                v = offs[p, r]
                for k in range(cp):
                    acc[v, k] += w * x[k]
            for r in range(bary2.shape[1]):
                w = bary2[p, r]
                v = offs2[p, r]
                for k in range(cp):
                    acc2[v, k] += w * x[k]
        if qt.shape[0] > 0:
            _write_block(qt, blk, p0, nb, c)
