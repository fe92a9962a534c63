"""8-lane vector operations for the engine's kernels, written as LLVM IR (numba intrinsics).

LLVM vectorises numba's label loops 64 floats wide (16 lanes x 4), so rows of 24 labels (21
padded to a multiple of 8) ran scalar; these operations load, combine and store one row of 8
labels as a single vector (splat and blur rows; whole rows: simd_rows.py and
simd_vertices.py). Each is the same per-lane arithmetic in the same order as the scalar loop
it replaces (a multiply, then an add: no fused multiply-add), so the bits do not change. The
prefetch hints ask for a row that a later pixel will read or write.
"""

from __future__ import annotations

import math

import numpy as np

from deeplabv1.crf.engine.jit import numba

__all__ = [
    "EXP",
    "LOW",
    "axpy8",
    "blur8",
    "prefetch_read",
    "prefetch_stream",
    "prefetch_write",
]

# The softmax's exp (fused.py's kernels): exp(x) = p(r) 2^n for
# float32 -87 <= x <= 0, Cody-Waite reduction r = x - n ln2 with n = floor(x log2(e) + 1/2),
# and a degree-7 Taylor polynomial on |r| <= ln2/2 (relative error below 1e-7).
EXP = {
    "min_x": np.float32(-87.0),
    "log2e": np.float32(1.4426950408889634),
    "half": np.float32(0.5),
    "ln2_hi": np.float32(0.693359375),
    "ln2_lo": np.float32(-2.1219444e-4),
    "coef": tuple(np.float32(1.0 / math.factorial(k)) for k in range(7, 1, -1)),  # 1/7!..1/2!
    "bias": np.int32(127 << 23),
}
LOW = np.float32(-np.inf)  # logit of the padding labels (below every real label's)

if numba is not None:
    from llvmlite import ir
    from numba import types as nbtypes
    from numba.core import cgutils
    from numba.extending import intrinsic

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
        return (
            isinstance(dst, nbtypes.Array)
            and isinstance(src, nbtypes.Array)
            and dst.layout == "C"
            and src.layout == "C"
            and isinstance(dst.dtype, nbtypes.Float)
            and isinstance(src.dtype, nbtypes.Float)
        )

    @intrinsic
    def axpy8(typingctx, dst, doff, src, soff, w):  # pragma: no cover - compiled
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

    @intrinsic
    def blur8(typingctx, dst, doff, src, moff, aoff, boff):  # pragma: no cover - compiled
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

    def _prefetch_gen(write: int, locality: int = 3):
        @intrinsic
        def prefetch(typingctx, arr, off):  # pragma: no cover - compiled
            """A hint to bring the cache line of flat element ``off`` of a C-contiguous array
            in (``write``: for writing); no effect on results."""
            if not (isinstance(arr, nbtypes.Array) and isinstance(off, nbtypes.Integer)):
                return None

            def codegen(context, builder, sig, args):
                ary, o = args
                o = context.cast(builder, o, sig.args[1], nbtypes.intp)
                data = context.make_array(sig.args[0])(context, builder, ary).data
                i8p = ir.IntType(8).as_pointer()
                ptr = builder.bitcast(builder.gep(data, [o]), i8p)
                i32 = ir.IntType(32)
                fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
                fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
                flags = [ir.Constant(i32, write), ir.Constant(i32, locality), ir.Constant(i32, 1)]
                builder.call(fn, [ptr, *flags])
                return context.get_dummy_value()

            return nbtypes.void(arr, off), codegen

        return prefetch

    prefetch_read = _prefetch_gen(0)
    prefetch_write = _prefetch_gen(1)
    # non-temporal: data read once (the pixel streams of a pass), which should not push the
    # lattices out of the caches (x86: prefetchnta)
    prefetch_stream = _prefetch_gen(0, 0)

else:  # pragma: no cover - the kernels are never called without numba
    axpy8 = blur8 = prefetch_read = prefetch_write = prefetch_stream = None
