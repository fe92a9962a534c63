"""Potts mean-field inference on numpy arrays with the numba kernels (no torch).

The CPU engine of the pydensecrf drop-in and of ``meanfield.mean_field`` for Potts lattice
terms (meanfield._iterate_numba wraps this). Same iteration as meanfield.py:

    Q = softmax(-U);  repeat:  Q = softmax(-U + sum_k post_k * K_k(pre_k * Q))

with the Potts weight folded into post (or, with no normalisation, applied as ``weight``).
Per iteration and term d+1 blurs, then one fused pass over the pixels: -U + the last two
terms' slices (post and weight folded into the slice weights) + softmax + splat of the new Q
(pre folded into the splat weights). Further terms slice and splat in their own passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeplabv1.crf import lattice_numba
from deeplabv1.crf.numpy_lattice import NumpyLattice, use_threads

__all__ = ["NumpyTerm", "iterate", "mean_field", "message", "prepare_term", "step"]

_EPS = np.float32(1e-20)


@dataclass
class NumpyTerm:
    """A Potts term ready for iteration: message = post * K(pre * Q) (post includes the weight;
    with post None the message is weight * K(pre * Q))."""

    lattice: NumpyLattice
    pre: np.ndarray | None  # (P,) float32
    post: np.ndarray | None  # (P,) float32
    weight: float


def prepare_term(lattice: NumpyLattice, weight: float, normalization: str) -> NumpyTerm:
    """The normaliser factors of a Potts term (modes as in meanfield.NORMALIZATIONS)."""
    pre = post = None
    if normalization != "none":
        norm = lattice.normalizer().reshape(-1) + _EPS
        if normalization == "symmetric":
            pre = post = np.float32(1.0) / np.sqrt(norm)
        elif normalization == "after":
            post = np.float32(1.0) / norm
        elif normalization == "before":
            pre = np.float32(1.0) / norm
        else:
            raise ValueError(f"unknown normalization {normalization!r}")
    if post is not None:
        post = post * np.float32(weight)  # a new array: pre may alias post
    return NumpyTerm(lattice, pre, post, float(weight))


def message(q: np.ndarray, term: NumpyTerm) -> np.ndarray:
    """The negated-energy message (P, L) of one term for marginals q (P, L)."""
    x = q if term.pre is None else q * term.pre[:, None]
    f = term.lattice.filter(x)
    return f * term.post[:, None] if term.post is not None else f * np.float32(term.weight)


def step(neg_unary: np.ndarray, q: np.ndarray, terms) -> np.ndarray:
    """One mean-field update softmax(-U + sum of messages), all (P, L) float32."""
    m = neg_unary.copy()
    for term in terms:
        m += message(q, term)
    m -= m.max(1, keepdims=True)
    np.exp(m, out=m)
    m /= m.sum(1, keepdims=True)
    return m


def mean_field(unary: np.ndarray, terms, iters: int, threads: int | None = None) -> np.ndarray:
    """Marginals Q (B, L, N) float32 for unary energies (B, L, N) and NumpyTerms over B*N points."""
    batch, num_labels, n = unary.shape
    un = np.ascontiguousarray(unary.transpose(0, 2, 1), dtype=np.float32).reshape(-1, num_labels)
    out = np.empty((batch, num_labels, n), np.float32)
    return iterate(un, terms, iters, threads, out)


def iterate(un: np.ndarray, terms, iters: int, threads: int | None = None, out=None):
    """Mean field on pixel-major unary energies un (P, L) float32 (C order).

    With ``out`` (B, L, n) float32, B n = P, Q is written there label-major (the last pass
    writes it directly: no pixel-major Q is kept with up to two terms) and returned; else
    returns Q as (P, Lp) with Lp = L, or L padded to a multiple of 8 from 8 labels on
    (columns L.. are 0). No per-iteration allocation."""
    threads = use_threads(threads)
    p, num_labels = un.shape
    # 8 or more labels are padded to a multiple of 8 (AVX width): the label loops then have
    # no remainder (measured: slice/splat/blur about 1.4x faster at 21 -> 24). Fewer labels
    # run unpadded (the kernels take any width; 2 labels: fused pass 12.0 -> 7.4 ms).
    padded = num_labels if num_labels < 8 else -(-num_labels // 8) * 8
    if not terms:  # no pairwise term: Q = softmax(-U) whatever the iteration count
        q = step(-un, None, [])
        if out is None:
            qn = np.zeros((p, padded), np.float32)
            qn[:, :num_labels] = q
            return qn
        out[...] = q.reshape(out.shape[0], out.shape[2], num_labels).transpose(0, 2, 1)
        return out
    plans = []  # [lattice, slice weights, splat weights, (splat buffers, blur a, blur b)]
    for t in terms:
        lat = t.lattice
        bary = lat.bary if t.pre is None else lat.bary * t.pre[:, None]
        post = t.post[:, None] if t.post is not None else np.float32(t.weight)
        wts = lat.slice_weights(post)
        plans.append([lat, wts, bary, lat.workspace(padded, threads)])
    extra, pair = plans[:-2], plans[-2:]
    if len(pair) == 1:  # the fused pass takes two terms: add one without vertices
        z = np.zeros((p, 0), np.float32)
        acc = np.zeros((threads, 1, padded), np.float32)
        pair.append([_NoVertices(pair[0][0].offs[:, :0]), z, z, (acc, acc[0], acc[0])])
    # Pixel-major Q: needed by the extra terms' splats, or as the result without ``out``.
    qn = np.zeros((p if extra or out is None else 0, padded), np.float32)
    no_out = np.zeros((0, num_labels, 1), np.float32)
    base = np.empty_like(un) if extra else un
    kernel = lattice_numba.fused_step if threads > 1 else lattice_numba.fused_step_serial

    def fused(energies, lats, splat: bool) -> None:
        args = []
        for (lat, wts, bary, ws), sliced in zip(pair, lats or (None, None)):
            args += [lat.offs, wts if sliced is not None else wts[:, :0],
                     ws[1] if sliced is None else sliced, bary if splat else bary[:, :0], ws[0]]
        last = not splat
        store = bool(extra) and splat or (last and out is None)
        kernel(energies, qn, *args, store, out if last and out is not None else no_out)

    fused(un, None, iters > 0)
    for it in range(iters):
        lats = _blur_all(plans, len(extra), qn)
        if extra:  # base = U - (the extra terms' messages)
            np.copyto(base, un)
            for (lat, wts, _, _), sliced in zip(extra, lats):
                lattice_numba.slice_add(base, lat.offs, -wts, sliced, base)
        pair_lats = lats[len(extra):] + [pair[1][3][1]] * (2 - len(lats[len(extra):]))
        if it == iters - 1:
            _release_buffers(plans, threads, padded)
        fused(base, pair_lats, it < iters - 1)
    for plan in plans:  # the blur results (the last references to the buffers)
        plan[0].release_workspace()
    return qn if out is None else out


def _blur_all(plans, num_extra: int, qn: np.ndarray) -> list[np.ndarray]:
    """Each term's blurred lattice values (the extra terms splat qn first)."""
    lats = []
    for k, (lat, _, bary, (acc, a, b)) in enumerate(plans):
        if k < num_extra:
            lattice_numba.splat_scatter(lat.offs, bary, qn, acc)
        lats.append(lat.blur(acc, a, b) if lat.n1 else acc[0])
    return lats


def _release_buffers(plans, threads: int, width: int) -> None:
    """Before the last pass (no splats): free the splat buffers and the blur spares (the
    blurred values stay referenced by the caller) so that the output's pages do not add to
    them (measured: 15.5 MiB less at the peak at 500x375, 21 labels, 2 threads). The
    kernel still takes a (threads, 1, width) buffer: its first axis sets the workers."""
    dummy = np.zeros((threads, 1, width), np.float32)
    for plan in plans:
        plan[0].release_workspace()
        plan[3] = (dummy, None, None)


class _NoVertices:
    """Tables of an empty term (pads the fused pass to two terms)."""

    def __init__(self, offs: np.ndarray) -> None:
        self.offs = offs
        self.n1 = []

    def release_workspace(self) -> None:
        """Nothing to free."""
