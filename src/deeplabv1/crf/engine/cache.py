"""The last few built lattices, by their features.

The position-only (Gaussian) lattice depends only on the image size and sxy, so repeated
calls (a batch of images of one size, ``deeplabv1 crf``, a benchmark's repeats) build it once;
comparing the features costs about 0.3 ms at 500x375.
"""

from __future__ import annotations

import threading

import numpy as np

from deeplabv1.crf.engine.build import build_lattice
from deeplabv1.crf.engine.lattice import NumpyLattice

__all__ = ["CACHE_SIZE", "cached_features", "cached_lattice", "clear_cache"]

CACHE_SIZE = 2
_CACHE: list[tuple[np.ndarray, tuple[int, bool], NumpyLattice]] = []
_LOCK = threading.Lock()  # the list's updates (CRFs may run in several threads)


def cached_lattice(features: np.ndarray, n: int, num_threads=None, copy: bool = True,
                   phantoms: bool = False):  # fmt: skip
    """``build_lattice(features, n, phantoms=)`` through the cache.

    The cache keeps a copy of the features, or with ``copy=False`` the array itself (the
    caller then promises never to modify it: the drop-in's private feature arrays).
    """
    key = (n, bool(phantoms))
    with _LOCK:
        lat = _lookup(features, key)
        if lat is not None:
            return lat
        if CACHE_SIZE > 0 and len(_CACHE) >= CACHE_SIZE:
            _CACHE.pop()  # evict before building: the peak memory then holds one lattice less
    lat = build_lattice(features, n, num_threads, phantoms)  # outside the lock
    if CACHE_SIZE > 0:
        with _LOCK:
            _CACHE.insert(0, (features.copy() if copy else features, key, lat))
            del _CACHE[CACHE_SIZE:]
    return lat


def _lookup(features: np.ndarray, n) -> NumpyLattice | None:
    """The cached lattice of these features (moved to the front), or None. A function of its
    own: no loop variable of the caller then holds a cached entry when the caller evicts one
    (measured: the old bilateral lattice and its buffers, 40 MiB at 500x375, stayed alive
    through the next build)."""
    for k, (f, fn, _) in enumerate(_CACHE):
        if fn == n and f.shape == features.shape and np.array_equal(f, features):
            _CACHE.insert(0, _CACHE.pop(k))
            return _CACHE[0][2]
    return None


def cached_features(lat: NumpyLattice) -> np.ndarray | None:
    """The features array the cache keeps for ``lat`` (None when it is not cached): a caller
    holding equal features can keep this one instead of a second copy."""
    with _LOCK:
        entries = list(_CACHE)
    for f, _, cached in entries:
        if cached is lat:
            return f
    return None


def clear_cache() -> None:
    """Forget the cached lattices (they are rebuilt on demand)."""
    with _LOCK:
        _CACHE.clear()
