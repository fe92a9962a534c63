"""A pixel's slice from and splat into its lattice rows, whole rows at a time, as LLVM IR.

``slice_row3`` / ``slice_row6`` sum a pixel's d+1 = 3 or 6 weighted lattice rows (the 2-D
and the 5-D lattice of pydensecrf's two terms); ``splat_row3`` / ``splat_row6`` add its
weighted row of marginals into its lattice rows. Rows of up to 4 vectors of 8 lanes (32
labels: 21 padded to 24 for PASCAL VOC) go through registers in one sweep over the vertices:
each vertex's id and weight are loaded once, and the sums never leave registers (8 lanes at
a time reloaded them for every 8 lanes: measured 16.0 -> 14.7 ms a fused pass at 500x375,
21 labels, one thread). Wider rows go 8 lanes at a time. The arithmetic is that of the
scalar loops (and simd.py's ``axpy8``): per lane a multiply, then an add, in vertex order:
the same bits.
"""

from __future__ import annotations

from deeplabv1.crf.engine.jit import numba

__all__ = ["slice_row3", "slice_row6", "splat_row3", "splat_row6"]

# Rows of up to this many 8-lane vectors are kept in registers
_REGISTER_VECTORS = 4

if numba is not None:
    from llvmlite import ir
    from numba import types as nbtypes
    from numba.core import cgutils
    from numba.extending import intrinsic

    from deeplabv1.crf.engine.simd import _convert8, _splat8, _vec8

    def _data(context, builder, aryty, ary):
        return context.make_array(aryty)(context, builder, ary).data

    def _vertex(context, builder, sig, offs, wts, p, r, dtype):
        """(row id as intp, weight as an 8-lane vector of dtype) of vertex r of pixel p."""
        ity = nbtypes.intp
        oty, wty = sig.args[offs[0]], sig.args[wts[0]]
        idx = [p, context.get_constant(ity, r)]
        oarr = context.make_array(oty)(context, builder, offs[1])
        warr = context.make_array(wty)(context, builder, wts[1])
        o = builder.load(cgutils.get_item_pointer(context, builder, oty, oarr, idx))
        w = builder.load(cgutils.get_item_pointer(context, builder, wty, warr, idx))
        return context.cast(builder, o, oty.dtype, ity), _splat8(context, builder, w, wty.dtype,
                                                                    dtype)  # fmt: skip

    def _by_width(builder, nvec, emit) -> None:
        """emit(first, count) for rows of ``count`` vectors (1.._REGISTER_VECTORS, one
        branch each, first 0), and for wider rows emit(k, 1) for every vector k."""
        end = builder.append_basic_block("rows.end")
        wide = builder.append_basic_block("rows.wide")
        switch = builder.switch(nvec, wide)
        for count in range(1, _REGISTER_VECTORS + 1):
            block = builder.append_basic_block(f"rows.{count}")
            switch.add_case(ir.Constant(nvec.type, count), block)
            builder.position_at_end(block)
            emit(ir.Constant(nvec.type, 0), count)
            builder.branch(end)
        builder.position_at_end(wide)
        with cgutils.for_range(builder, nvec) as loop:
            emit(loop.index, 1)
        builder.branch(end)
        builder.position_at_end(end)

    def _ok(rows, offs, wts, p) -> bool:
        return (
            isinstance(rows, nbtypes.Array) and rows.layout == "C" and rows.ndim == 2
            and isinstance(rows.dtype, nbtypes.Float)
            and isinstance(offs, nbtypes.Array) and isinstance(offs.dtype, nbtypes.Integer)
            and offs.ndim == 2 and isinstance(wts, nbtypes.Array)
            and isinstance(wts.dtype, nbtypes.Float) and wts.ndim == 2
            and isinstance(p, nbtypes.Integer)
        )  # fmt: skip

    def _row_vectors(context, builder, aryty, ary):
        """(pointer to the array's first 8-lane vector, vectors per row) of a C (N, Cp) array."""
        arr = context.make_array(aryty)(context, builder, ary)
        cp = cgutils.unpack_tuple(builder, arr.shape)[1]
        vec = _vec8(context, aryty.dtype).as_pointer()
        return builder.bitcast(arr.data, vec), builder.udiv(cp, ir.Constant(cp.type, 8))

    def _slice_row_gen(nv: int):
        @intrinsic
        def slice_row(typingctx, dst, lat, offs, wts, post, alpha, p):  # pragma: no cover
            """dst[:] = sum over r < nv, in order, of w_r * lat[offs[p, r]] with the slice
            weight w_r = (float32(wts[p, r]) * alpha) * post[p] rounded as float32 (what
            lattice.slice_weights stores): dst (Cp,) float C, lat (M+1, Cp) C, Cp a multiple
            of 8, post float32, alpha a float32; the caller keeps ids in bounds."""
            if not (_ok(lat, offs, wts, p) and isinstance(dst, nbtypes.Array)
                    and dst.layout == "C" and isinstance(dst.dtype, nbtypes.Float)
                    and isinstance(post, nbtypes.Array) and post.dtype == nbtypes.float32
                    and alpha == nbtypes.float32):  # fmt: skip
                return None

            def codegen(context, builder, sig, args):
                da, la, oa, wa, pa, av, pv = args
                ity = nbtypes.intp
                pv = context.cast(builder, pv, sig.args[6], ity)
                rows, nvec = _row_vectors(context, builder, sig.args[1], la)
                out = builder.bitcast(_data(context, builder, sig.args[0], da),
                                      _vec8(context, sig.args[0].dtype).as_pointer())  # fmt: skip
                dt = sig.args[1].dtype
                parr = context.make_array(sig.args[4])(context, builder, pa)
                scale = builder.load(cgutils.get_item_pointer(context, builder, sig.args[4],
                                                              parr, [pv]))  # fmt: skip
                oty, wty = sig.args[2], sig.args[3]
                oarr = context.make_array(oty)(context, builder, oa)
                warr = context.make_array(wty)(context, builder, wa)

                def emit(first, count):
                    sums = [None] * count
                    for r in range(nv):
                        idx = [pv, context.get_constant(ity, r)]
                        o = builder.load(cgutils.get_item_pointer(context, builder, oty, oarr,
                                                                  idx))  # fmt: skip
                        o = context.cast(builder, o, oty.dtype, ity)
                        w = builder.load(cgutils.get_item_pointer(context, builder, wty, warr,
                                                                  idx))  # fmt: skip
                        w = context.cast(builder, w, wty.dtype, nbtypes.float32)
                        w = builder.fmul(builder.fmul(w, av), scale)
                        w = _splat8(context, builder, w, nbtypes.float32, dt)
                        base = builder.add(builder.mul(o, nvec), first)
                        for i in range(count):
                            at = builder.add(base, ir.Constant(base.type, i))
                            term = builder.fmul(w, builder.load(builder.gep(rows, [at]), align=4))
                            sums[i] = term if r == 0 else builder.fadd(sums[i], term)
                    for i in range(count):
                        total = _convert8(context, builder, sums[i], dt, sig.args[0].dtype)
                        at = builder.add(first, ir.Constant(first.type, i))
                        builder.store(total, builder.gep(out, [at]), align=4)

                _by_width(builder, nvec, emit)
                return context.get_dummy_value()

            return nbtypes.void(dst, lat, offs, wts, post, alpha, p), codegen

        return slice_row

    def _splat_row_gen(nv: int):
        @intrinsic
        def splat_row(typingctx, acc, offs, bary, p, x):  # pragma: no cover - compiled
            """acc[offs[p, r]] += bary[p, r] * x for r < nv in order: acc (M+1, Cp) float C,
            x (Cp,) float C, Cp a multiple of 8; the caller keeps ids in bounds."""
            if not (_ok(acc, offs, bary, p) and isinstance(x, nbtypes.Array)
                    and x.layout == "C" and isinstance(x.dtype, nbtypes.Float)):  # fmt: skip
                return None

            def codegen(context, builder, sig, args):
                aa, oa, ba, pv, xa = args
                pv = context.cast(builder, pv, sig.args[3], nbtypes.intp)
                rows, nvec = _row_vectors(context, builder, sig.args[0], aa)
                xs = builder.bitcast(_data(context, builder, sig.args[4], xa),
                                     _vec8(context, sig.args[4].dtype).as_pointer())  # fmt: skip
                dt = sig.args[0].dtype

                def emit(first, count):
                    vals = []
                    for i in range(count):
                        at = builder.add(first, ir.Constant(first.type, i))
                        v = builder.load(builder.gep(xs, [at]), align=4)
                        vals.append(_convert8(context, builder, v, sig.args[4].dtype, dt))
                    for r in range(nv):
                        o, w = _vertex(context, builder, sig, (1, oa), (2, ba), pv, r, dt)
                        base = builder.add(builder.mul(o, nvec), first)
                        for i in range(count):
                            ptr = builder.gep(rows, [builder.add(base, ir.Constant(base.type, i))])
                            new = builder.fadd(builder.load(ptr, align=4), builder.fmul(w, vals[i]))
                            builder.store(new, ptr, align=4)

                _by_width(builder, nvec, emit)
                return context.get_dummy_value()

            return nbtypes.void(acc, offs, bary, p, x), codegen

        return splat_row

    slice_row3, slice_row6 = _slice_row_gen(3), _slice_row_gen(6)
    splat_row3, splat_row6 = _splat_row_gen(3), _splat_row_gen(6)

else:  # pragma: no cover - the kernels are never called without numba
    slice_row3 = slice_row6 = splat_row3 = splat_row6 = None
