"""The fused mean-field kernel (crf/engine/fused.py) against a float64 numpy reference, on
random lattice tables (any vertex count: the written-out 3- and 6-vertex slices and the
generic loop), any padded label width (a multiple of 8 or the label count itself), the
pixels in one range or split between two threads."""

from __future__ import annotations

import numpy as np
import pytest

from deeplabv1.crf.engine import fused, jit
from deeplabv1.crf.engine import threads as engine_threads
from deeplabv1.crf.engine.meanfield import PAD

_NO_OUT = np.zeros((0, 1, 1), np.float32)  # fused_step's qt: no label-major output
# a term's (post, alpha) that leave its slice weights as given: (wts * 1) * 1
_UNIT = (np.ones(100_000, np.float32), np.float32(1.0))

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba not installed")


def _term(rng, p: int, m: int, nv: int):
    """Random tables of one term: offs (P, nv) distinct vertex ids per point, slice and
    splat weights."""
    offs = np.stack([rng.choice(m, nv, replace=False) for _ in range(p)]).astype(np.int32)
    offs = offs.reshape(p, nv)
    wts = rng.uniform(0.0, 2.0, (p, nv)).astype(np.float32)
    bary = rng.uniform(0.0, 1.0, (p, nv)).astype(np.float32)
    return offs, wts, bary


def _reference(unary, terms, lats, cp):
    """Q (P, cp) = softmax(-U + sum of slices), padding 0; splat sums (M+1, cp) per term."""
    p, c = unary.shape
    logits = -unary.astype(np.float64)
    for (offs, wts, _), lat in zip(terms, lats):
        logits += np.einsum("pr,prk->pk", wts, lat[offs][:, :, :c].astype(np.float64))
    e = np.exp(logits - logits.max(1, keepdims=True))
    q = np.zeros((p, cp))
    q[:, :c] = e / e.sum(1, keepdims=True)
    splats = []
    for (offs, _, bary), lat in zip(terms, lats):
        acc = np.zeros((lat.shape[0], cp))
        np.add.at(acc, offs.reshape(-1), (bary[:, :, None] * q[:, None, :]).reshape(-1, cp))
        splats.append(acc)
    return q, splats


def _run(unary, terms, lats, cp, threads, *, slices=True, splat=True, store=True, kernel=None):
    """fused_step on the tables; returns q and the per-term splat sums over the workers."""
    p, _ = unary.shape
    q = np.zeros((p, cp), np.float32)
    args = []
    accs = []
    for (offs, wts, bary), lat in zip(terms, lats):
        acc = np.full((threads, lat.shape[0], cp), 7.0, np.float32)  # zeroed by the splat
        acc[:, -1] = 0
        accs.append(acc)
        args.append((offs, wts, bary, acc))
    call = []
    for (offs, wts, bary, acc), lat in zip(args, lats):
        call += [offs, wts if slices else wts[:, :0], *_UNIT, lat, bary if splat else bary[:, :0],
                 acc]
    _fused(unary, q, call, store, _NO_OUT, threads, kernel)
    return q, [a.sum(0) for a in accs]


def _fused(unary, q, call, store, qt, nt: int, kernel=None) -> None:
    """The fused kernel (the engine's choice: the wide one for a multiple of 8 columns) over
    the pixels split into nt ranges, range t with the buffers acc[t]."""
    if kernel is None:
        kernel = fused.fused_step_wide if q.shape[1] % 8 == 0 else fused.fused_step
    c, cp = unary.shape[1], q.shape[1]
    padded = np.full((unary.shape[0], cp), PAD, np.float32)  # the engine's layout
    padded[:, :c] = unary
    jobs = []
    for t, (lo, hi) in enumerate(engine_threads.ranges(unary.shape[0], nt)):
        args = [a[t] if k % 7 == 6 else a for k, a in enumerate(call)]
        jobs.append((padded, q, *args, store, qt, c, lo, hi))
    engine_threads.run(kernel, jobs)


def _case(seed: int, p: int, c: int, cp: int, nvs, m: int = 40):
    rng = np.random.default_rng(seed)
    unary = rng.normal(0.0, 2.0, (p, c)).astype(np.float32)
    terms = [_term(rng, p, m, nv) for nv in nvs]
    lats = []
    for _ in nvs:
        lat = np.zeros((m + 1, cp), np.float32)
        lat[:m, :c] = rng.uniform(0.0, 3.0, (m, c))
        lats.append(lat)
    return unary, terms, lats


@pytest.mark.parametrize("nvs", [(6, 3), (3, 6), (2, 4), (6, 6), (3, 0)])
@pytest.mark.parametrize(("c", "cp"), [(21, 24), (2, 2), (2, 8), (5, 5), (1, 8), (9, 16), (37, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_matches_reference(nvs, c, cp, threads) -> None:
    unary, terms, lats = _case(nvs[0] * 7 + c + cp, 300, c, cp, nvs)
    q, splats = _run(unary, terms, lats, cp, threads)
    ref_q, ref_splats = _reference(unary, terms, lats, cp)
    np.testing.assert_allclose(q, ref_q, rtol=0, atol=2e-6)
    assert np.all(q[:, c:] == 0)
    for got, want, nv in zip(splats, ref_splats, nvs):
        if nv:  # a term without vertices splats nothing (its buffers are not even zeroed)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nvs", [(6, 3), (3, 6), (2, 4), (5, 0)])
@pytest.mark.parametrize(("c", "cp"), [(21, 24), (8, 8), (3, 8), (9, 16), (30, 32), (37, 40)])
def test_wide_kernel_equals_scalar_kernel(nvs, c, cp) -> None:
    """The 8-lane kernel (vector slices, softmax and splats) gives the scalar kernel's bits:
    rows of 1-4 vectors (kept in registers) and of 5 (8 lanes at a time)."""
    unary, terms, lats = _case(cp + c, 301, c, cp, nvs)
    for threads in (1, 2):
        q, splats = _run(unary, terms, lats, cp, threads, kernel=fused.fused_step)
        qw, splats_w = _run(unary, terms, lats, cp, threads, kernel=fused.fused_step_wide)
        assert np.array_equal(q, qw)
        for a, b in zip(splats, splats_w):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("nvs", [(6, 3), (2, 4)])
@pytest.mark.parametrize("c", [1, 2, 3, 5])
def test_fused_step_unpadded_equals_padded(nvs, c) -> None:
    """Few labels need no padding to 8: the same results, bit for bit."""
    unary, terms, lats8 = _case(c, 257, c, 8, nvs)
    lats = [np.ascontiguousarray(lat[:, :c]) for lat in lats8]
    for threads in (1, 2):
        q, splats = _run(unary, terms, lats, c, threads)
        q8, splats8 = _run(unary, terms, lats8, 8, threads)
        assert np.array_equal(q, q8[:, :c])
        for a, b in zip(splats, splats8):
            assert np.array_equal(a, b[:, :c])


def test_fused_step_skips_slices_splats_and_store() -> None:
    unary, terms, lats = _case(3, 200, 21, 24, (6, 3))
    q, splats = _run(unary, terms, lats, 24, 2, slices=False)  # the initial softmax
    e = np.exp(-unary.astype(np.float64) - (-unary).max(1, keepdims=True))
    np.testing.assert_allclose(q[:, :21], e / e.sum(1, keepdims=True), rtol=0, atol=2e-6)
    q, splats = _run(unary, terms, lats, 24, 2, splat=False)
    assert all(np.all(s[:-1] == 14.0) for s in splats)  # buffers untouched (7 + 7)
    q, _ = _run(unary, terms, lats, 24, 1, store=False)
    assert np.all(q == 0)


@pytest.mark.parametrize(("c", "cp"), [(21, 24), (2, 2), (5, 8)])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_label_major_output(c, cp, batch, threads) -> None:
    """qt (B, C, n) receives Q label-major, bit for bit q's values (n = 301 / 3 images: blocks
    of 64 pixels span two images); q itself is left alone when store is off."""
    p = 903
    unary, terms, lats = _case(c + batch, p, c, cp, (6, 3))
    want, want_splats = _run(unary, terms, lats, cp, threads)
    n = p // batch
    qt = np.full((batch, c, n), -1.0, np.float32)
    q = np.zeros((p, cp), np.float32)
    call = []
    accs = []
    for (offs, wts, bary), lat in zip(terms, lats):
        accs.append(np.zeros((threads, lat.shape[0], cp), np.float32))
        call += [offs, wts, *_UNIT, lat, bary, accs[-1]]
    _fused(unary, q, call, False, qt, threads)
    assert np.array_equal(qt, want[:, :c].reshape(batch, n, c).transpose(0, 2, 1))
    assert np.all(q == 0)
    for got, ref in zip(accs, want_splats):
        assert np.array_equal(got.sum(0), ref)


def test_fused_step_float64_tables() -> None:
    """float64 lattice values and buffers (q stays float32) still run, to float32 accuracy."""
    unary, terms, lats = _case(9, 200, 21, 24, (6, 3))
    want, want_splats = _run(unary, terms, lats, 24, 1)
    terms64 = [(o, w.astype(np.float64), b.astype(np.float64)) for o, w, b in terms]
    p = unary.shape[0]
    q = np.zeros((p, 24), np.float32)
    accs = [np.zeros((1, lat.shape[0], 24)) for lat in lats]
    call = []
    for (offs, wts, bary), lat, acc in zip(terms64, lats, accs):
        call += [offs, wts, *_UNIT, lat.astype(np.float64), bary, acc]
    _fused(unary, q, call, True, _NO_OUT, 1)
    np.testing.assert_allclose(q, want, rtol=0, atol=1e-6)
    for got, ref in zip(accs, want_splats):
        np.testing.assert_allclose(got.sum(0), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("c", "cp"), [(21, 24), (37, 40), (5, 5)])
def test_folded_slice_weights_round_as_stored_ones(c, cp) -> None:
    """The kernels form each slice weight as (float32(base) * alpha) * post[p]: the same bits
    as slicing with the weights lattice.slice_weights stores ((bary * alpha) * post rounded
    to float32 by numpy), for float32 and float64 bases."""
    unary, terms, lats = _case(c + 11, 300, c, cp, (6, 3))
    rng = np.random.default_rng(5)
    p = unary.shape[0]
    alpha = np.float32(1.0 / (1.0 + 2.0**-5))
    for dtype in (np.float32, np.float64):
        folded, stored = [], []
        for (offs, _, bary), lat in zip(terms, lats):
            base = rng.uniform(0.0, 1.0, offs.shape).astype(dtype)
            post = rng.uniform(0.1, 3.0, p).astype(np.float32)
            wts = np.multiply(base, alpha, dtype=np.float32)
            wts *= post[:, None]
            acc = np.zeros((1, lat.shape[0], cp), np.float32)
            folded += [offs, base, post, alpha, lat, bary, acc]
            stored += [offs, wts, *_UNIT, lat, bary, acc.copy()]
        for kernel in (fused.fused_step, fused.fused_step_wide) if cp % 8 == 0 else (None,):
            q1, q2 = np.zeros((p, cp), np.float32), np.zeros((p, cp), np.float32)
            _fused(unary, q1, folded, True, _NO_OUT, 1, kernel)
            _fused(unary, q2, stored, True, _NO_OUT, 1, kernel)
            assert np.array_equal(q1, q2)
            assert np.array_equal(folded[6], stored[6]) and np.array_equal(folded[13], stored[13])
