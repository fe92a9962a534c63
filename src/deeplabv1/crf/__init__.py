"""The fully connected CRF (Kraehenbuehl & Koltun 2011) of DeepLab V1, usable on its own.

- :func:`deeplab_crf`: the DeepLab convention (scores + RGB image -> marginals) in one call;
  :func:`deeplab_crf_np` the same on numpy arrays without torch.
- :func:`mean_field` with :class:`PairwiseTerm`: general mean-field inference, batched, CPU/CUDA.
- :mod:`deeplabv1.crf.densecrf` / :mod:`deeplabv1.crf.utils`: a drop-in for pydensecrf
  (``from deeplabv1.crf import densecrf as dcrf``); on the CPU it runs on numpy + numba
  without importing torch.
- :mod:`deeplabv1.crf.dense` (exact O(N^2) filter) and :mod:`deeplabv1.crf.lattice`
  (permutohedral lattice, O(N)).
- :func:`set_num_threads` / :func:`get_num_threads`: threads of the torch-free CPU engine.

The names are imported lazily (module ``__getattr__``), so that importing the drop-in does not
import torch.
"""

from __future__ import annotations

import importlib

# public name -> defining module
_LAZY = {
    "DEEPLAB_CRF_PARAMS": "params",
    "CRFParams": "params",
    "get_params": "params",
    "NORMALIZATIONS": "meanfield",
    "PairwiseTerm": "meanfield",
    "mean_field": "meanfield",
    "mean_field_step": "meanfield",
    "bilateral_features": "features",
    "gaussian_features": "features",
    "deeplab_crf": "deeplab",
    "deeplab_crf_np": "deeplab",
    "deeplab_features": "deeplab",
    "deeplab_terms": "deeplab",
    "get_num_threads": "numpy_lattice",
    "set_num_threads": "numpy_lattice",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deeplabv1.crf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"deeplabv1.crf.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
