"""numba kernels that build the permutohedral lattice: embedding, vertex hashing, neighbours.

``embed`` places every point in its simplex with the float32 arithmetic of pydensecrf's x86
(SSE) code, operation for operation, so that both build the same lattice (see ``embed``);
``hash_vertices`` numbers the distinct vertices in order of first occurrence (pixel-major),
as pydensecrf's hash table does; ``neighbours`` finds the blur neighbours. ``embed`` and
``neighbours`` work on a range of points and run on several threads (threads.run).
"""

from __future__ import annotations

import numpy as np

from deeplabv1.crf.engine.jit import inline, kernel

__all__ = [
    "embed",
    "hash_vertex_rows",
    "hash_vertices",
    "lattice_csr",
    "neighbour_rows",
    "neighbours",
]

_F = np.float32
_ONE = _F(1.0)
_EMPTY = -(1 << 62)  # no packed code is negative
_MIX = np.int64(-7046029254386353131)  # odd 64-bit multiplier (0x9E3779B97F4A7C15)
_EMBED_CHUNK = 64  # points per step of embed


@kernel
def embed(features_t, scale, q0, rank, bary, bad, lo, hi):  # pragma: no cover - compiled
    """The enclosing simplex of float32 features (d, P), points lo..hi: q0 (d+1, P) int64 with
    rem0 = (d+1) q0, rank (d+1, P) int64 and the barycentric weights bary (d+1, P) float32.
    bad[0] = 1 and a return after the first chunk with a point whose float32 arithmetic gives
    no simplex (features so large that the rounding errors exceed a lattice step: the
    remainder leaves 0..d, and pydensecrf writes out of bounds there; the caller discards
    the tables).

    pydensecrf's SSE arithmetic in float32, operation for operation (any other rounding
    moves points whose residuals nearly tie into another simplex: the filter then differs
    by up to a few per cent there, most often with standard deviations of a pixel or less):
    the elevation ``sm - (j * cf)`` with the product rounded first, the nearest remainder-0
    point by rounding e * float32(1/(d+1)) half to even, and bary[0] = s[0] + (1 - s[d]).
    ``scale`` holds its float32 scale factors (lattice.scale_factors). Points go in chunks
    of _EMBED_CHUNK, each step a loop over the chunk's points (LLVM vectorises them:
    measured 10.9 -> 7.0 ms for 500x375 points in 5-D); the rank-sorted scatter into the
    barycentric weights stays per point.
    """
    d = features_t.shape[0]
    nv = d + 1
    d1 = _F(nv)
    inv = _ONE / d1
    e = np.empty((nv, _EMBED_CHUNK), dtype=np.float32)
    resid = np.empty((nv, _EMBED_CHUNK), dtype=np.float32)
    qi = np.empty((nv, _EMBED_CHUNK), dtype=np.int64)
    rk = np.empty((nv, _EMBED_CHUNK), dtype=np.int64)
    sm = np.empty(_EMBED_CHUNK, dtype=np.float32)
    total = np.empty(_EMBED_CHUNK, dtype=np.int64)
    s = np.empty(nv, dtype=np.float32)
    for c0 in range(lo, hi, _EMBED_CHUNK):
        n = min(_EMBED_CHUNK, hi - c0)
        for t in range(n):
            sm[t] = 0
            total[t] = 0
        for j in range(d, 0, -1):
            sc = scale[j - 1]
            fj = _F(j)
            for t in range(n):
                cf = features_t[j - 1, c0 + t] * sc
                e[j, t] = sm[t] - fj * cf
                sm[t] = sm[t] + cf
        for t in range(n):
            e[0, t] = sm[t]
        for i in range(nv):
            for t in range(n):
                qf = np.rint(e[i, t] * inv)
                resid[i, t] = e[i, t] - qf * d1
                qi[i, t] = np.int64(qf)
                rk[i, t] = 0
        for i in range(nv):
            for t in range(n):
                total[t] += qi[i, t]
        for i in range(d):
            for j in range(i + 1, nv):
                for t in range(n):
                    lower = np.int64(resid[i, t] < resid[j, t])
                    rk[i, t] += lower
                    rk[j, t] += 1 - lower
        wrong = 0
        for i in range(nv):
            for t in range(n):
                r = rk[i, t] + total[t]
                q = qi[i, t]
                up = np.int64(r < 0)
                down = np.int64(r > d)
                r = r + (up - down) * nv
                q = q + up - down
                wrong |= np.int64(r < 0) | np.int64(r > d)
                rk[i, t] = r
                qi[i, t] = q
                rank[i, c0 + t] = r
                q0[i, c0 + t] = q
        if wrong:
            bad[0] = 1
            return
        for t in range(n):
            p = c0 + t
            for i in range(nv):
                r = rk[i, t]
                s[d - r] = (e[i, t] - np.float32(qi[i, t]) * d1) * inv
            for k in range(1, nv):
                bary[k, p] = s[k] - s[k - 1]
            bary[0, p] = s[0] + (_ONE - s[d])


@inline
def _slot(code, mask):  # pragma: no cover - compiled
    """Home slot of a code: the high bits of a multiplicative hash."""
    return (np.int64(code) * _MIX >> np.int64(20)) & mask


@kernel
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


@kernel
def hash_vertices(q0, rank, lo, strides, r_stride, b_stride, n, ids):  # pragma: no cover
    """Number the distinct vertex codes by first occurrence in pixel-major order.

    The code of vertex r of point p packs (image p // n, r, q_0..q_{d-1}) as a mixed-radix
    number (lattice.Radix) from q0 and rank (d+1, P). ids (P, d+1) receives the lattice point
    of each vertex; returns (unique codes in number order, the open-addressing table's keys
    and ids) for the neighbour look-ups. First occurrence in pixel-major order is the
    numbering of pydensecrf's hash table and of the torch side's sort-based build
    (renumbered by first pixel), so the tables are identical.
    """
    nv, p = q0.shape
    d = nv - 1
    # Start small and grow: a table sized to the lattice points (often P/10) stays in cache,
    # one sized to the vertices does not (measured: 500x375, 1 thread, Gaussian 9.5 -> 5.5
    # ms, bilateral 15.6 -> 14.4 ms).
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


@kernel
def neighbours(uniq, keys, tids, r_stride, deltas, out, lo, hi):  # pragma: no cover - compiled
    """Blur neighbours of lattice points lo..hi into out (d+1, 2, M) (filled with M, the
    missing marker, by the caller): neighbour 1 by look-up of code + deltas[j, remainder],
    neighbour 2 as its inverse map (n1 and n2 are inverse bijections: no two writes collide,
    also across threads)."""
    nv = deltas.shape[0]
    mask = keys.shape[0] - 1
    for x in range(lo, hi):
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


@kernel
def lattice_csr(ids, bary, m, crow, col, val):  # pragma: no cover - compiled
    """Splat matrix (M, P) in CSR: the pixels of each lattice point in ascending order (for
    the torch side's sparse-matrix filter)."""
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


@inline
def _row_slot(key, mask):  # pragma: no cover - compiled
    """Home slot of a key row (batch, r, q_0..q_{d-1})."""
    h = np.int64(0)
    for k in range(key.shape[0]):
        h = (h ^ key[k]) * _MIX
    return (h >> np.int64(20)) & mask


@kernel
def _grow_rows(keys, m, cap):  # pragma: no cover - compiled
    """A slot table of capacity cap for the key rows keys[:m] (slot -> row id, -1 empty)."""
    mask = cap - 1
    table = np.full(cap, -1, dtype=np.int32)
    for t in range(m):
        h = _row_slot(keys[t], mask)
        while table[h] >= 0:
            h = (h + 1) & mask
        table[h] = t
    return table


@inline
def _find_row(keys, table, key, mask):  # pragma: no cover - compiled
    """The slot of key in table: its row's, or the empty slot where it belongs."""
    h = _row_slot(key, mask)
    while True:
        t = table[h]
        if t < 0:
            return h
        same = True
        for k in range(key.shape[0]):
            if keys[t, k] != key[k]:
                same = False
                break
        if same:
            return h
        h = (h + 1) & mask


@kernel
def hash_vertex_rows(q0, rank, n, ids):  # pragma: no cover - compiled
    """``hash_vertices`` on explicit key rows (batch, r, q_0..q_{d-1}) instead of packed codes:
    for feature ranges whose packed codes would not fit in 62 bits. The same numbering (first
    occurrence, pixel-major). Returns (the key rows by lattice point, the slot table)."""
    nv, p = q0.shape
    d = nv - 1
    cap = 4096
    table = np.full(cap, -1, dtype=np.int32)
    keys = np.empty((nv * p, d + 2), dtype=np.int64)
    key = np.empty(d + 2, dtype=np.int64)
    m = 0
    mask = cap - 1
    for i in range(p):
        key[0] = i // n
        for r in range(nv):
            key[1] = r
            for c in range(d):  # vertex r: coordinates of rank > d - r drop by one
                key[2 + c] = q0[c, i] - (1 if rank[c, i] > d - r else 0)
            h = _find_row(keys, table, key, mask)
            if table[h] >= 0:
                ids[i, r] = table[h]
                continue
            keys[m] = key
            table[h] = m
            ids[i, r] = m
            m += 1
            if 2 * m > cap:
                cap *= 2
                mask = cap - 1
                table = _grow_rows(keys, m, cap)
    return keys[:m].copy(), table


@kernel
def neighbour_rows(keys, table, out, lo, hi):  # pragma: no cover - compiled
    """``neighbours`` for the key rows of ``hash_vertex_rows``: neighbour 1 along axis j of
    (r, q) is (r - 1 mod d+1, q - [r == 0] + e_j), found by look-up; neighbour 2 is its
    inverse map."""
    nv = keys.shape[1] - 1
    d = nv - 1
    mask = table.shape[0] - 1
    want = np.empty(keys.shape[1], dtype=np.int64)
    for x in range(lo, hi):
        r = keys[x, 1]
        for j in range(nv):
            want[0] = keys[x, 0]
            want[1] = (r - 1) % nv
            for c in range(d):
                want[2 + c] = keys[x, 2 + c] - (1 if r == 0 else 0) + (1 if c == j else 0)
            h = _find_row(keys, table, want, mask)
            y = table[h]
            if y >= 0:
                out[j, 0, x] = y
                out[j, 1, y] = x
