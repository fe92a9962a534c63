"""The CPU engine of the dense CRF: numpy arrays and numba-compiled kernels, never torch.

- :mod:`.build` and :mod:`.cache`: the permutohedral lattice's tables from the features,
  cached per feature array; :mod:`.lattice`: filtering with them (splat, blur, slice);
- :mod:`.meanfield`: mean-field inference over lattice terms (Potts, diagonal and matrix
  compatibilities), one fused pass over the pixels per iteration (:mod:`.fused`);
- the numba kernels: :mod:`.build_kernels`, :mod:`.filter_kernels`, :mod:`.fused`, with
  their 8-lane vector helpers in :mod:`.simd`, :mod:`.simd_rows`, :mod:`.simd_vertices`;
  :mod:`.jit` (compile options, kernel cache) and :mod:`.threads` (running them on threads).

The pydensecrf drop-in, ``deeplab_crf_np`` and ``deeplabv1 crf`` run on it; the torch side
(:mod:`deeplabv1.crf.torch`) hands CPU tensors to it too. The kernel modules (and numba with
them) load on first use (``lazy_module``).
"""

import importlib.util
import sys


def lazy_module(name: str):
    """The module ``name``, executed on first attribute access (importlib's LazyLoader): the
    kernel modules import numba, which only the first CRF has to wait for, not an import of
    the drop-in."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
