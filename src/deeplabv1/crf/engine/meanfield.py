"""Mean-field inference on numpy arrays with the numba kernels (no torch).

The CPU engine of the pydensecrf drop-in, of ``deeplab_crf_np`` and of the torch side's
``mean_field`` on CPU tensors. The iteration (Kraehenbuehl & Koltun 2011):

    Q = softmax(-U);  repeat:  Q = softmax(-U + sum_k message_k(Q))
    message_k(Q) = compat_k(post_k * K_k(pre_k * Q))

with pre / post the normalisation factors of each term and compat a Potts weight (+w times
the filtered Q), a diagonal (L,) or a full (L, L) compatibility (energies: the filtered Q
times -v, or times the negated symmetrised matrix). Per iteration and term d+1 blurs, then
one fused pass over the pixels: -U + the last two Potts terms' slices (post and weight
folded into the slice weights) + softmax + splat of the new Q (pre folded into the splat
weights). Further terms (more Potts terms, diagonal and matrix compatibilities) slice and
splat in their own passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeplabv1.crf.engine import lazy_module, threads
from deeplabv1.crf.engine.lattice import NumpyLattice

filter_kernels = lazy_module("deeplabv1.crf.engine.filter_kernels")
fused = lazy_module("deeplabv1.crf.engine.fused")

__all__ = ["NumpyTerm", "iterate", "mean_field", "message", "prepare_term", "step"]

NORMALIZATIONS = ("symmetric", "after", "before", "none")
# The energy of the padding labels (logit simd.LOW: Q exactly 0). Infinite, so that a real
# label's energy, however large (1e31 for a "forbidden" label), stays below it in the max.
PAD = np.float32(np.inf)


def padded_width(num_labels: int) -> int:
    """The row width of the engine's label arrays: 8 labels and more padded to a multiple of
    8 (the AVX width: the label loops then have no remainder, measured 1.4x faster
    slice/splat/blur at 21 -> 24); fewer run unpadded (2 labels: fused pass 12.0 -> 7.4 ms)."""
    return num_labels if num_labels < 8 else -(-num_labels // 8) * 8


def unary_buffer(num_points: int, num_labels: int) -> np.ndarray:
    """A pixel-major energy array (P, padded_width) whose padding columns hold PAD; write the
    energies into its first num_labels columns."""
    buf = np.empty((num_points, padded_width(num_labels)), np.float32)
    buf[:, num_labels:] = PAD
    return buf


@dataclass
class NumpyTerm:
    """A term ready for iteration: message = compat(post * K(pre * Q)).

    Potts (vector and matrix None): post includes the weight; with post None the message is
    weight * K(pre * Q). Otherwise the filtered Q times ``vector`` (L,) or times ``matrix``
    (L, L): the negated diagonal energies or the negated symmetrised energy matrix.
    """

    lattice: NumpyLattice
    pre: np.ndarray | None  # (P,) float32
    post: np.ndarray | None  # (P,) float32
    weight: float
    vector: np.ndarray | None = None
    matrix: np.ndarray | None = None

    @property
    def potts(self) -> bool:
        return self.vector is None and self.matrix is None


def prepare_term(lattice: NumpyLattice, compat, normalization: str) -> NumpyTerm:
    """The normaliser factors and compatibility of a term: ``compat`` a Potts weight, an (L,)
    diagonal or an (L, L) matrix of energies (symmetrised, as in pydensecrf); normalisation
    one of NORMALIZATIONS. The factors are computed in float64 and rounded once, as
    pydensecrf computes them."""
    pre = post = None
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}")
    if normalization != "none":
        norm = lattice.normalizer().reshape(-1).astype(np.float64) + 1e-20
        if normalization == "symmetric":
            pre = post = (1.0 / np.sqrt(norm)).astype(np.float32)
        elif normalization == "after":
            post = (1.0 / norm).astype(np.float32)
        else:
            pre = (1.0 / norm).astype(np.float32)
    vector = matrix = None
    weight = 0.0
    if np.ndim(compat) == 0:
        weight = float(compat)
        if post is not None:
            post = post * np.float32(weight)  # a new array: pre may alias post
    elif np.ndim(compat) == 1:
        vector = -np.asarray(compat, np.float32)
    else:
        c = np.asarray(compat, np.float32)
        matrix = -(np.float32(0.5) * (c + c.T))
    return NumpyTerm(lattice, pre, post, weight, vector, matrix)


def _compat(f: np.ndarray, term: NumpyTerm) -> np.ndarray:
    """The message from the normalised filtered Q f (P, L): the compatibility applied."""
    if term.matrix is not None:
        return f @ term.matrix
    if term.vector is not None:
        return f * term.vector
    return f if term.post is not None else f * np.float32(term.weight)


def message(q: np.ndarray, term: NumpyTerm, num_threads: int | None = None) -> np.ndarray:
    """The negated-energy message (P, L) of one term for marginals q (P, L)."""
    x = q if term.pre is None else q * term.pre[:, None]
    f = term.lattice.filter(x, num_threads=num_threads)
    if term.post is not None:
        f *= term.post[:, None]
    return _compat(f, term)


def step(neg_unary: np.ndarray, q: np.ndarray, terms, num_threads=None) -> np.ndarray:
    """One mean-field update softmax(-U + sum of messages), all (P, L) float32."""
    m = neg_unary.copy()
    for term in terms:
        m += message(q, term, num_threads)
    m -= m.max(1, keepdims=True)
    np.exp(m, out=m)
    m /= m.sum(1, keepdims=True)
    return m


def mean_field(unary: np.ndarray, terms, iters: int, num_threads=None) -> np.ndarray:
    """Marginals Q (B, L, N) float32 for unary energies (B, L, N) and NumpyTerms over B*N points."""
    batch, num_labels, n = unary.shape
    un = unary_buffer(batch * n, num_labels)
    un[:, :num_labels].reshape(batch, n, num_labels)[...] = unary.transpose(0, 2, 1)
    out = np.empty((batch, num_labels, n), np.float32)
    return iterate(un, terms, iters, num_threads, out, num_labels)


class _Plan:
    """One term during iteration: its lattice, slice and splat weights, buffers."""

    def __init__(self, term: NumpyTerm, width: int, nt: int) -> None:
        lat = self.lattice = term.lattice
        self.term = term
        self.splat = lat.bary if term.pre is None else lat.bary * term.pre[:, None]
        # the slice weights (base * alpha) * post are formed in the fused pass (not stored:
        # 36 bytes a pixel less to stream per pass at d = 2 and 5)
        scale = term.weight if term.potts else 1.0
        self.post = term.post if term.post is not None else np.full(lat.num_points, scale,
                                                                     np.float32)  # fmt: skip
        self.base, self.alpha = lat.slice_base()
        self._wts = None
        # its own buffers (lattices may be shared); one thread: two (1, M+1, C) buffers that
        # swap roles when the blur leaves its result in the splat buffer (an even axis
        # count; no third buffer: measured 3.3 -> 2.8 ms a bilateral blur at 500x375)
        if nt == 1:
            rows = (1, lat.num_lattice + 1, width)
            self.spare = np.zeros(rows, lat.dtype)  # the tables' dtype, as lat.workspace
            self.ws = (np.zeros(rows, lat.dtype), self.spare[0], None)
        else:
            self.spare = None
            self.ws = lat.workspace(width, nt)


    @property
    def wts(self) -> np.ndarray:
        """The slice weights as an array (for the terms sliced outside the fused pass)."""
        if self._wts is None:
            self._wts = self.lattice.slice_weights(self.post[:, None])
        return self._wts


class _Empty:
    """A term without vertices: pads the fused pass to two terms."""

    def __init__(self, p: int, width: int, nt: int) -> None:
        self.offs = np.zeros((p, 0), np.int32)
        self.base = self.splat = np.zeros((p, 0), np.float32)
        self.post, self.alpha = np.zeros(1, np.float32), np.float32(1.0)
        acc = np.zeros((nt, 1, width), np.float32)
        self.ws = (acc, acc[0], None)
        self.lattice = self


def iterate(un: np.ndarray, terms, iters: int, num_threads=None, out=None, num_labels=None):
    """Mean field on pixel-major unary energies un (P, L) or (P, padded_width(L)) float32
    (C order; padding columns PAD, see unary_buffer) for ``num_labels`` L (default: un's
    columns).

    With ``out`` (B, L, n) float32, B n = P, Q is written there label-major (the last pass
    writes it directly: no pixel-major Q is kept with up to two Potts terms) and returned;
    else returns Q as (P, padded_width(L)) (columns L.. are 0). No per-iteration allocation
    with Potts terms only."""
    nt = threads.use_threads(num_threads)
    p = un.shape[0]
    num_labels = num_labels or un.shape[1]
    padded = padded_width(num_labels)
    if un.shape[1] != padded:  # unpadded energies: pad them (a copy)
        wide = unary_buffer(p, num_labels)
        wide[:, :num_labels] = un
        un = wide
    if not terms:  # no pairwise term: Q = softmax(-U) whatever the iteration count
        q = step(-un[:, :num_labels], None, [])
        if out is None:
            qn = np.zeros((p, padded), np.float32)
            qn[:, :num_labels] = q
            return qn
        out[...] = q.reshape(out.shape[0], out.shape[2], num_labels).transpose(0, 2, 1)
        return out
    plans = [_Plan(t, padded, nt) for t in terms]
    potts = [k for k, t in enumerate(terms) if t.potts]
    pair = [plans[k] for k in potts[-2:]]
    extra = [pl for pl in plans if pl not in pair]
    while len(pair) < 2:
        pair.append(_Empty(p, padded, nt))
    # Pixel-major Q: needed by the extra terms' splats, or as the result without ``out``.
    qn = np.zeros((p if extra or out is None else 0, padded), np.float32)
    base = np.empty_like(un) if extra else un
    parts = threads.ranges(p, pair[0].ws[0].shape[0])
    kernel = fused.fused_step_wide if padded % 8 == 0 else fused.fused_step

    def fused_pass(energies, lats, splat: bool) -> None:
        last = not splat
        store = bool(extra) and splat or (last and out is None)
        qt = out if last and out is not None else np.zeros((0, num_labels, 1), np.float32)
        jobs = []
        for t, (lo, hi) in enumerate(parts):
            args = [energies, qn]
            for plan, sliced in zip(pair, lats or (None, None)):
                acc = plan.ws[0]
                args += [
                    plan.lattice.offs,
                    plan.base if sliced is not None else plan.base[:, :0],
                    plan.post,
                    plan.alpha,
                    plan.ws[1] if sliced is None else sliced,
                    plan.splat if splat else plan.splat[:, :0],
                    acc[min(t, len(acc) - 1)],
                ]
            jobs.append((*args, store, qt, num_labels, lo, hi))
        threads.run(kernel, jobs)

    fused_pass(un, None, iters > 0)
    for it in range(iters):
        lats = [_blur(plan, qn if plan in extra else None, nt, len(parts)) for plan in plans]
        if extra:  # base = U - (the extra terms' messages)
            np.copyto(base, un)
            for plan, sliced in zip(plans, lats):
                if plan in extra:
                    _subtract_message(base, plan, sliced, nt, num_labels)
        pair_lats = [lats[plans.index(pl)] if pl in plans else pl.ws[1] for pl in pair]
        if it == iters - 1:
            _release_buffers(plans, nt, padded)
        fused_pass(base, pair_lats, it < iters - 1)
    return qn if out is None else out


def _blur(plan: _Plan, qn: np.ndarray | None, nt: int, used: int) -> np.ndarray:
    """A term's blurred lattice values; an extra term (qn given) splats qn first."""
    acc, a, b = plan.ws
    lat = plan.lattice
    if qn is not None:
        parts = threads.ranges(qn.shape[0], acc.shape[0])
        threads.run(filter_kernels.splat, [(lat.offs, plan.splat, qn, acc[t], lo, hi)
                                           for t, (lo, hi) in enumerate(parts)])  # fmt: skip
        used = len(parts)
    if not lat.n1:
        return acc[0]
    out = lat.blur(acc, a, b, False, nt, used)
    if plan.spare is not None and len(lat.n1) % 2 == 0:  # the result is in acc[0]: swap
        plan.spare, plan.ws = acc, (plan.spare, out, None)
    return out


def _subtract_message(base: np.ndarray, plan: _Plan, sliced: np.ndarray, nt: int, c: int):
    """base -= the message of an extra term from its blurred lattice values."""
    lat = plan.lattice
    parts = threads.ranges(base.shape[0], nt)
    if plan.term.potts:  # base + slice with the negated weights, in one pass
        neg = -plan.wts
        threads.run(
            filter_kernels.slice_,
            [(lat.offs, neg, sliced, base, lo, hi, base) for lo, hi in parts],
        )
        return
    f = np.empty((base.shape[0], sliced.shape[1]), np.float32)
    threads.run(filter_kernels.slice_, [(lat.offs, plan.wts, sliced, f, lo, hi, f[:0])
                                        for lo, hi in parts])  # fmt: skip
    base[:, :c] -= _compat(f[:, :c], plan.term)


def _release_buffers(plans, nt: int, width: int) -> None:
    """Before the last pass (no splats): free the splat buffers and the blur spares (the
    blurred values stay referenced by the caller) so that the output's pages do not add to
    them (measured: 15.5 MiB less at the peak at 500x375, 21 labels, 2 threads). The
    kernel still takes a (1, width) buffer per thread."""
    dummy = np.zeros((nt, 1, width), np.float32)
    for plan in plans:
        plan.ws, plan.spare = (dummy, None, None), None
