"""Whole-row vector operations of the fused mean-field pass's softmax, as LLVM IR.

A row is one pixel's or one lattice point's Cp floats (Cp a multiple of 8): the softmax's
per-pixel work: ``logits8`` (the logits and their maximum), ``shift8``, ``normalize8`` and
``copy8``. Each does the same per-lane operations in the same order as the scalar loops of
fused.py's ``fused_step``: the same bits.
"""

from __future__ import annotations

import numpy as np

from deeplabv1.crf.engine.jit import inline, numba

__all__ = ["copy8", "logits8", "normalize8", "shift8"]

if numba is not None:
    from llvmlite import ir
    from numba import types as nbtypes
    from numba.core import cgutils
    from numba.extending import intrinsic

    from deeplabv1.crf.engine.simd import _lanes8, _rows_ok, _splat8, _vec8

    def _flat_ptr(context, builder, aryty, ary, off, offty):
        """Pointer to the 8 elements at flat element ``off`` (a Python-typed integer)."""
        off = context.cast(builder, off, offty, nbtypes.intp)
        return _lanes8(context, builder, aryty, ary, off)

    def _rows(context, builder, aryty, ary):
        """The number of 8-lane vectors in a C-contiguous 1-D array."""
        n = cgutils.unpack_tuple(builder, context.make_array(aryty)(context, builder, ary).shape)[0]
        return builder.udiv(n, ir.Constant(n.type, 8))

    def _vec_at(builder, ptr, k):
        """The k-th 8-lane vector after ``ptr`` (a vector pointer)."""
        return builder.gep(ptr, [k])

    def _lanes(builder, v):
        return [builder.extract_element(v, ir.Constant(ir.IntType(32), j)) for j in range(8)]

    def _greater(builder, a, b):
        """a if a > b else b (an ordered compare and a select: the scalar code's bits)."""
        return builder.select(builder.fcmp_ordered(">", a, b), a, b)

    @intrinsic
    def logits8(typingctx, x, y, unary, uoff):  # pragma: no cover - compiled
        """x[:] = (x - unary.flat[uoff:+Cp]) + y over x's Cp lanes (a multiple of 8) and
        returns their maximum: a lane-wise running max over the vectors, then lanes 0..7 in
        order, with compare-and-select (the scalar kernel's order: the same bits)."""
        if not (_rows_ok(x, y) and _rows_ok(x, unary) and x.dtype == nbtypes.float32
                and y.dtype == unary.dtype == nbtypes.float32
                and isinstance(uoff, nbtypes.Integer)):  # fmt: skip
            return None

        def codegen(context, builder, sig, args):
            xa, ya, ua, uo = args
            n = _rows(context, builder, sig.args[0], xa)
            xp = _flat_ptr(context, builder, sig.args[0], xa, ir.Constant(n.type, 0), nbtypes.intp)
            yp = _flat_ptr(context, builder, sig.args[1], ya, ir.Constant(n.type, 0), nbtypes.intp)
            up = _flat_ptr(context, builder, sig.args[2], ua, uo, sig.args[3])
            part = cgutils.alloca_once(builder, _vec8(context, nbtypes.float32))
            with cgutils.for_range(builder, n) as loop:
                k = loop.index
                v = builder.fsub(builder.load(_vec_at(builder, xp, k), align=4),
                                 builder.load(_vec_at(builder, up, k), align=4))  # fmt: skip
                v = builder.fadd(v, builder.load(_vec_at(builder, yp, k), align=4))
                builder.store(v, _vec_at(builder, xp, k), align=4)
                first = builder.icmp_unsigned("==", k, ir.Constant(k.type, 0))
                larger = _greater(builder, builder.load(part), v)
                builder.store(builder.select(first, v, larger), part)
            lanes = _lanes(builder, builder.load(part))
            mx = lanes[0]
            for lane in lanes[1:]:
                mx = _greater(builder, mx, lane)
            return mx

        return nbtypes.float32(x, y, unary, uoff), codegen

    @intrinsic
    def shift8(typingctx, dst, doff, src, s):  # pragma: no cover - compiled
        """dst.flat[doff:+Cp] = src - s over src's Cp lanes (a multiple of 8), float32."""
        if not (_rows_ok(dst, src) and dst.dtype == src.dtype == nbtypes.float32
                and isinstance(doff, nbtypes.Integer)):  # fmt: skip
            return None

        def codegen(context, builder, sig, args):
            da, do, sa, sv = args
            n = _rows(context, builder, sig.args[2], sa)
            dp = _flat_ptr(context, builder, sig.args[0], da, do, sig.args[1])
            sp = _flat_ptr(context, builder, sig.args[2], sa, ir.Constant(n.type, 0), nbtypes.intp)
            sv = _splat8(context, builder, sv, sig.args[3], nbtypes.float32)
            with cgutils.for_range(builder, n) as loop:
                v = builder.load(_vec_at(builder, sp, loop.index), align=4)
                builder.store(builder.fsub(v, sv), _vec_at(builder, dp, loop.index), align=4)
            return context.get_dummy_value()

        return nbtypes.void(dst, doff, src, s), codegen

    @intrinsic
    def normalize8(typingctx, dst, src, soff, c):  # pragma: no cover - compiled
        """dst[:] = row / sum(row) for the row src.flat[soff:+Cp] (Cp = len(dst), a multiple
        of 8) whose lanes c.. are first set to 0 (in src too). The sum: lane-wise over the
        vectors, then ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)); dst = row * (1 / sum): the scalar
        kernel's order, the same bits."""
        if not (_rows_ok(dst, src) and dst.dtype == src.dtype == nbtypes.float32
                and isinstance(soff, nbtypes.Integer)
                and isinstance(c, nbtypes.Integer)):  # fmt: skip
            return None

        def codegen(context, builder, sig, args):
            da, sa, so, cv = args
            f32, i32 = ir.FloatType(), ir.IntType(32)
            n = _rows(context, builder, sig.args[0], da)
            dp = _flat_ptr(context, builder, sig.args[0], da, ir.Constant(n.type, 0), nbtypes.intp)
            sp = _flat_ptr(context, builder, sig.args[1], sa, so, sig.args[2])
            cv = builder.trunc(context.cast(builder, cv, sig.args[3], nbtypes.intp), i32)
            ivec = ir.VectorType(i32, 8)
            limit = builder.shuffle_vector(
                builder.insert_element(ir.Constant(ivec, ir.Undefined), cv, ir.Constant(i32, 0)),
                ir.Constant(ivec, ir.Undefined), ir.Constant(ivec, [0] * 8))  # fmt: skip
            lanes = ir.Constant(ivec, list(range(8)))
            zero = ir.Constant(ir.VectorType(f32, 8), [0.0] * 8)
            part = cgutils.alloca_once(builder, ir.VectorType(f32, 8))
            with cgutils.for_range(builder, n) as loop:
                k = loop.index
                base = builder.trunc(builder.mul(k, ir.Constant(k.type, 8)), i32)
                base = builder.shuffle_vector(
                    builder.insert_element(ir.Constant(ivec, ir.Undefined), base,
                                           ir.Constant(i32, 0)),
                    ir.Constant(ivec, ir.Undefined), ir.Constant(ivec, [0] * 8))  # fmt: skip
                keep = builder.icmp_signed("<", builder.add(base, lanes), limit)
                v = builder.select(keep, builder.load(_vec_at(builder, sp, k), align=4), zero)
                builder.store(v, _vec_at(builder, sp, k), align=4)
                first = builder.icmp_unsigned("==", k, ir.Constant(k.type, 0))
                builder.store(builder.select(first, v, builder.fadd(builder.load(part), v)), part)
            s = _lanes(builder, builder.load(part))
            low = builder.fadd(builder.fadd(s[0], s[1]), builder.fadd(s[2], s[3]))
            high = builder.fadd(builder.fadd(s[4], s[5]), builder.fadd(s[6], s[7]))
            total = builder.fadd(low, high)
            inv = builder.fdiv(ir.Constant(f32, 1.0), total)
            invv = _splat8(context, builder, inv, nbtypes.float32, nbtypes.float32)
            with cgutils.for_range(builder, n) as loop:
                v = builder.load(_vec_at(builder, sp, loop.index), align=4)
                builder.store(builder.fmul(v, invv), _vec_at(builder, dp, loop.index), align=4)
            return context.get_dummy_value()

        return nbtypes.void(dst, src, soff, c), codegen

    _ZERO = np.float32(0.0)

    @inline
    def copy8(dst, doff, src):  # pragma: no cover - compiled
        """dst.flat[doff:+Cp] = src over src's Cp lanes (a multiple of 8): ``shift8`` by 0
        (x - 0 is x, bit for bit, -0 and NaN included)."""
        shift8(dst, doff, src, _ZERO)


else:  # pragma: no cover - the kernels are never called without numba
    copy8 = logits8 = normalize8 = shift8 = None
