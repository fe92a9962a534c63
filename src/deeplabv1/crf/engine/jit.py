"""numba for the CPU engine: the import, the compile options, the kernel cache and the notice
printed while the kernels compile for the first time.

Every kernel is compiled by numba on its first call and cached on disk (``cache=True``), so
that later processes only load it (about a tenth of a second for all of them): next to this
package (``__pycache__``) when that is writable, else in numba's user cache directory
(``~/.cache/numba``), or where ``NUMBA_CACHE_DIR`` says; when none of them can be written
(a read-only install and home), in a per-user folder of the temporary directory. The kernels
are serial (no ``parallel=True``): the engine runs them on its own threads (threads.py), so
one compiled kernel serves every thread count and compiling them takes seconds, not the half
minute numba's parallel loops cost.

``DEEPLABV1_CRF_NUMBA=0`` disables numba; the torch path then runs everything.
"""

from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["INTRINSIC_FILES", "NOTICE", "OPTIONS", "available", "inline", "kernel", "numba"]

from deeplabv1.crf.engine import threads

try:
    if not threads.ENABLED:
        raise ImportError
    import numba
    from numba.core import event
    from numba.misc.appdirs import AppDirs

    try:
        from numba.core.runtime import rtsys as _rtsys
    except ImportError:  # pragma: no cover - another numba layout: numba's own loading
        _rtsys = None
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

# nogil: the engine's threads run kernels at the same time; error_model="numpy": no Python
# exception checks in the integer divisions of the inner loops.
OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}

NOTICE = (
    "deeplabv1.crf: compiling the CRF kernels for this machine (once, about 10 s; later runs "
    "load them from the cache)"
)


def available() -> bool:
    """True when the numba kernels can run (numba imported and not disabled)."""
    return numba is not None and threads.ENABLED


def kernel(func):
    """``func`` compiled by numba with OPTIONS (compiled on first call, cached on disk); without
    numba the plain function (the engine is not used then)."""
    if numba is None:
        return func
    dispatcher = numba.njit(**OPTIONS)(func)
    _stamp_intrinsics(dispatcher)
    if FAST_LOAD:
        _load_without_refresh(dispatcher)
    return dispatcher


# The intrinsics (LLVM IR written in these modules) are compiled into the kernels that call
# them, but numba checks only a kernel's own file before it loads the kernel from the cache:
# their files join its stamp, so that a change to them recompiles the kernels.
INTRINSIC_FILES = ("simd.py", "simd_rows.py", "simd_vertices.py")


def _stamp_intrinsics(dispatcher) -> None:
    """Add the intrinsic modules' (mtime, size) to the source stamp of ``dispatcher``'s cache
    index; a no-op where this numba's cache lacks the attribute used."""
    index = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if index is None or not hasattr(index, "_source_stamp"):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for name in INTRINSIC_FILES:
        st = os.stat(os.path.join(here, name))
        stamps.append((st.st_mtime, st.st_size))
    index._source_stamp = (index._source_stamp, tuple(stamps))


# numba loads a cached kernel only after "refreshing" its compiler: importing and registering
# every typing and lowering module it has (numpy's whole API, linalg, which imports
# scipy.linalg when scipy is installed, ...), 0.3-0.6 s of a process's first CRF. Code loaded
# from the cache needs none of it, only the runtime (NRT) the kernels link against: the
# engine's kernels load without the refresh, and anything else (a cache miss, a failed load)
# takes numba's ordinary path, which refreshes before it compiles. DEEPLABV1_CRF_FAST_LOAD=0
# keeps numba's own loading.
FAST_LOAD = os.environ.get("DEEPLABV1_CRF_FAST_LOAD", "1") not in ("0", "false", "no")


def _load_without_refresh(dispatcher) -> None:
    """Let ``dispatcher`` load its cached overloads without numba's compiler refresh; a no-op
    where this numba's cache lacks the methods used (numba then loads as usual)."""
    cache = getattr(dispatcher, "_cache", None)
    load = getattr(cache, "_load_overload", None)
    guard = getattr(cache, "_guard_against_spurious_io_errors", None)
    if load is None or guard is None or _rtsys is None:
        return
    full = cache.load_overload

    def load_overload(sig, target_context):
        try:
            _rtsys.initialize(target_context)
            with guard():
                result = load(sig, target_context)
        except Exception:  # noqa: BLE001 - any failure: numba's own path decides
            result = None
        return result if result is not None else full(sig, target_context)

    cache.load_overload = load_overload


def inline(func):
    """A helper inlined into the kernels that call it (not cached on its own)."""
    return numba.njit(inline="always")(func) if numba is not None else func


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def cache_fallback(package_dir: str, user_dir: str, env_dir: str) -> str | None:
    """The cache folder to give numba, or None when numba finds a writable one itself
    (NUMBA_CACHE_DIR ``env_dir``, the package's ``__pycache__``, its user cache folder)."""
    if env_dir or _writable(os.path.join(package_dir, "__pycache__")) or _writable(user_dir):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"deeplabv1-numba-cache-{uid}")


if numba is not None:
    _fallback = cache_fallback(
        os.path.dirname(os.path.abspath(__file__)),
        AppDirs(appname="numba", appauthor=False).user_cache_dir,
        numba.config.CACHE_DIR,
    )
    if _fallback is not None:  # pragma: no cover - a read-only install and home
        numba.config.CACHE_DIR = _fallback

    class _CompileNotice(event.Listener):
        """Prints NOTICE once when numba compiles one of the engine's kernels (a cache miss:
        numba's ``numba:compile`` event does not fire for kernels loaded from the cache)."""

        shown = False

        def on_start(self, ev) -> None:
            func = getattr(ev.data.get("dispatcher"), "py_func", None)
            if not self.shown and getattr(func, "__module__", "").startswith(__package__):
                type(self).shown = True
                print(NOTICE, file=sys.stderr, flush=True)

        def on_end(self, ev) -> None:
            pass

    event.register("numba:compile", _CompileNotice())
