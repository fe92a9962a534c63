"""The permutohedral lattice's tables and its Gaussian filter on numpy arrays: no torch.

This package must never import torch: the pydensecrf drop-in runs on it alone, so a CPU
process pays for numpy + numba instead of torch's 220 MiB import. The torch side wraps the
same arrays with ``torch.from_numpy`` on the CPU: one implementation of the CPU path.

    lat = cache.cached_lattice(features, n)  # build.py; features (P, d) float32
    out = lat.filter(values)                 # (P, C) -> (P, C); reverse=True: adjoint order
    norm = lat.normalizer()                  # K 1, (P, 1), computed once

The filter splats each point's values into its d+1 vertices with the barycentric weights
(one buffer per thread, summed afterwards), blurs with [1/2, 1, 1/2] along each of the d+1
lattice axes and slices back with the weights times alpha = 1/(1 + 2^-d). Each kernel runs
on a range of rows per thread (threads.run).
"""

from __future__ import annotations

import threading

import numpy as np

from deeplabv1.crf.engine import lazy_module, threads

filter_kernels = lazy_module("deeplabv1.crf.engine.filter_kernels")

__all__ = ["PARALLEL_MIN", "NumpyLattice", "blur_axes"]

# Below this many lattice values (rows x columns) one axis of the blur runs on one thread:
# the pool's hand-over costs more than the work (measured: a 24.5k x 24 axis, 0.09 ms).
PARALLEL_MIN = 1 << 20


class NumpyLattice:
    """Lattice tables as arrays (P points, M lattice points, dimension d) and the filter.

    offs (P, d+1) int vertex ids, wts (P, d+1) slice weights (bary * alpha), bary (P, d+1)
    splat weights, neighbours (d+1, 2, M) int32 or int64 (M: missing). float32 or float64
    tables. With ``wts`` None the slice weights are not stored but computed when needed as
    ``bary * float32(alpha)`` (the same bits; 4 (d+1) bytes per pixel less to keep).
    """

    def __init__(self, offs, wts, bary, neighbours, alpha: float | None = None) -> None:
        if wts is None and alpha is None:
            raise ValueError("NumpyLattice: give the slice weights or alpha")
        self.offs, self.bary = offs, bary
        self._wts = wts
        self.alpha = alpha
        self.neighbours = neighbours
        self.n1 = list(neighbours[:, 0])
        self.n2 = list(neighbours[:, 1])
        self.num_points = offs.shape[0]
        self.num_lattice = neighbours.shape[2]
        self.dtype = bary.dtype
        self._ws: tuple[np.ndarray, ...] | None = None  # filter's spare buffers, see filter
        self._ws_lock = threading.Lock()
        self._norm: np.ndarray | None = None

    @property
    def wts(self) -> np.ndarray:
        """The slice weights (P, d+1): stored, or bary * alpha computed now (a new array)."""
        if self._wts is not None:
            return self._wts
        return self.bary * self.dtype.type(self.alpha)

    def slice_base(self) -> tuple[np.ndarray, np.float32]:
        """(base, alpha): the slice weights are (float32(base) * alpha) * post in float32,
        the rounding of ``slice_weights`` (base the stored weights with alpha 1, else bary)."""
        if self._wts is not None:
            return self._wts, np.float32(1.0)
        return self.bary, np.float32(self.dtype.type(self.alpha))

    def slice_weights(self, post) -> np.ndarray:
        """float32 slice weights times ``post`` ((P, 1) array or a scalar), a new array:
        (bary * alpha) * post, rounded as the stored product would be."""
        if self._wts is not None:
            return np.multiply(self._wts, post, dtype=np.float32)
        out = np.multiply(self.bary, self.dtype.type(self.alpha), dtype=np.float32)
        out *= post
        return out

    def filter(self, values: np.ndarray, reverse: bool = False, num_threads: int | None = None):
        """K values: splat, blur along axes 0..d (d..0 with reverse), slice; (P, C) -> (P, C)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        nt = threads.use_threads(num_threads)
        # The cached buffers are taken for the call (and put back after it): a lattice shared
        # by two terms of one CRF or by CRFs in several threads never has two users of them.
        with self._ws_lock:
            ws, self._ws = self._ws, None
        if not self._fits(ws, values.shape[1], nt):
            ws = None  # free the old buffers first
            ws = self.workspace(values.shape[1], nt)
        acc, a, b = ws
        parts = threads.ranges(self.num_points, acc.shape[0])
        threads.run(filter_kernels.splat,
                    [(self.offs, self.bary, values, acc[t], lo, hi)
                     for t, (lo, hi) in enumerate(parts)])  # fmt: skip
        lat = self.blur(acc, a, b, reverse, nt, len(parts))
        out = np.empty_like(values)
        wts = self.wts
        threads.run(
            filter_kernels.slice_,
            [
                (self.offs, wts, lat, out, lo, hi, out[:0])
                for lo, hi in threads.ranges(self.num_points, nt)
            ],
        )
        with self._ws_lock:
            self._ws = ws
        return out

    def normalizer(self, num_threads: int | None = None) -> np.ndarray:
        """The filtered all-ones image K 1 (P, 1), computed once."""
        if self._norm is None:
            ones = np.ones((self.num_points, 1), self.dtype)
            self._norm = self.filter(ones, num_threads=num_threads)
        return self._norm

    def workspace(self, c: int, num_threads: int) -> tuple[np.ndarray, ...]:
        """New splat buffers acc (threads, M+1, c), the blur result buffer a (M+1, c) and the
        blur's spare b (acc[1] with several threads; its own buffer on one thread for an even
        axis count; else None), all with a zero last row. Every user gets its own: two terms
        of one CRF can share a lattice (equal features), and so can CRFs in several threads
        (the cache)."""
        nt = max(1, min(num_threads, self.num_points))
        rows = self.num_lattice + 1
        acc = np.zeros((nt, rows, c), self.dtype)
        if nt > 1:
            spare = acc[1]
        elif len(self.n1) % 2 == 0:
            spare = np.zeros((rows, c), self.dtype)
        else:
            spare = None
        return acc, np.zeros((rows, c), self.dtype), spare

    def _fits(self, ws, c: int, num_threads: int) -> bool:
        """Whether the buffers ws serve ``workspace(c, num_threads)``."""
        nt = max(1, min(num_threads, self.num_points))
        return ws is not None and ws[1].shape[1] == c and ws[0].shape[0] == nt

    def release_workspace(self) -> None:
        """Forget filter's cached buffers."""
        with self._ws_lock:
            self._ws = None

    def blur(self, acc, a, b, reverse: bool = False, num_threads: int = 1, used: int = 0):
        """Blur the splatted acc (rows: M lattice points + a zero row) along every axis into a
        (returned); the first ``used`` thread buffers of acc (all by default) hold splats and
        are summed into acc[0] first. acc[0] is the ping-pong partner of a; an even axis count
        goes through b first (acc[1] or a spare buffer) so that the result lands in a, outside
        acc (the fused mean-field pass splats into acc while it slices the result). With b
        None and an even axis count the result lands in acc[0] (returned): the caller swaps
        the buffers' roles."""
        axes = list(range(len(self.n1) - 1, -1, -1) if reverse else range(len(self.n1)))
        return blur_axes(self, acc, a, b, axes, num_threads, used or acc.shape[0])


def blur_axes(lat: NumpyLattice, acc, a, b, axes: list[int], num_threads: int, used: int):
    """NumpyLattice.blur's work: reduce the splat buffers, then the axes in order."""
    m = lat.num_lattice
    nt = num_threads if m * acc.shape[2] >= PARALLEL_MIN else 1
    parts = threads.ranges(m, nt)
    # With one buffer this does nothing, but the kernels in use (so those compiled the first
    # time) stay the same for every thread count.
    threads.run(filter_kernels.reduce_rows, [(acc[:used], lo, hi) for lo, hi in parts])
    src = acc[0]
    if len(axes) % 2 == 0 and b is None:  # no spare: src -> a -> acc[0] -> ... -> acc[0]
        for k, j in enumerate(axes):
            dst = a if k % 2 == 0 else acc[0]
            threads.run(filter_kernels.blur, [(src, dst, lat.n1[j], lat.n2[j], lo, hi)
                                              for lo, hi in parts])  # fmt: skip
            src = dst
        return src
    if len(axes) % 2 == 0:
        j = axes.pop(0)
        threads.run(filter_kernels.blur, [(src, b, lat.n1[j], lat.n2[j], lo, hi)
                                          for lo, hi in parts])  # fmt: skip
        src = b
    for k, j in enumerate(axes):  # an odd count left: src -> a -> acc[0] -> ... -> a
        dst = a if k % 2 == 0 else acc[0]
        threads.run(filter_kernels.blur, [(src, dst, lat.n1[j], lat.n2[j], lo, hi)
                                          for lo, hi in parts])  # fmt: skip
        src = dst
    return a
