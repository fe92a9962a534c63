"""CPU kernels of the permutohedral filter and the mean-field loop, compiled by numba.

The torch path (lattice.py, meanfield.py) runs one memory pass per tensor operation; these
kernels fuse what can be fused (slice + normalisation + compatibility + unary + softmax in one
pass over the pixels) and run in numba's thread pool on the threads the caller sets with
``set_threads``: the engine's setting (``deeplabv1.crf.set_num_threads``, numba's pool size by
default) for numpy_lattice / numpy_meanfield and the drop-in, ``torch.get_num_threads()`` for
the torch classes. They use the tables of numpy_lattice's build (equal to
``lattice_index.lattice_tables``' sort-based build), so the lattice is the same; only the
order of the float additions differs from the torch path (float tolerance, checked in
tests/test_crf_lattice.py, tests/test_crf_meanfield.py and tests/test_crf_numpy_engine.py).

numba is optional: without it (or with ``DEEPLABV1_CRF_NUMBA=0``) everything runs on the
torch path. Kernels are compiled once and cached on disk (``cache=True``); the first call in a
fresh environment pays the compilation (a few seconds), later processes only load the cache.
"""

from __future__ import annotations

import math
import os
import types

import numpy as np

__all__ = [
    "available", "blur", "blur_serial", "embed", "fused_step",
    "fused_step_serial", "hash_vertices", "lattice_csr", "neighbours", "reduce_first",
    "set_threads", "slice_", "slice_add", "splat_scatter",
]

_ENABLED = os.environ.get("DEEPLABV1_CRF_NUMBA", "1") not in ("0", "false", "no")

try:  # numba is an optional accelerator of the CPU path
    if not _ENABLED:
        raise ImportError
    import numba
    from llvmlite import ir
    from numba import njit, prange
    from numba import types as nbtypes
    from numba.core import cgutils
    from numba.extending import intrinsic

    # numba's OpenMP layer shares libgomp with torch and changes torch's thread count; its
    # own work queue does not (set NUMBA_THREADING_LAYER to override).
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

_CHUNKS = 64  # work items per parallel loop: enough for load balance on a few cores


def available() -> bool:
    """True when the numba kernels can run (numba importable and not disabled)."""
    return numba is not None


def set_threads(n: int) -> int:
    """Run the kernels on ``n`` threads (clamped to numba's pool size); returns the count."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


if numba is not None:
    _OPTS = {"parallel": True, "cache": True, "fastmath": False, "nogil": True}

    def _vec8(context, dtype):
        return ir.VectorType(context.get_data_type(dtype), 8)

    def _lanes8(context, builder, aryty, ary, off):
        """Pointer to the 8 elements at flat element ``off`` of a C-contiguous array."""
        data = context.make_array(aryty)(context, builder, ary).data
        return builder.bitcast(builder.gep(data, [off]), _vec8(context, aryty.dtype).as_pointer())

    def _splat8(context, builder, value, fromty, dtype):
        """An 8-lane vector of ``value`` cast to dtype."""
        vec = _vec8(context, dtype)
        v = context.cast(builder, value, fromty, dtype)
        zero = ir.Constant(ir.IntType(32), 0)
        v = builder.insert_element(ir.Constant(vec, ir.Undefined), v, zero)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
        return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), mask)

    def _convert8(context, builder, vec, fromty, toty):
        """An 8-lane float vector converted between float32 and float64."""
        if fromty == toty:
            return vec
        to = _vec8(context, toty)
        if toty.bitwidth > fromty.bitwidth:
            return builder.fpext(vec, to)
        return builder.fptrunc(vec, to)

    def _rows_ok(dst, src) -> bool:
        """Two C-contiguous float arrays (what the 8-lane row ops take; the float32 kernels
        also compile for float64 tables, converting rows)."""
        return (isinstance(dst, nbtypes.Array) and isinstance(src, nbtypes.Array)
                and dst.layout == "C" and src.layout == "C"
                and isinstance(dst.dtype, nbtypes.Float) and isinstance(src.dtype, nbtypes.Float))

    @intrinsic
    def _axpy8(typingctx, dst, doff, src, soff, w):  # pragma: no cover - compiled
        """dst.flat[doff:doff+8] = (dst... + w * src.flat[soff:soff+8]) as one 8-lane vector
        operation (float32 C arrays; the caller keeps the offsets in bounds). LLVM vectorises
        numba's label loops 64 wide (16 lanes x 4), so rows of 24 labels ran scalar; these
        rows are explicit vectors. Same per-lane mul then add (no fma): same bits."""
        if not (_rows_ok(dst, src) and isinstance(doff, nbtypes.Integer)
                and isinstance(soff, nbtypes.Integer)):  # fmt: skip
            return None

        def codegen(context, builder, sig, args):
            d, do, sv, so, wv = args
            do = context.cast(builder, do, sig.args[1], nbtypes.intp)
            so = context.cast(builder, so, sig.args[3], nbtypes.intp)
            dp = _lanes8(context, builder, sig.args[0], d, do)
            sp = _lanes8(context, builder, sig.args[2], sv, so)
            dt = sig.args[0].dtype
            wvec = _splat8(context, builder, wv, sig.args[4], dt)
            row = _convert8(context, builder, builder.load(sp, align=4), sig.args[2].dtype, dt)
            prod = builder.fmul(wvec, row)
            builder.store(builder.fadd(builder.load(dp, align=4), prod), dp, align=4)
            return context.get_dummy_value()

        return nbtypes.void(dst, doff, src, soff, w), codegen

    def _slice8_gen(nv: int):
        @intrinsic
        def slice8(typingctx, dst, doff, src, offs, wts, p, k0):  # pragma: no cover
            """dst.flat[doff:+8] = sum_r wts[p, r] * src[offs[p, r], k0:k0+8] over nv
            vertices, summed in registers in vertex order (8-lane vectors; the caller keeps
            the offsets in bounds)."""
            if not (_rows_ok(dst, src) and isinstance(offs, nbtypes.Array)
                    and isinstance(offs.dtype, nbtypes.Integer) and offs.ndim == 2
                    and isinstance(wts, nbtypes.Array) and wts.ndim == 2
                    and isinstance(wts.dtype, nbtypes.Float)):  # fmt: skip
                return None

            def codegen(context, builder, sig, args):
                d, do, sv, ov, wv, pv, kv = args
                ity = nbtypes.intp
                do = context.cast(builder, do, sig.args[1], ity)
                pv = context.cast(builder, pv, sig.args[5], ity)
                kv = context.cast(builder, kv, sig.args[6], ity)
                sarr = context.make_array(sig.args[2])(context, builder, sv)
                cp = cgutils.unpack_tuple(builder, sarr.shape)[1]
                oarr = context.make_array(sig.args[3])(context, builder, ov)
                warr = context.make_array(sig.args[4])(context, builder, wv)
                total = None
                for r in range(nv):
                    idx = [pv, context.get_constant(ity, r)]
                    o = cgutils.get_item_pointer(context, builder, sig.args[3], oarr, idx)
                    w = cgutils.get_item_pointer(context, builder, sig.args[4], warr, idx)
                    o = context.cast(builder, builder.load(o), sig.args[3].dtype, ity)
                    wvec = _splat8(context, builder, builder.load(w), sig.args[4].dtype,
                                   sig.args[2].dtype)  # fmt: skip
                    off = builder.add(builder.mul(o, cp), kv)
                    term = builder.fmul(wvec, builder.load(
                        _lanes8(context, builder, sig.args[2], sv, off), align=4))
                    total = term if total is None else builder.fadd(total, term)
                total = _convert8(context, builder, total, sig.args[2].dtype, sig.args[0].dtype)
                builder.store(total, _lanes8(context, builder, sig.args[0], d, do), align=4)
                return context.get_dummy_value()

            return nbtypes.void(dst, doff, src, offs, wts, p, k0), codegen

        return slice8

    _slice8_3 = _slice8_gen(3)
    _slice8_6 = _slice8_gen(6)

    @intrinsic
    def _blur8(typingctx, dst, doff, src, moff, aoff, boff):  # pragma: no cover - compiled
        """dst.flat[doff:+8] = src[moff:+8] + 0.5 * (src[aoff:+8] + src[boff:+8]) on 8 lanes
        (flat offsets of C arrays of one float dtype; blur's row update, same bits)."""
        if not (_rows_ok(dst, src) and dst.dtype == src.dtype):
            return None

        def codegen(context, builder, sig, args):
            d, do, sv, mo, ao, bo = args
            ity = nbtypes.intp
            rows = []
            for val, ty in ((mo, sig.args[3]), (ao, sig.args[4]), (bo, sig.args[5])):
                off = context.cast(builder, val, ty, ity)
                rows.append(builder.load(_lanes8(context, builder, sig.args[2], sv, off), align=4))
            dt = sig.args[0].dtype
            half = _splat8(context, builder, context.get_constant(dt, 0.5), dt, dt)
            out = builder.fadd(rows[0], builder.fmul(half, builder.fadd(rows[1], rows[2])))
            do = context.cast(builder, do, sig.args[1], ity)
            builder.store(out, _lanes8(context, builder, sig.args[0], d, do), align=4)
            return context.get_dummy_value()

        return nbtypes.void(dst, doff, src, moff, aoff, boff), codegen

    @njit(**_OPTS)
    def blur(src, dst, n1, n2):  # pragma: no cover - compiled
        """dst[m] = src[m] + (src[n1[m]] + src[n2[m]]) / 2; row M of src is the zero row."""
        rows = n1.shape[0]
        c = src.shape[1]
        half = src.dtype.type(0.5)
        if c % 8 == 0:  # 8-lane rows (see _axpy8)
            for m in prange(rows):
                a = n1[m] * c
                b = n2[m] * c
                for k0 in range(0, c, 8):
                    _blur8(dst, m * c + k0, src, m * c + k0, a + k0, b + k0)
        else:
            for m in prange(rows):
                a = n1[m]
                b = n2[m]
                for k in range(c):
                    dst[m, k] = src[m, k] + half * (src[a, k] + src[b, k])

    @njit(**_OPTS)
    def slice_add(base, offs, wts, lat, out):  # pragma: no cover - compiled
        """out[i] = base[i] + sum_r wts[i, r] * lat[offs[i, r]] (out may be base; lat may
        have more (padding) columns than out)."""
        n = offs.shape[0]
        c = out.shape[1]
        cp = lat.shape[1]
        nv = offs.shape[1]
        step = (n + _CHUNKS - 1) // _CHUNKS
        for chunk in prange(_CHUNKS):
            acc = np.empty(cp, dtype=out.dtype)
            for i in range(chunk * step, min(n, (chunk + 1) * step)):
                for k in range(cp):
                    acc[k] = 0
                for r in range(nv):
                    w = wts[i, r]
                    v = offs[i, r]
                    for k in range(cp):
                        acc[k] += w * lat[v, k]
                for k in range(c):
                    out[i, k] = base[i, k] + acc[k]

    @njit(**_OPTS)
    def slice_(offs, wts, lat, out):  # pragma: no cover - compiled
        """out[i] = sum_r wts[i, r] * lat[offs[i, r]]."""
        n = offs.shape[0]
        c = lat.shape[1]
        nv = offs.shape[1]
        step = (n + _CHUNKS - 1) // _CHUNKS
        for chunk in prange(_CHUNKS):
            acc = np.empty(c, dtype=out.dtype)
            for i in range(chunk * step, min(n, (chunk + 1) * step)):
                for k in range(c):
                    acc[k] = 0
                for r in range(nv):
                    w = wts[i, r]
                    v = offs[i, r]
                    for k in range(c):
                        acc[k] += w * lat[v, k]
                for k in range(c):
                    out[i, k] = acc[k]

    _F = np.float32
    _LOG2E = _F(1.4426950408889634)
    _LN2_HI = _F(0.693359375)
    _LN2_LO = _F(-2.1219444e-4)
    _MIN_X = _F(-87.0)
    _HALF = _F(0.5)
    _ONE = _F(1.0)
    _C = tuple(_F(1.0 / math.factorial(k)) for k in range(2, 8))

    _BIAS = np.int32(127 << 23)
    _LOW = _F(-1e30)  # logit of the padding labels

    @njit(inline="always")
    def _exp_parts(x):  # pragma: no cover - compiled
        """exp(x) = p * 2^n for float32 -87 <= x <= 0: Cody-Waite reduction and a degree-7
        Taylor polynomial on |r| <= ln2/2 (relative error below 1e-7). No libm call, so the
        label loops vectorise; 2^n is assembled from its exponent bits by the caller."""
        x = x if x > _MIN_X else _MIN_X  # a select, not max(): that one stays scalar
        n = np.floor(x * _LOG2E + _HALF)
        r = (x - n * _LN2_HI) - n * _LN2_LO
        p = _C[5]
        p = p * r + _C[4]
        p = p * r + _C[3]
        p = p * r + _C[2]
        p = p * r + _C[1]
        p = p * r + _C[0]
        p = p * r + _ONE
        p = p * r + _ONE
        return p, np.int32(n)

    # Pixels per softmax block: exp runs over the block as one long loop (measured at
    # 500x375, 21 labels: the fused pass 22 -> 19.5 ms on 1 thread).
    _BLOCK = 32

    @njit(**_OPTS)
    def fused_step(unary, q, offs, wts, lat, bary, acc, offs2, wts2, lat2, bary2, acc2, store,
                   qt):
        """One pass over the pixels p of unary energies (P, C):
        q[p] = softmax(-unary[p] + sum_r wts[p,r] lat[offs[p,r]] + the same for term 2),
        then scatter bary[p,r] q[p] into acc[t, offs[p,r]] (and acc2), t the worker's private
        buffer (zeroed first). q, lat and acc have Cp >= C columns (padding to a multiple of
        8 makes the label loops remainder-free; q's padding stays 0; any Cp >= 1 works, e.g.
        Cp = C for a few labels).
        The slices run over wts' columns, the splats over bary's: 0-column arrays skip a
        term's slice (the initial softmax) or splat (the last iteration); 0-column offs2,
        wts2, bary2 for a single term. q is written only when ``store`` is true (when further
        terms need Q). qt (B, C, n) float32, B n = P, unless it has no rows: receives Q
        label-major (qt[b, k, j] = Q of pixel b n + j), the caller's output, so that the last
        pass needs no pixel-major Q (measured: 17 MiB less at 500x375, 21 labels). Pixels go
        in blocks of _BLOCK: slices and max per pixel, exp over the whole block, then sum,
        normalisation and splat per pixel."""
        n, c = unary.shape
        cp = q.shape[1]
        nimg = qt.shape[2]
        wide = cp % 8 == 0  # label loops without a remainder (else: the lanes check bounds)
        nt = acc.shape[0]
        rows = acc.shape[1]
        rows2 = acc2.shape[1]
        step = (n + nt - 1) // nt
        for t in prange(nt):
            if bary.shape[1] > 0:
                acc[t, : acc.shape[1] - 1] = 0
            if bary2.shape[1] > 0:
                acc2[t, : acc2.shape[1] - 1] = 0
            x = np.zeros(cp, dtype=np.float32)
            y = np.zeros(cp, dtype=np.float32)
            blk = np.zeros((_BLOCK, cp), dtype=np.float32)
            flat = blk.reshape(_BLOCK * cp)
            bits = np.zeros(_BLOCK * cp, dtype=np.int32)
            pow2 = bits.view(np.float32)
            part = np.zeros(8, dtype=np.float32)
            hi = min(n, (t + 1) * step)
            for p0 in range(t * step, hi, _BLOCK):
                nb = min(_BLOCK, hi - p0)
                for i in range(nb):
                    p = p0 + i
                    if wide:  # 8-lane rows; the vertex order of the sums as ever
                        for k in range(cp):
                            x[k] = 0
                            y[k] = 0
                        if wts.shape[1] == 6:
                            for k0 in range(0, cp, 8):
                                _slice8_6(x, k0, lat, offs, wts, p, k0)
                        elif wts.shape[1] == 3:
                            for k0 in range(0, cp, 8):
                                _slice8_3(x, k0, lat, offs, wts, p, k0)
                        else:
                            for r in range(wts.shape[1]):
                                w = wts[p, r]
                                base = offs[p, r] * cp
                                for k0 in range(0, cp, 8):
                                    _axpy8(x, k0, lat, base + k0, w)
                        if wts2.shape[1] == 6:
                            for k0 in range(0, cp, 8):
                                _slice8_6(y, k0, lat2, offs2, wts2, p, k0)
                        elif wts2.shape[1] == 3:
                            for k0 in range(0, cp, 8):
                                _slice8_3(y, k0, lat2, offs2, wts2, p, k0)
                        else:
                            for r in range(wts2.shape[1]):
                                w = wts2[p, r]
                                base = offs2[p, r] * cp
                                for k0 in range(0, cp, 8):
                                    _axpy8(y, k0, lat2, base + k0, w)
                    else:
                        nv = wts.shape[1]
                        if nv == 6:  # d = 5: vertices written out, labels vectorise
                            w0, w1, w2 = wts[p, 0], wts[p, 1], wts[p, 2]
                            w3, w4, w5 = wts[p, 3], wts[p, 4], wts[p, 5]
                            v0, v1, v2 = offs[p, 0], offs[p, 1], offs[p, 2]
                            v3, v4, v5 = offs[p, 3], offs[p, 4], offs[p, 5]
                            for k in range(cp):
                                a = (w0 * lat[v0, k] + w1 * lat[v1, k]) + w2 * lat[v2, k]
                                a = (a + w3 * lat[v3, k]) + w4 * lat[v4, k]
                                x[k] = a + w5 * lat[v5, k]
                        elif nv == 3:  # d = 2
                            w0, w1, w2 = wts[p, 0], wts[p, 1], wts[p, 2]
                            v0, v1, v2 = offs[p, 0], offs[p, 1], offs[p, 2]
                            for k in range(cp):
                                x[k] = (w0 * lat[v0, k] + w1 * lat[v1, k]) + w2 * lat[v2, k]
                        else:
                            for k in range(cp):
                                x[k] = 0
                            for r in range(nv):
                                w = wts[p, r]
                                v = offs[p, r]
                                for k in range(cp):
                                    x[k] += w * lat[v, k]
                        nv = wts2.shape[1]
                        if nv == 6:  # d = 5: vertices written out, labels vectorise
                            w0, w1, w2 = wts2[p, 0], wts2[p, 1], wts2[p, 2]
                            w3, w4, w5 = wts2[p, 3], wts2[p, 4], wts2[p, 5]
                            v0, v1, v2 = offs2[p, 0], offs2[p, 1], offs2[p, 2]
                            v3, v4, v5 = offs2[p, 3], offs2[p, 4], offs2[p, 5]
                            for k in range(cp):
                                a = (w0 * lat2[v0, k] + w1 * lat2[v1, k]) + w2 * lat2[v2, k]
                                a = (a + w3 * lat2[v3, k]) + w4 * lat2[v4, k]
                                y[k] = a + w5 * lat2[v5, k]
                        elif nv == 3:  # d = 2
                            w0, w1, w2 = wts2[p, 0], wts2[p, 1], wts2[p, 2]
                            v0, v1, v2 = offs2[p, 0], offs2[p, 1], offs2[p, 2]
                            for k in range(cp):
                                y[k] = (w0 * lat2[v0, k] + w1 * lat2[v1, k]) + w2 * lat2[v2, k]
                        else:
                            for k in range(cp):
                                y[k] = 0
                            for r in range(nv):
                                w = wts2[p, r]
                                v = offs2[p, r]
                                for k in range(cp):
                                    y[k] += w * lat2[v, k]
                    for k in range(c):
                        x[k] = (x[k] - unary[p, k]) + y[k]
                    # Softmax. Max and sum over 8 interleaved partial results: a single
                    # running max/sum is a chain of dependent operations that no compiler may
                    # vectorise without fastmath.
                    for k in range(c, cp):
                        x[k] = _LOW
                    if wide:
                        for j in range(8):
                            part[j] = x[j]
                        for k0 in range(8, cp, 8):
                            for j in range(8):
                                part[j] = part[j] if part[j] > x[k0 + j] else x[k0 + j]
                    else:  # the same lanes, missing labels as padding: same bits
                        for j in range(8):
                            part[j] = x[j] if j < cp else _LOW
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
                    if wide:
                        for j in range(8):
                            part[j] = blk[i, j]
                        for k0 in range(8, cp, 8):
                            for j in range(8):
                                part[j] += blk[i, k0 + j]
                    else:
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
                    if wide:
                        for r in range(bary.shape[1]):
                            w = bary[p, r]
                            base = (t * rows + offs[p, r]) * cp
                            for k0 in range(0, cp, 8):
                                _axpy8(acc, base + k0, x, k0, w)
                        for r in range(bary2.shape[1]):
                            w = bary2[p, r]
                            base = (t * rows2 + offs2[p, r]) * cp
                            for k0 in range(0, cp, 8):
                                _axpy8(acc2, base + k0, x, k0, w)
                    else:
                        for r in range(bary.shape[1]):
                            w = bary[p, r]
                            v = offs[p, r]
                            for k in range(cp):
                                acc[t, v, k] += w * x[k]
                        for r in range(bary2.shape[1]):
                            w = bary2[p, r]
                            v = offs2[p, r]
                            for k in range(cp):
                                acc2[t, v, k] += w * x[k]
                if qt.shape[0] > 0:  # label-major rows of the block: runs of nb floats
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

    @njit(**_OPTS)
    def splat_scatter(offs, bary, values, acc):  # pragma: no cover - compiled
        """acc[t, offs[i,r]] += bary[i,r] values[i] over worker t's pixel range (zeroed first)."""
        n, c = values.shape
        nt = acc.shape[0]
        step = (n + nt - 1) // nt
        for t in prange(nt):
            acc[t, : acc.shape[1] - 1] = 0
            for i in range(t * step, min(n, (t + 1) * step)):
                for r in range(offs.shape[1]):
                    w = bary[i, r]
                    v = offs[i, r]
                    for k in range(c):
                        acc[t, v, k] += w * values[i, k]

    @njit(**_OPTS)
    def embed(features_t, scale, q0, rank, bary):  # pragma: no cover - compiled
        """lattice_build.embed for float32 features (d, P), point by point, with the same
        float32 operations in the same order (torch's ``sub(alpha=j)`` is a fused
        multiply-add: emulated exactly through float64, where the product is exact)."""
        d, n = features_t.shape
        d1 = _F(d + 1)
        inv = _F(1.0 / (d + 1))
        step = (n + _CHUNKS - 1) // _CHUNKS
        for chunk in prange(_CHUNKS):
            e = np.empty(d + 1, dtype=np.float32)
            resid = np.empty(d + 1, dtype=np.float32)
            s = np.empty(d + 1, dtype=np.float32)
            qi = np.empty(d + 1, dtype=np.int64)
            rk = np.empty(d + 1, dtype=np.int64)
            for p in range(chunk * step, min(n, (chunk + 1) * step)):
                sm = _F(0)
                for j in range(d, 0, -1):
                    cf = features_t[j - 1, p] * scale[j - 1]
                    e[j] = np.float32(np.float64(sm) - np.float64(j) * np.float64(cf))
                    sm = sm + cf
                e[0] = sm
                total = 0
                for i in range(d + 1):
                    v = e[i] * inv
                    up = np.ceil(v)
                    down = np.floor(v)
                    qf = up if up * d1 - e[i] < e[i] - down * d1 else down
                    resid[i] = e[i] - qf * d1
                    qi[i] = np.int64(qf)
                    rk[i] = 0
                    total += qi[i]
                for i in range(d):  # branch-free: the comparisons are unpredictable
                    for j in range(i + 1, d + 1):
                        lower = np.int64(resid[i] < resid[j])
                        rk[i] += lower
                        rk[j] += 1 - lower
                for i in range(d + 1):
                    r = rk[i] + total
                    if r < 0:
                        r += d + 1
                        qi[i] += 1
                    elif r > d:
                        r -= d + 1
                        qi[i] -= 1
                    rank[i, p] = r
                    q0[i, p] = qi[i]
                    s[d - r] = (e[i] - np.float32(qi[i]) * d1) * inv
                for k in range(1, d + 1):
                    bary[k, p] = s[k] - s[k - 1]
                bary[0, p] = (s[0] - s[d]) + _ONE

    @njit(**_OPTS)
    def reduce_first(acc):  # pragma: no cover - compiled
        """acc[0] += acc[1] + ... (the workers' private splat buffers)."""
        rows = acc.shape[1]
        for m in prange(rows):
            for t in range(1, acc.shape[0]):
                for k in range(acc.shape[2]):
                    acc[0, m, k] += acc[t, m, k]

    _SEQ = {"cache": True, "nogil": True}
    _EMPTY = -(1 << 62)  # no packed code is negative
    _MIX = np.int64(-7046029254386353131)  # odd 64-bit multiplier (0x9E3779B97F4A7C15)

    @njit(inline="always")
    def _slot(code, mask):  # pragma: no cover - compiled
        """Home slot of a code: the high bits of a multiplicative hash."""
        return (np.int64(code) * _MIX >> np.int64(20)) & mask

    @njit(**_SEQ)
    def _grow(keys, ids):  # pragma: no cover - compiled
        """The table at twice the capacity, entries rehashed."""
        cap = keys.shape[0] * 2
        mask = cap - 1
        nkeys = np.full(cap, _EMPTY, dtype=np.int64)
        nids = np.empty(cap, dtype=np.int32)
        for s in range(keys.shape[0]):
            code = keys[s]
            if code != _EMPTY:
                h = _slot(code, mask)
                while nkeys[h] != _EMPTY:
                    h = (h + 1) & mask
                nkeys[h] = code
                nids[h] = ids[s]
        return nkeys, nids

    @njit(**_SEQ)
    def hash_vertices(q0, rank, lo, strides, r_stride, b_stride, n, ids):  # pragma: no cover
        """Number the distinct vertex codes by first occurrence in pixel-major order.

        The code of vertex r of point p is lattice_build.vertex_codes' packing, computed here
        from q0 and rank (d+1, P) (image p // n). ids (P, d+1) receives the lattice point of
        each vertex; returns (unique codes in number order, the open-addressing table's keys
        and ids) for neighbour look-ups. Pixel-major first occurrence is the order of the
        sort-based build (lattice points renumbered by their first pixel), so the tables are
        identical.
        """
        nv, p = q0.shape
        d = nv - 1
        # Start small and grow: a table sized to the lattice points (often P/10) stays in
        # cache, one sized to the vertices does not (measured: 500x375, 1 thread, Gaussian
        # 9.5 -> 5.5 ms, bilateral 15.6 -> 14.4 ms).
        cap = 4096
        keys = np.full(cap, _EMPTY, dtype=np.int64)
        tids = np.empty(cap, dtype=np.int32)
        uniq = np.empty(nv * p, dtype=np.int64)
        stride_of_rank = np.zeros(nv, dtype=np.int64)
        m = 0
        mask = cap - 1
        for i in range(p):
            code = (i // n) * b_stride
            for c in range(d):
                code += (q0[c, i] - lo[c]) * strides[c]
                stride_of_rank[rank[c, i]] = strides[c]
            stride_of_rank[rank[d, i]] = 0
            for r in range(nv):
                if r > 0:  # vertex r: the coordinate of rank d-r+1 drops by one
                    code += r_stride - stride_of_rank[d - r + 1]
                h = _slot(code, mask)
                while True:
                    k = keys[h]
                    if k == code:
                        ids[i, r] = tids[h]
                        break
                    if k == _EMPTY:
                        keys[h] = code
                        tids[h] = m
                        ids[i, r] = m
                        uniq[m] = code
                        m += 1
                        if 2 * m > cap:
                            keys, tids = _grow(keys, tids)
                            cap = keys.shape[0]
                            mask = cap - 1
                        break
                    h = (h + 1) & mask
        return uniq[:m].copy(), keys, tids

    @njit(**_OPTS)
    def neighbours(uniq, keys, tids, r_stride, deltas, out):  # pragma: no cover - compiled
        """out (d+1, 2, M): blur neighbour 1 of each lattice point by look-up of its code
        (code + deltas[j, remainder]), neighbour 2 as its inverse map; M where missing."""
        nv = deltas.shape[0]
        m = uniq.shape[0]
        mask = keys.shape[0] - 1
        out[:] = m
        for x in prange(m):  # n1 and n2 are inverse bijections: no two writes collide
            code = uniq[x]
            rem = (code // r_stride) % nv
            for j in range(nv):
                want = code + deltas[j, rem]
                h = _slot(want, mask)
                while True:
                    k = keys[h]
                    if k == want:
                        y = tids[h]
                        out[j, 0, x] = y
                        out[j, 1, y] = x
                        break
                    if k == _EMPTY:
                        break
                    h = (h + 1) & mask

    @njit(**_SEQ)
    def lattice_csr(ids, bary, m, crow, col, val):  # pragma: no cover - compiled
        """Splat matrix (M, P) in CSR: the pixels of each lattice point in ascending order."""
        p, nv = ids.shape
        crow[:] = 0
        for i in range(p):
            for r in range(nv):
                crow[ids[i, r] + 1] += 1
        for x in range(m):
            crow[x + 1] += crow[x]
        fill = crow[:m].copy()
        for i in range(p):
            for r in range(nv):
                x = ids[i, r]
                k = fill[x]
                fill[x] = k + 1
                col[k] = i
                val[k] = bary[i, r]

    def _serial(kernel, name):
        """A single-threaded twin of a parallel kernel (prange runs as range). With numba's
        work queue, every parallel region costs about 0.08 ms to launch even on one thread
        (measured: 100-row blur 85 us parallel, 2.4 us serial), about 10 ms per 10-iteration
        inference; the twin has its own name, so its own disk cache entry."""
        f = kernel.py_func
        g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
        g.__qualname__ = name
        return njit(**_SEQ)(g)

    blur_serial = _serial(blur, "blur_serial")
    fused_step_serial = _serial(fused_step, "fused_step_serial")

else:  # pragma: no cover
    blur = embed = slice_ = slice_add = fused_step = splat_scatter = reduce_first = None
    blur_serial = fused_step_serial = None
    hash_vertices = neighbours = lattice_csr = None
