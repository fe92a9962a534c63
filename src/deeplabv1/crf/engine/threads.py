"""Threads of the CPU engine: how many, and running a kernel over ranges on them.

The numba kernels are serial functions over a range of rows that release the GIL (``nogil``);
``run`` splits the rows into one contiguous range per thread, runs the first in the calling
thread and the others on a small pool of Python threads, and waits for all of them. One
thread runs the kernel directly. The count is ``set_num_threads(n)`` or, by default, numba's
``NUMBA_NUM_THREADS`` (the cores this process may use); the torch side passes
``torch.get_num_threads()`` instead.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["available", "get_num_threads", "ranges", "run", "set_num_threads", "use_threads"]

# DEEPLABV1_CRF_NUMBA=0 disables the engine (the torch side then runs everything)
ENABLED = os.environ.get("DEEPLABV1_CRF_NUMBA", "1") not in ("0", "false", "no")

_THREADS: int | None = None  # None: numba's default thread count
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0
_POOL_LOCK = threading.Lock()  # callers in several threads share the pool


def available() -> bool:
    """True when the engine can run (numba installed and not disabled); does not import it."""
    return ENABLED and importlib.util.find_spec("numba") is not None


def _default_threads() -> int:
    """numba's thread count without importing numba: NUMBA_NUM_THREADS, else the cores this
    process may run on."""
    if os.environ.get("NUMBA_NUM_THREADS"):
        return max(1, int(os.environ["NUMBA_NUM_THREADS"]))
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Threads of the torch-free CPU engine (at most NUMBA_NUM_THREADS, the cores by default).

    The torch side keeps following ``torch.get_num_threads()``.
    """
    if int(n) < 1:
        raise ValueError(f"set_num_threads: need n >= 1, got {n}")
    global _THREADS
    _THREADS = int(n)


def get_num_threads() -> int:
    """Threads the engine runs on: the ``set_num_threads`` value or numba's default."""
    limit = max(1, _default_threads())
    return min(_THREADS, limit) if _THREADS is not None else limit


def use_threads(threads: int | None = None) -> int:
    """``threads`` (at most the default count), or the engine's setting when None or 0."""
    return max(1, min(int(threads), _default_threads())) if threads else get_num_threads()


def ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering 0..n (the first ones one longer when uneven)."""
    parts = max(1, min(parts, n)) if n else 1
    step, extra = divmod(n, parts)
    out, lo = [], 0
    for k in range(parts):
        hi = lo + step + (k < extra)
        out.append((lo, hi))
        lo = hi
    return out


def _pool(workers: int) -> ThreadPoolExecutor:
    """The pool of ``workers`` threads (a new one after a fork: the old threads are gone)."""
    global _POOL, _POOL_SIZE, _POOL_PID
    if _POOL is None or workers > _POOL_SIZE or os.getpid() != _POOL_PID:
        if _POOL is not None and os.getpid() == _POOL_PID:
            _POOL.shutdown(wait=False)  # its queued jobs still run; new ones go to the new pool
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deeplabv1-crf")
        _POOL_SIZE, _POOL_PID = workers, os.getpid()
    return _POOL


def run(kernel, jobs: list[tuple]) -> None:
    """``kernel(*job)`` for every job, the first in this thread and the others on the pool at
    the same time; returns when all are done (the first exception is raised)."""
    if len(jobs) == 1:
        kernel(*jobs[0])
        return
    with _POOL_LOCK:
        pool = _pool(len(jobs) - 1)
        futures = [pool.submit(kernel, *job) for job in jobs[1:]]
    try:
        kernel(*jobs[0])
    finally:
        for f in futures:
            f.result()
